// SE gate: y = x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2). See ../shared/SPEC.md "SE gate".
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "ops/checks.h"

namespace recogfast {

// C++ API: calls the op through the dispatcher (so CPU, CUDA and autograd-free callers all agree).
at::Tensor se_gate(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                   const at::Tensor& b2);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_gate_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
    const at::Tensor& w2, const at::Tensor& b2);

namespace detail {

// Validates the arguments of se_gate and returns R, the hidden width.
inline int64_t check_se_gate_args(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                                  const at::Tensor& w2, const at::Tensor& b2) {
  constexpr const char* op = "recogfast::se_gate";
  checks::float_tensor(op, "x", x, 4);
  checks::float_tensor(op, "w1", w1, 2);
  checks::float_tensor(op, "b1", b1, 1);
  checks::float_tensor(op, "w2", w2, 2);
  checks::float_tensor(op, "b2", b2, 1);
  const int64_t C = x.size(1);
  const int64_t R = w1.size(0);
  TORCH_CHECK(R >= 1, op, ": w1 must have at least one row (R >= 1), got shape ", checks::shape_str(w1));
  checks::shape(op, "w1", w1, {R, C}, "[R, C] with C = x.size(1)");
  checks::shape(op, "b1", b1, {R}, "[R] with R = w1.size(0)");
  checks::shape(op, "w2", w2, {C, R}, "[C, R] with C = x.size(1), R = w1.size(0)");
  checks::shape(op, "b2", b2, {C}, "[C] with C = x.size(1)");
  checks::like(op, "w1", w1, "x", x);
  checks::like(op, "b1", b1, "x", x);
  checks::like(op, "w2", w2, "x", x);
  checks::like(op, "b2", b2, "x", x);
  return R;
}

}  // namespace detail
}  // namespace recogfast
