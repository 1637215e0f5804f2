// The inner loops both CUBS CPU kernels share: softmax attention with a rank-one similarity matrix
// S_ij = q_i k_j, computed without S. Row i's maximum is at its dominant column j*: k* = max k for q_i >= 0,
// else min k (v* = v_{j*}), so every exponent S_ij - max_j S_ij = q_i (k_j - k*) is <= 0 and
// l_i = sum_j exp(q_i (k_j - k*)) >= 1. The exponent is formed as q_i (k_j - k*), not q_i k_j - q_i k*: the
// difference of two products of size |q k| (1e4 for activations of size 100) would cost each term a relative
// error of |q k| eps, while k_j - k* is exact near the dominant column.
// Row pass (forward; with kGrad, Block 1's backward and Block 2's training forward), per row i, relative to
// the row's dominant column j* (where S_ij is largest: k* = max k for q_i >= 0, else min k; v* = v_{j*}):
//   l_i = sum_j e_ij, sv_i = sum_j e_ij (v_j - v*), sk_i = sum_j e_ij (k_j - k*),
//   skv_i = sum_j e_ij (k_j - k*)(v_j - v*), with e_ij = exp(q_i (k_j - k*));
//   f_i = v* + sv_i / l_i (row_value) and sum_j a_ij k_j (v_j - f_i) = (skv_i - sv_i sk_i / l_i) / l_i
//   (row_cov; a_ij = e_ij / l_i), the factor of dq_i. The shift costs two subtractions a term and removes
//   the cancellation of the plain formula sum e k v / l - f sum e k / l when the softmax saturates: the
//   dominant term adds exactly 0 to sv, sk and skv (issue 13: fp32 gradients off by 2.0 at x * 100).
//   The moments of row_cov may take v about another centre c (vc below; v* when not given):
//   svc_i = sum_j e_ij (v_j - c), skv_i = sum_j e_ij (k_j - k*)(v_j - c), row_cov = (skv - svc sk / l) / l,
//   while sv (and f) stay about v* (the dominant term's exact 0 for f and the column pass). Block 2's
//   training forward passes the sample's mean of v (and saves f, 1 / l and row_cov for its backward): about v*, svc sk / l is of size (f_i - v*)(E k - k*), far larger
//   than the covariance in unsaturated rows, and the rounding of the fp32 sums came back amplified by the
//   cancellation (issue 25, cubs_spatial_kernel.cpp); about mean(v) svc / l is small unless the row
//   saturates, and then sk / l is.
// Column pass (backward), per column j, with per-row factors a_i, b_i, the rows' dominant keys k*_i and
// outputs f_i:
//   sum_i e_ij a_i and sum_i e_ij b_i (v_j - f_i), the difference formed per pair (no cancellation of
//   v_j sum e b - sum e b f when v_j ~ f_i).
// float runs simd::exp2_poly (simd.h) in explicit SIMD (8 lanes under AVX2+FMA, chosen at run time by
// simd::has_avx2_fma; 4 lanes of SSE2 otherwise); double uses std::exp, so the float64 path matches the
// reference to rounding.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "ops/cpu/parallel.h"
#include "ops/cpu/simd.h"

namespace recogfast {
namespace cpu {

struct RowSums {
  double l, sv, sk, skv, svc;  // svc: sum e (v - vc), formed only with kGrad
};

// f_i = v* + sv_i / l_i.
inline double row_value(const RowSums& s, double vstar) { return vstar + s.sv / s.l; }

// sum_j a_ij k_j (v_j - f_i) = (skv - svc sk / l) / l.
inline double row_cov(const RowSums& s) { return (s.skv - s.svc * s.sk / s.l) / s.l; }

// Row pass for float. With kGrad false only l and sv are formed. skv and svc take v about vc.
template <bool kGrad>
RowSums row_sums_f32(float qi, const float* k, const float* v, int64_t L, float kstar, float vstar, float vc);

// Column pass: out[0] = sum_i e_ij a_i, out[1] = sum_i e_ij b_i (vj - f_i), e_ij = exp(q_i (kj - k*_i)), where
// the array qs holds q_i * exp_scale<T>() (log2 e for float, whose loop runs on exp2; 1 for double).
template <typename T>
constexpr T exp_scale() {
  return std::is_same<T, float>::value ? T(simd::kLog2e) : T(1);
}

void col_sums_f32(float kj, float vj, const float* qs, const float* kst, const float* a, const float* b,
                  const float* f, int64_t L, double* out);

template <bool kGrad>
inline RowSums row_sums(double qi, const double* k, const double* v, int64_t L, double kstar, double vstar,
                        double vc) {
  double l = 0, sv = 0, sk = 0, skv = 0, svc = 0;
  for (int64_t j = 0; j < L; ++j) {
    const double dk = k[j] - kstar, e = std::exp(qi * dk), dv = v[j] - vstar;
    l += e;
    sv += e * dv;
    if (kGrad) {
      const double dvc = v[j] - vc;
      sk += e * dk;
      skv += e * dk * dvc;
      svc += e * dvc;
    }
  }
  return {l, sv, sk, skv, svc};
}

template <bool kGrad>
inline RowSums row_sums(float qi, const float* k, const float* v, int64_t L, float kstar, float vstar, float vc) {
  return row_sums_f32<kGrad>(qi, k, v, L, kstar, vstar, vc);
}

// The moments of row_cov about v*.
template <bool kGrad, typename T>
inline RowSums row_sums(T qi, const T* k, const T* v, int64_t L, T kstar, T vstar) {
  return row_sums<kGrad>(qi, k, v, L, kstar, vstar, vstar);
}

inline void col_sums(double kj, double vj, const double* qs, const double* kst, const double* a, const double* b,
                     const double* f, int64_t L, double* out) {
  double sa = 0, sb = 0;
  for (int64_t i = 0; i < L; ++i) {
    const double e = std::exp(qs[i] * (kj - kst[i]));
    sa += e * a[i];
    sb += e * b[i] * (vj - f[i]);
  }
  out[0] = sa;
  out[1] = sb;
}

inline void col_sums(float kj, float vj, const float* qs, const float* kst, const float* a, const float* b,
                     const float* f, int64_t L, double* out) {
  col_sums_f32(kj, vj, qs, kst, a, b, f, L, out);
}

// The key range of one sample: min and max of k and the values at those columns (first index on ties).
template <typename T>
struct KeyRange {
  T kmin, kmax, vmin, vmax;
};

template <typename T>
inline KeyRange<T> key_range(const T* k, const T* v, int64_t L) {
  int64_t lo = 0, hi = 0;
  for (int64_t j = 1; j < L; ++j) {
    if (k[j] < k[lo]) lo = j;
    if (k[j] > k[hi]) hi = j;
  }
  return {k[lo], k[hi], v[lo], v[hi]};
}

// The dominant column's key and value for row i: (max k, its v) for q_i >= 0, else (min k, its v).
template <typename T>
inline void dominant(T qi, const KeyRange<T>& r, T* kstar, T* vstar) {
  *kstar = qi >= T(0) ? r.kmax : r.kmin;
  *vstar = qi >= T(0) ? r.vmax : r.vmin;
}

}  // namespace cpu
}  // namespace recogfast
