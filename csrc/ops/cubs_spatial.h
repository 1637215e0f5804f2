// CUBS Block 2, the spatial similarity gate. See docs/SPEC.md "CUBS Block 2".
//   q_p = wq . x[:, p] + bq (likewise k, v; [B, HW]); f_i = sum_j softmax_j(q_i k_j) v_j;
//   y = x * sigmoid(f)  (one gate per pixel)
#pragma once

#include <tuple>

#include "ops/checks.h"

namespace recogfast {

Tensor cubs_spatial(const Tensor& x, const Tensor& wq, const Tensor& bq, const Tensor& wk,
                        const Tensor& bk, const Tensor& wv, const Tensor& bv);

using CubsSpatialGrads =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

CubsSpatialGrads cubs_spatial_backward(const Tensor& grad_y, const Tensor& x, const Tensor& wq,
                                       const Tensor& bq, const Tensor& wk, const Tensor& bk,
                                       const Tensor& wv, const Tensor& bv);

namespace detail {

inline void check_cubs_spatial_args(const Tensor& x, const Tensor& wq, const Tensor& bq,
                                    const Tensor& wk, const Tensor& bk, const Tensor& wv,
                                    const Tensor& bv) {
  constexpr const char* op = "recogfast::cubs_spatial";
  checks::gate_ranks(op, x, {{"wq", wq, 1}, {"bq", bq, 1}, {"wk", wk, 1}, {"bk", bk, 1}, {"wv", wv, 1}, {"bv", bv, 1}});
  const int64_t C = x.size(1);
  checks::gate_shapes(op, x,
                      {{"wq", wq, {C}, "[C] with C = x.size(1)"},
                       {"bq", bq, {1}, "[1]"},
                       {"wk", wk, {C}, "[C] with C = x.size(1)"},
                       {"bk", bk, {1}, "[1]"},
                       {"wv", wv, {C}, "[C] with C = x.size(1)"},
                       {"bv", bv, {1}, "[1]"}});
}

}  // namespace detail
}  // namespace recogfast
