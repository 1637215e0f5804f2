// Schema and C++ API of CUBS Block 1. The kernels live in cpu/cubs_channel_kernel.cpp and
// cuda/cubs_channel_kernel.cu; autograd and the fake (meta) kernel are registered from Python
// (recogfast/ops/cubs_channel.py).
#include "ops/cubs_channel.h"

namespace recogfast {

Tensor cubs_channel(const Tensor& x, const Tensor& wq, const Tensor& bq, const Tensor& wk,
                        const Tensor& bk, const Tensor& wv, const Tensor& bv, const Tensor& wo,
                        const Tensor& bo) {
  return call_op("recogfast::cubs_channel", "", x, wq, bq, wk, bk, wv, bv, wo, bo);
}

CubsChannelGrads cubs_channel_backward(const Tensor& grad_y, const Tensor& x, const Tensor& wq,
                                       const Tensor& bq, const Tensor& wk, const Tensor& bk,
                                       const Tensor& wv, const Tensor& bv, const Tensor& wo,
                                       const Tensor& bo) {
  return as_tuple(call_op_n<9>("recogfast::_cubs_channel_backward", "", grad_y, x, wq, bq, wk, bk, wv, bv, wo, bo));
}

STABLE_TORCH_LIBRARY_FRAGMENT(recogfast, m) {
  m.def(
      "cubs_channel(Tensor x, Tensor wq, Tensor bq, Tensor wk, Tensor bk, Tensor wv, Tensor bv, Tensor wo,"
      " Tensor bo) -> Tensor");
  m.def(
      "_cubs_channel_backward(Tensor grad_y, Tensor x, Tensor wq, Tensor bq, Tensor wk, Tensor bk, Tensor wv,"
      " Tensor bv, Tensor wo, Tensor bo) -> (Tensor grad_x, Tensor grad_wq, Tensor grad_bq, Tensor grad_wk,"
      " Tensor grad_bk, Tensor grad_wv, Tensor grad_bv, Tensor grad_wo, Tensor grad_bo)");
}

}  // namespace recogfast
