// CUBS Block 1, the channel similarity gate. See ../shared/SPEC.md "CUBS Block 1".
//   g = mean_hw(x); q, k, v = W{q,k,v} g + b{q,k,v} ([B, N]); f_i = sum_j softmax_j(q_i k_j) v_j;
//   y = x * sigmoid(Wo f + bo + g)
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "ops/checks.h"

namespace recogfast {

// C++ API: calls the op through the dispatcher.
at::Tensor cubs_channel(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& bq, const at::Tensor& wk,
                        const at::Tensor& bk, const at::Tensor& wv, const at::Tensor& bv, const at::Tensor& wo,
                        const at::Tensor& bo);

using CubsChannelGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                    at::Tensor, at::Tensor, at::Tensor>;

CubsChannelGrads cubs_channel_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& wq,
                                       const at::Tensor& bq, const at::Tensor& wk, const at::Tensor& bk,
                                       const at::Tensor& wv, const at::Tensor& bv, const at::Tensor& wo,
                                       const at::Tensor& bo);

namespace detail {

// Validates the arguments of cubs_channel and returns N, the inner width.
inline int64_t check_cubs_channel_args(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& bq,
                                       const at::Tensor& wk, const at::Tensor& bk, const at::Tensor& wv,
                                       const at::Tensor& bv, const at::Tensor& wo, const at::Tensor& bo) {
  constexpr const char* op = "recogfast::cubs_channel";
  checks::float_tensor(op, "x", x, 4);
  checks::float_tensor(op, "wq", wq, 2);
  checks::float_tensor(op, "bq", bq, 1);
  checks::float_tensor(op, "wk", wk, 2);
  checks::float_tensor(op, "bk", bk, 1);
  checks::float_tensor(op, "wv", wv, 2);
  checks::float_tensor(op, "bv", bv, 1);
  checks::float_tensor(op, "wo", wo, 2);
  checks::float_tensor(op, "bo", bo, 1);
  const int64_t C = x.size(1);
  const int64_t N = wq.size(0);
  TORCH_CHECK(N >= 1, op, ": wq must have at least one row (N >= 1), got shape ", checks::shape_str(wq));
  checks::shape(op, "wq", wq, {N, C}, "[N, C] with C = x.size(1)");
  checks::shape(op, "bq", bq, {N}, "[N] with N = wq.size(0)");
  checks::shape(op, "wk", wk, {N, C}, "[N, C] with C = x.size(1), N = wq.size(0)");
  checks::shape(op, "bk", bk, {N}, "[N] with N = wq.size(0)");
  checks::shape(op, "wv", wv, {N, C}, "[N, C] with C = x.size(1), N = wq.size(0)");
  checks::shape(op, "bv", bv, {N}, "[N] with N = wq.size(0)");
  checks::shape(op, "wo", wo, {C, N}, "[C, N] with C = x.size(1), N = wq.size(0)");
  checks::shape(op, "bo", bo, {C}, "[C] with C = x.size(1)");
  checks::like(op, "wq", wq, "x", x);
  checks::like(op, "bq", bq, "x", x);
  checks::like(op, "wk", wk, "x", x);
  checks::like(op, "bk", bk, "x", x);
  checks::like(op, "wv", wv, "x", x);
  checks::like(op, "bv", bv, "x", x);
  checks::like(op, "wo", wo, "x", x);
  checks::like(op, "bo", bo, "x", x);
  return N;
}

}  // namespace detail
}  // namespace recogfast
