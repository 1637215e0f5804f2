// CUBS Block 1, the channel similarity gate. See docs/SPEC.md "CUBS Block 1".
//   g = mean_hw(x); q, k, v = W{q,k,v} g + b{q,k,v} ([B, N]); f_i = sum_j softmax_j(q_i k_j) v_j;
//   y = x * sigmoid(Wo f + bo + g)
#pragma once

#include <tuple>

#include "ops/checks.h"

namespace recogfast {

// C++ API: calls the op through the dispatcher.
Tensor cubs_channel(const Tensor& x, const Tensor& wq, const Tensor& bq, const Tensor& wk,
                        const Tensor& bk, const Tensor& wv, const Tensor& bv, const Tensor& wo,
                        const Tensor& bo);

using CubsChannelGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                    Tensor, Tensor, Tensor>;

CubsChannelGrads cubs_channel_backward(const Tensor& grad_y, const Tensor& x, const Tensor& wq,
                                       const Tensor& bq, const Tensor& wk, const Tensor& bk,
                                       const Tensor& wv, const Tensor& bv, const Tensor& wo,
                                       const Tensor& bo);

namespace detail {

// Validates the arguments of cubs_channel and returns N, the inner width.
inline int64_t check_cubs_channel_args(const Tensor& x, const Tensor& wq, const Tensor& bq,
                                       const Tensor& wk, const Tensor& bk, const Tensor& wv,
                                       const Tensor& bv, const Tensor& wo, const Tensor& bo) {
  constexpr const char* op = "recogfast::cubs_channel";
  const int64_t N = checks::gate_ranks(op, x,
                                       {{"wq", wq, 2}, {"bq", bq, 1}, {"wk", wk, 2}, {"bk", bk, 1}, {"wv", wv, 2},
                                        {"bv", bv, 1}, {"wo", wo, 2}, {"bo", bo, 1}},
                                       &wq, "wq", "N");
  const int64_t C = x.size(1);
  checks::gate_shapes(op, x,
                      {{"wq", wq, {N, C}, "[N, C] with C = x.size(1)"},
                       {"bq", bq, {N}, "[N] with N = wq.size(0)"},
                       {"wk", wk, {N, C}, "[N, C] with C = x.size(1), N = wq.size(0)"},
                       {"bk", bk, {N}, "[N] with N = wq.size(0)"},
                       {"wv", wv, {N, C}, "[N, C] with C = x.size(1), N = wq.size(0)"},
                       {"bv", bv, {N}, "[N] with N = wq.size(0)"},
                       {"wo", wo, {C, N}, "[C, N] with C = x.size(1), N = wq.size(0)"},
                       {"bo", bo, {C}, "[C] with C = x.size(1)"}});
  return N;
}

}  // namespace detail
}  // namespace recogfast
