// Schema and C++ API of the SE gate. The kernels live in cpu/se_gate_kernel.cpp and
// cuda/se_gate_kernel.cu; autograd and the fake (meta) kernel are registered from Python
// (recogfast/ops/se_gate.py) so that torch.compile sees through the op.
#include "ops/se_gate.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace recogfast {

at::Tensor se_gate(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                   const at::Tensor& b2) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("recogfast::se_gate", "")
                       .typed<decltype(se_gate)>();
  return op.call(x, w1, b1, w2, b2);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_gate_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
    const at::Tensor& w2, const at::Tensor& b2) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("recogfast::_se_gate_backward", "")
                       .typed<decltype(se_gate_backward)>();
  return op.call(grad_y, x, w1, b1, w2, b2);
}

TORCH_LIBRARY_FRAGMENT(recogfast, m) {
  m.def("se_gate(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2) -> Tensor");
  m.def(
      "_se_gate_backward(Tensor grad_y, Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2)"
      " -> (Tensor grad_x, Tensor grad_w1, Tensor grad_b1, Tensor grad_w2, Tensor grad_b2)");
}

}  // namespace recogfast
