// CUBS Block 2, the spatial similarity gate. See docs/SPEC.md "CUBS Block 2".
//   q_p = wq . x[:, p] + bq (likewise k, v; [B, HW]); f_i = sum_j softmax_j(q_i k_j) v_j;
//   y = x * sigmoid(f)  (one gate per pixel)
// Training: _cubs_spatial_forward_train returns y and the per-row statistics stats [3, B, H·W] (f_i, 1 / l_i and
// row_cov_i, rank_one_attention.h; float32, float64 for a float64 x) that _cubs_spatial_backward_saved reads, so
// that forward and backward make two B·HW² passes (the forward's row pass, the backward's column pass).
// _cubs_spatial_backward recomputes them (three passes): the registered autograd of cubs_spatial uses it.
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

using CubsSpatialTrain = std::tuple<Tensor, Tensor>;

CubsSpatialTrain cubs_spatial_forward_train(const Tensor& x, const Tensor& wq, const Tensor& bq, const Tensor& wk,
                                            const Tensor& bk, const Tensor& wv, const Tensor& bv);

CubsSpatialGrads cubs_spatial_backward_saved(const Tensor& grad_y, const Tensor& x, const Tensor& stats,
                                             const Tensor& wq, const Tensor& bq, const Tensor& wk, const Tensor& bk,
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

// The statistics' dtype: float32 (float64 for a float64 x).
inline ScalarType cubs_spatial_stats_dtype(const Tensor& x) { return x.scalar_type() == kDouble ? kDouble : kFloat; }

// The saved statistics of _cubs_spatial_backward_saved: [3, B, H·W], contiguous, x's device, the stats dtype.
inline void check_cubs_spatial_stats(const Tensor& x, const Tensor& stats) {
  constexpr const char* op = "recogfast::_cubs_spatial_backward_saved";
  checks::shape(op, "stats", stats, {3, x.size(0), x.size(2) * x.size(3)}, "[3, B, H*W]");
  RF_CHECK(stats.device() == x.device(), op, ": stats is on ", device_str(stats.device()), " but x is on ",
           device_str(x.device()));
  RF_CHECK(stats.scalar_type() == cubs_spatial_stats_dtype(x), op, ": stats must have dtype ",
           dtype_str(cubs_spatial_stats_dtype(x)), " (the forward's), got ", dtype_str(stats.scalar_type()));
  RF_CHECK(is_contiguous(stats), op, ": stats must be contiguous (as _cubs_spatial_forward_train returns it)");
}

}  // namespace detail
}  // namespace recogfast
