// Schema and C++ API of CUBS Block 1. The kernels live in cpu/cubs_channel_kernel.cpp and
// cuda/cubs_channel_kernel.cu; autograd and the fake (meta) kernel are registered from Python
// (recogfast/ops/cubs_channel.py).
#include "ops/cubs_channel.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace recogfast {

at::Tensor cubs_channel(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& bq, const at::Tensor& wk,
                        const at::Tensor& bk, const at::Tensor& wv, const at::Tensor& bv, const at::Tensor& wo,
                        const at::Tensor& bo) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("recogfast::cubs_channel", "")
                       .typed<decltype(cubs_channel)>();
  return op.call(x, wq, bq, wk, bk, wv, bv, wo, bo);
}

CubsChannelGrads cubs_channel_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& wq,
                                       const at::Tensor& bq, const at::Tensor& wk, const at::Tensor& bk,
                                       const at::Tensor& wv, const at::Tensor& bv, const at::Tensor& wo,
                                       const at::Tensor& bo) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("recogfast::_cubs_channel_backward", "")
                       .typed<decltype(cubs_channel_backward)>();
  return op.call(grad_y, x, wq, bq, wk, bk, wv, bv, wo, bo);
}

TORCH_LIBRARY_FRAGMENT(recogfast, m) {
  m.def(
      "cubs_channel(Tensor x, Tensor wq, Tensor bq, Tensor wk, Tensor bk, Tensor wv, Tensor bv, Tensor wo,"
      " Tensor bo) -> Tensor");
  m.def(
      "_cubs_channel_backward(Tensor grad_y, Tensor x, Tensor wq, Tensor bq, Tensor wk, Tensor bk, Tensor wv,"
      " Tensor bv, Tensor wo, Tensor bo) -> (Tensor grad_x, Tensor grad_wq, Tensor grad_bq, Tensor grad_wk,"
      " Tensor grad_bk, Tensor grad_wv, Tensor grad_bv, Tensor grad_wo, Tensor grad_bo)");
}

}  // namespace recogfast
