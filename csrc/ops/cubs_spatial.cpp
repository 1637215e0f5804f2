// Schema and C++ API of CUBS Block 2. The kernels live in cpu/cubs_spatial_kernel.cpp and
// cuda/cubs_spatial_kernel.cu; autograd and the fake (meta) kernel are registered from Python
// (recogfast/ops/cubs_spatial.py).
#include "ops/cubs_spatial.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace recogfast {

at::Tensor cubs_spatial(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& bq, const at::Tensor& wk,
                        const at::Tensor& bk, const at::Tensor& wv, const at::Tensor& bv) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("recogfast::cubs_spatial", "")
                       .typed<decltype(cubs_spatial)>();
  return op.call(x, wq, bq, wk, bk, wv, bv);
}

CubsSpatialGrads cubs_spatial_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& wq,
                                       const at::Tensor& bq, const at::Tensor& wk, const at::Tensor& bk,
                                       const at::Tensor& wv, const at::Tensor& bv) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("recogfast::_cubs_spatial_backward", "")
                       .typed<decltype(cubs_spatial_backward)>();
  return op.call(grad_y, x, wq, bq, wk, bk, wv, bv);
}

TORCH_LIBRARY_FRAGMENT(recogfast, m) {
  m.def("cubs_spatial(Tensor x, Tensor wq, Tensor bq, Tensor wk, Tensor bk, Tensor wv, Tensor bv) -> Tensor");
  m.def(
      "_cubs_spatial_backward(Tensor grad_y, Tensor x, Tensor wq, Tensor bq, Tensor wk, Tensor bk, Tensor wv,"
      " Tensor bv) -> (Tensor grad_x, Tensor grad_wq, Tensor grad_bq, Tensor grad_wk, Tensor grad_bk,"
      " Tensor grad_wv, Tensor grad_bv)");
}

}  // namespace recogfast
