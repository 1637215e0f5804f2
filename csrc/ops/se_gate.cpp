// Schema and C++ API of the SE gate. The kernels live in cpu/se_gate_kernel.cpp and
// cuda/se_gate_kernel.cu; autograd and the fake (meta) kernel are registered from Python
// (recogfast/ops/se_gate.py) so that torch.compile sees through the op.
#include "ops/se_gate.h"

namespace recogfast {

Tensor se_gate(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                   const Tensor& b2) {
  return call_op("recogfast::se_gate", "", x, w1, b1, w2, b2);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> se_gate_backward(
    const Tensor& grad_y, const Tensor& x, const Tensor& w1, const Tensor& b1,
    const Tensor& w2, const Tensor& b2) {
  return as_tuple(call_op_n<5>("recogfast::_se_gate_backward", "", grad_y, x, w1, b1, w2, b2));
}

STABLE_TORCH_LIBRARY_FRAGMENT(recogfast, m) {
  m.def("se_gate(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2) -> Tensor");
  m.def(
      "_se_gate_backward(Tensor grad_y, Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2)"
      " -> (Tensor grad_x, Tensor grad_w1, Tensor grad_b1, Tensor grad_w2, Tensor grad_b2)");
}

}  // namespace recogfast
