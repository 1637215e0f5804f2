// SE gate: y = x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2). See docs/SPEC.md "SE gate".
#pragma once

#include <tuple>

#include "ops/checks.h"

namespace recogfast {

// C++ API: calls the op through the dispatcher (so CPU, CUDA and autograd-free callers all agree).
Tensor se_gate(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                   const Tensor& b2);

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> se_gate_backward(
    const Tensor& grad_y, const Tensor& x, const Tensor& w1, const Tensor& b1,
    const Tensor& w2, const Tensor& b2);

namespace detail {

// Validates the arguments of se_gate and returns R, the hidden width.
inline int64_t check_se_gate_args(const Tensor& x, const Tensor& w1, const Tensor& b1,
                                  const Tensor& w2, const Tensor& b2) {
  constexpr const char* op = "recogfast::se_gate";
  const int64_t R = checks::gate_ranks(op, x, {{"w1", w1, 2}, {"b1", b1, 1}, {"w2", w2, 2}, {"b2", b2, 1}}, &w1,
                                       "w1", "R");
  const int64_t C = x.size(1);
  checks::gate_shapes(op, x,
                      {{"w1", w1, {R, C}, "[R, C] with C = x.size(1)"},
                       {"b1", b1, {R}, "[R] with R = w1.size(0)"},
                       {"w2", w2, {C, R}, "[C, R] with C = x.size(1), R = w1.size(0)"},
                       {"b2", b2, {C}, "[C] with C = x.size(1)"}});
  return R;
}

// The arguments every kernel works on: checked, in the one layout the kernel indexes (NCHW, or NHWC
// for channels_last input), with the outputs allocated in that layout.
struct SEGateArgs {
  Tensor x, grad_y, w1, b1, w2, b2;  // grad_y is undefined in the forward
  int64_t R;
  bool channels_last;
};

inline SEGateArgs prepare_se_gate(const Tensor& x, const Tensor& w1, const Tensor& b1,
                                  const Tensor& w2, const Tensor& b2,
                                  const Tensor& grad_y = Tensor()) {
  const int64_t R = check_se_gate_args(x, w1, b1, w2, b2);
  auto act = checks::activation("recogfast::_se_gate_backward", x, grad_y);
  return {act.x, act.grad_y, as_contiguous(w1), as_contiguous(b1), as_contiguous(w2), as_contiguous(b2), R,
          act.channels_last};
}

using SEGateGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

// grad_x in the kernel's layout and the weight gradients; zero-filled weight gradients when x is empty
// (a sum over no samples), so kernels can return early.
inline SEGateGrads alloc_se_gate_grads(const SEGateArgs& a) {
  auto g = checks::param_grads({a.w1, a.b1, a.w2, a.b2}, a.x.numel() == 0);
  return {empty_like(a.x, checks::layout_of(a.channels_last)), g[0], g[1], g[2], g[3]};
}

}  // namespace detail
}  // namespace recogfast
