// CUBS Block 2, the spatial similarity gate. See ../shared/SPEC.md "CUBS Block 2".
//   q_p = wq . x[:, p] + bq (likewise k, v; [B, HW]); f_i = sum_j softmax_j(q_i k_j) v_j;
//   y = x * sigmoid(f)  (one gate per pixel)
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "ops/checks.h"

namespace recogfast {

at::Tensor cubs_spatial(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& bq, const at::Tensor& wk,
                        const at::Tensor& bk, const at::Tensor& wv, const at::Tensor& bv);

using CubsSpatialGrads =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

CubsSpatialGrads cubs_spatial_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& wq,
                                       const at::Tensor& bq, const at::Tensor& wk, const at::Tensor& bk,
                                       const at::Tensor& wv, const at::Tensor& bv);

namespace detail {

inline void check_cubs_spatial_args(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& bq,
                                    const at::Tensor& wk, const at::Tensor& bk, const at::Tensor& wv,
                                    const at::Tensor& bv) {
  constexpr const char* op = "recogfast::cubs_spatial";
  checks::float_tensor(op, "x", x, 4);
  checks::float_tensor(op, "wq", wq, 1);
  checks::float_tensor(op, "bq", bq, 1);
  checks::float_tensor(op, "wk", wk, 1);
  checks::float_tensor(op, "bk", bk, 1);
  checks::float_tensor(op, "wv", wv, 1);
  checks::float_tensor(op, "bv", bv, 1);
  const int64_t C = x.size(1);
  checks::shape(op, "wq", wq, {C}, "[C] with C = x.size(1)");
  checks::shape(op, "bq", bq, {1}, "[1]");
  checks::shape(op, "wk", wk, {C}, "[C] with C = x.size(1)");
  checks::shape(op, "bk", bk, {1}, "[1]");
  checks::shape(op, "wv", wv, {C}, "[C] with C = x.size(1)");
  checks::shape(op, "bv", bv, {1}, "[1]");
  checks::like(op, "wq", wq, "x", x);
  checks::like(op, "bq", bq, "x", x);
  checks::like(op, "wk", wk, "x", x);
  checks::like(op, "bk", bk, "x", x);
  checks::like(op, "wv", wv, "x", x);
  checks::like(op, "bv", bv, "x", x);
}

}  // namespace detail
}  // namespace recogfast
