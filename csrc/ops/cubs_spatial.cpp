// Schema and C++ API of CUBS Block 2. The kernels live in cpu/cubs_spatial_kernel.cpp and
// cuda/cubs_spatial_kernel.cu; autograd and the fake (meta) kernel are registered from Python
// (recogfast/ops/cubs_spatial.py).
#include "ops/cubs_spatial.h"

namespace recogfast {

Tensor cubs_spatial(const Tensor& x, const Tensor& wq, const Tensor& bq, const Tensor& wk,
                        const Tensor& bk, const Tensor& wv, const Tensor& bv) {
  return call_op("recogfast::cubs_spatial", "", x, wq, bq, wk, bk, wv, bv);
}

CubsSpatialGrads cubs_spatial_backward(const Tensor& grad_y, const Tensor& x, const Tensor& wq,
                                       const Tensor& bq, const Tensor& wk, const Tensor& bk,
                                       const Tensor& wv, const Tensor& bv) {
  return as_tuple(call_op_n<7>("recogfast::_cubs_spatial_backward", "", grad_y, x, wq, bq, wk, bk, wv, bv));
}

CubsSpatialTrain cubs_spatial_forward_train(const Tensor& x, const Tensor& wq, const Tensor& bq, const Tensor& wk,
                                            const Tensor& bk, const Tensor& wv, const Tensor& bv) {
  return as_tuple(call_op_n<2>("recogfast::_cubs_spatial_forward_train", "", x, wq, bq, wk, bk, wv, bv));
}

CubsSpatialGrads cubs_spatial_backward_saved(const Tensor& grad_y, const Tensor& x, const Tensor& stats,
                                             const Tensor& wq, const Tensor& bq, const Tensor& wk, const Tensor& bk,
                                             const Tensor& wv, const Tensor& bv) {
  return as_tuple(
      call_op_n<7>("recogfast::_cubs_spatial_backward_saved", "", grad_y, x, stats, wq, bq, wk, bk, wv, bv));
}

STABLE_TORCH_LIBRARY_FRAGMENT(recogfast, m) {
  m.def("cubs_spatial(Tensor x, Tensor wq, Tensor bq, Tensor wk, Tensor bk, Tensor wv, Tensor bv) -> Tensor");
  m.def(
      "_cubs_spatial_backward(Tensor grad_y, Tensor x, Tensor wq, Tensor bq, Tensor wk, Tensor bk, Tensor wv,"
      " Tensor bv) -> (Tensor grad_x, Tensor grad_wq, Tensor grad_bq, Tensor grad_wk, Tensor grad_bk,"
      " Tensor grad_wv, Tensor grad_bv)");
  m.def(
      "_cubs_spatial_forward_train(Tensor x, Tensor wq, Tensor bq, Tensor wk, Tensor bk, Tensor wv, Tensor bv)"
      " -> (Tensor y, Tensor stats)");
  m.def(
      "_cubs_spatial_backward_saved(Tensor grad_y, Tensor x, Tensor stats, Tensor wq, Tensor bq, Tensor wk,"
      " Tensor bk, Tensor wv, Tensor bv) -> (Tensor grad_x, Tensor grad_wq, Tensor grad_bq, Tensor grad_wk,"
      " Tensor grad_bk, Tensor grad_wv, Tensor grad_bv)");
}

}  // namespace recogfast
