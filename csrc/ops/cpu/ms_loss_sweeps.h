// The element-wise sweeps of the CPU Multi-Similarity loss (ms_loss_kernel.cpp, its only includer): per tile
// row, the negatives' maximum, the mined negatives' exp sums and the backward weights, in fp32 SIMD (GCC
// vector extensions: AVX2 + FMA chosen at run time on x86-64, the generic vectors elsewhere) and fp64
// scalar loops; the positive blocks' dot products and row updates (ms_loss_tiles.h), in the same SIMD; and
// the running log-sum-exp helpers. Internal linkage: included by one translation unit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "ops/cpu/simd.h"

namespace recogfast {
namespace {

// ---------------------------------------------------------------------------------------------
// Element-wise sweeps over one row of a tile. float uses 8-lane vectors (simd.h: one AVX2 register, or two
// SSE halves on the baseline) and simd::exp_poly; double uses scalar loops and std::exp.

#define RF_INLINE RECOGFAST_SIMD_INLINE

typedef cpu::simd::Vec<8>::F v8f;
typedef cpu::simd::Vec<8>::I v8i;

RF_INLINE v8f load8(const float* p) { return cpu::simd::load<8>(p); }
RF_INLINE v8i load8(const int32_t* p) { return cpu::simd::load<8>(p); }
RF_INLINE void store8(float* p, v8f v) { cpu::simd::store<8>(p, v); }
RF_INLINE v8f splat(float x) { return cpu::simd::splat<8>(x); }
RF_INLINE v8i splat(int32_t x) { return cpu::simd::splat<8>(x); }
RF_INLINE float hmax(v8f v) { return cpu::simd::hmax<8>(v); }
RF_INLINE float hsum(v8f v) { return cpu::simd::hsum<8>(v); }
RF_INLINE v8f exp_poly(v8f x) { return cpu::simd::exp_poly<8>(x); }
RF_INLINE float exp_poly(float x) { return cpu::simd::exp_poly(x); }
inline double exp_poly(double x) { return std::exp(x); }

template <typename T>
constexpr T kInf = std::numeric_limits<T>::infinity();

// max over negatives (lab[k] != la) of s[k]; -inf when there is none.
template <typename T>
RF_INLINE T neg_max_impl(const T* s, const int32_t* lab, int64_t n, int32_t la) {
  T m = -kInf<T>;
  int64_t k = 0;
  if constexpr (std::is_same_v<T, float>) {
    v8f vm = splat(-kInf<float>);
    const v8i la8 = splat(la);
    for (; k + 8 <= n; k += 8) {
      v8f v = load8(s + k);
      v = load8(lab + k) != la8 ? v : splat(-kInf<float>);
      vm = v > vm ? v : vm;
    }
    m = hmax(vm);
  }
  for (; k < n; ++k)
    if (lab[k] != la && s[k] > m) m = s[k];
  return m;
}

// sum over mined negatives of exp(beta (s - shift)); mined: lab != la and s + eps > thr.
template <typename T>
RF_INLINE T neg_sum_impl(const T* s, const int32_t* lab, int64_t n, int32_t la, T eps, T thr, T beta, T shift) {
  T acc = 0;
  int64_t k = 0;
  if constexpr (std::is_same_v<T, float>) {
    v8f va = v8f{};
    const v8i la8 = splat(la);
    for (; k + 8 <= n; k += 8) {
      const v8f v = load8(s + k);
      const v8i mined = (load8(lab + k) != la8) & ((v + eps) > thr);
      const v8f e = exp_poly((v - shift) * beta);
      va += mined ? e : v8f{};
    }
    acc = hsum(va);
  }
  for (; k < n; ++k)
    if (lab[k] != la && s[k] + eps > thr) acc += exp_poly(beta * (s[k] - shift));
  return acc;
}

// Column form, for anchors that are the columns of a tile: colmax[k] = max(colmax[k], s[k]) over negatives.
template <typename T>
RF_INLINE void col_neg_max_impl(const T* s, const int32_t* clab, int64_t n, int32_t rl, T* colmax) {
  int64_t k = 0;
  if constexpr (std::is_same_v<T, float>) {
    const v8i rl8 = splat(rl);
    for (; k + 8 <= n; k += 8) {
      v8f v = load8(s + k);
      v = load8(clab + k) != rl8 ? v : splat(-kInf<float>);
      const v8f c = load8(colmax + k);
      store8(colmax + k, v > c ? v : c);
    }
  }
  for (; k < n; ++k)
    if (clab[k] != rl && s[k] > colmax[k]) colmax[k] = s[k];
}

// colsum[k] += exp(beta (s[k] - shift[k])) over mined negatives (clab != rl and s + eps > thr[k]).
template <typename T>
RF_INLINE void col_neg_sum_impl(const T* s, const int32_t* clab, int64_t n, int32_t rl, T eps, const T* thr, T beta,
                 const T* shift, T* colsum) {
  int64_t k = 0;
  if constexpr (std::is_same_v<T, float>) {
    const v8i rl8 = splat(rl);
    for (; k + 8 <= n; k += 8) {
      const v8f v = load8(s + k);
      const v8i mined = (load8(clab + k) != rl8) & ((v + eps) > load8(thr + k));
      const v8f e = exp_poly((v - load8(shift + k)) * beta);
      store8(colsum + k, load8(colsum + k) + (mined ? e : v8f{}));
    }
  }
  for (; k < n; ++k)
    if (clab[k] != rl && s[k] + eps > thr[k]) colsum[k] += exp_poly(beta * (s[k] - shift[k]));
}

// Backward weights of negatives in one tile row: g[k] = scale exp(beta (s - base) - logz) for the row's
// anchor when mined, plus (col_thr given) the same for the column's anchor. Returns whether any is mined.
template <typename T>
RF_INLINE bool neg_weights_impl(const T* s, const int32_t* clab, int64_t n, int32_t rl, T eps, T thr, T beta, T base, T logz,
                 T scale, const T* col_thr, const T* col_logz, T* g) {
  bool any = false;
  int64_t k = 0;
  if constexpr (std::is_same_v<T, float>) {
    const v8i rl8 = splat(rl);
    v8i anyv = v8i{};
    for (; k + 8 <= n; k += 8) {
      const v8f v = load8(s + k);
      const v8i neg = load8(clab + k) != rl8;
      const v8f x = (v - base) * beta;
      const v8i mined = neg & ((v + eps) > thr);
      v8f w = mined ? exp_poly(x - logz) : v8f{};
      anyv |= mined;
      if (col_thr) {
        const v8i cmined = neg & ((v + eps) > load8(col_thr + k));
        w += cmined ? exp_poly(x - load8(col_logz + k)) : v8f{};
        anyv |= cmined;
      }
      store8(g + k, w * scale);
    }
    for (int l = 0; l < 8; ++l) any |= anyv[l] != 0;
  }
  for (; k < n; ++k) {
    T w = 0;
    if (clab[k] != rl) {
      const T x = beta * (s[k] - base);
      if (s[k] + eps > thr) {
        w += exp_poly(x - logz);
        any = true;
      }
      if (col_thr && s[k] + eps > col_thr[k]) {
        w += exp_poly(x - col_logz[k]);
        any = true;
      }
    }
    g[k] = w * scale;
  }
  return any;
}

// ---------------------------------------------------------------------------------------------
// The positive blocks' products (ms_loss_tiles.h: label groups too small for aten::mm), D long.
// dots: out[k] = <a, b[k]> for k < NB. float: one 8-lane accumulator a pair, NB pairs at a time (their
// chains interleave and hide the add latency; a has one load per NB products), lanes added by hsum, then the
// tail: a pair's value does not depend on NB or on which side is a, so S_ij == S_ji bit for bit and a
// pair recomputed alone (dot) matches its block. double: scalar loops in the same order.
template <int NB, typename T>
RF_INLINE void dots_impl(const T* a, const T* const* b, int64_t D, T* out) {
  int64_t d = 0;
  T s[NB] = {};
  if constexpr (std::is_same_v<T, float>) {
    v8f acc[NB] = {};
    for (; d + 8 <= D; d += 8) {
      const v8f x = load8(a + d);
      for (int k = 0; k < NB; ++k) acc[k] += x * load8(b[k] + d);
    }
    for (int k = 0; k < NB; ++k) s[k] = hsum(acc[k]);
  }
  for (int k = 0; k < NB; ++k) {
    for (int64_t e = d; e < D; ++e) s[k] += a[e] * b[k][e];
    out[k] = s[k];
  }
}

// S[r * ld + j] = <rows[r], rows[j]> for r < na, j < n (rows: n pointers, the first na the anchors): the
// anchors' block is symmetric, so only its upper triangle is multiplied.
template <typename T>
RF_INLINE void gram_impl(const T* const* rows, int64_t na, int64_t n, int64_t D, T* S, int64_t ld) {
  for (int64_t r = 0; r < na; ++r) {
    int64_t j = r;
    for (; j + 4 <= n; j += 4) dots_impl<4, T>(rows[r], rows + j, D, S + r * ld + j);
    for (; j < n; ++j) dots_impl<1, T>(rows[r], rows + j, D, S + r * ld + j);
    for (j = 0; j < r; ++j) S[r * ld + j] = S[j * ld + r];
  }
}

// y += sum_k w[k] x[k], k < n, four rows a pass over y (in k order: the same sum for the same rows and weights).
template <typename T>
RF_INLINE void add_weighted_rows_impl(T* y, const T* const* x, const T* w, int64_t n, int64_t D) {
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    const T *x0 = x[k], *x1 = x[k + 1], *x2 = x[k + 2], *x3 = x[k + 3];
    const T w0 = w[k], w1 = w[k + 1], w2 = w[k + 2], w3 = w[k + 3];
    int64_t d = 0;
    if constexpr (std::is_same_v<T, float>) {
      for (; d + 8 <= D; d += 8)
        store8(y + d, load8(y + d) + load8(x0 + d) * w0 + load8(x1 + d) * w1 + load8(x2 + d) * w2 +
                          load8(x3 + d) * w3);
    }
    for (; d < D; ++d) y[d] = y[d] + x0[d] * w0 + x1[d] * w1 + x2[d] * w2 + x3[d] * w3;
  }
  for (; k < n; ++k) {
    const T* xk = x[k];
    const T wk = w[k];
    int64_t d = 0;
    if constexpr (std::is_same_v<T, float>) {
      for (; d + 8 <= D; d += 8) store8(y + d, load8(y + d) + load8(xk + d) * wk);
    }
    for (; d < D; ++d) y[d] += xk[d] * wk;
  }
}

// The float sweeps again, compiled for AVX2 + FMA and chosen at run time where the CPU has them (simd.h;
// x86-64 only: elsewhere the generic vector code above is all there is).
#if RECOGFAST_X86_DISPATCH
#define RF_AVX2 RECOGFAST_TARGET_AVX2
RF_AVX2 float neg_max_avx2(const float* s, const int32_t* lab, int64_t n, int32_t la) {
  return neg_max_impl<float>(s, lab, n, la);
}
RF_AVX2 float neg_sum_avx2(const float* s, const int32_t* lab, int64_t n, int32_t la, float eps, float thr,
                           float beta, float shift) {
  return neg_sum_impl<float>(s, lab, n, la, eps, thr, beta, shift);
}
RF_AVX2 void col_neg_max_avx2(const float* s, const int32_t* clab, int64_t n, int32_t rl, float* colmax) {
  col_neg_max_impl<float>(s, clab, n, rl, colmax);
}
RF_AVX2 void col_neg_sum_avx2(const float* s, const int32_t* clab, int64_t n, int32_t rl, float eps, const float* thr,
                              float beta, const float* shift, float* colsum) {
  col_neg_sum_impl<float>(s, clab, n, rl, eps, thr, beta, shift, colsum);
}
RF_AVX2 bool neg_weights_avx2(const float* s, const int32_t* clab, int64_t n, int32_t rl, float eps, float thr,
                              float beta, float base, float logz, float scale, const float* col_thr,
                              const float* col_logz, float* g) {
  return neg_weights_impl<float>(s, clab, n, rl, eps, thr, beta, base, logz, scale, col_thr, col_logz, g);
}

RF_AVX2 void gram_avx2(const float* const* rows, int64_t na, int64_t n, int64_t D, float* S, int64_t ld) {
  gram_impl<float>(rows, na, n, D, S, ld);
}
RF_AVX2 float dot_avx2(const float* a, const float* b, int64_t D) {
  float s;
  dots_impl<1, float>(a, &b, D, &s);
  return s;
}
RF_AVX2 void add_weighted_rows_avx2(float* y, const float* const* x, const float* w, int64_t n, int64_t D) {
  add_weighted_rows_impl<float>(y, x, w, n, D);
}

#define RF_IF_AVX2(call)                   \
  if constexpr (std::is_same_v<T, float>) \
    if (cpu::simd::has_avx2_fma()) return call;
#else
#define RF_IF_AVX2(call)
#endif

template <typename T>
T neg_max(const T* s, const int32_t* lab, int64_t n, int32_t la) {
  RF_IF_AVX2(neg_max_avx2(s, lab, n, la))
  return neg_max_impl<T>(s, lab, n, la);
}
template <typename T>
T neg_sum(const T* s, const int32_t* lab, int64_t n, int32_t la, T eps, T thr, T beta, T shift) {
  RF_IF_AVX2(neg_sum_avx2(s, lab, n, la, eps, thr, beta, shift))
  return neg_sum_impl<T>(s, lab, n, la, eps, thr, beta, shift);
}
template <typename T>
void col_neg_max(const T* s, const int32_t* clab, int64_t n, int32_t rl, T* colmax) {
  RF_IF_AVX2(col_neg_max_avx2(s, clab, n, rl, colmax))
  col_neg_max_impl<T>(s, clab, n, rl, colmax);
}
template <typename T>
void col_neg_sum(const T* s, const int32_t* clab, int64_t n, int32_t rl, T eps, const T* thr, T beta, const T* shift,
                 T* colsum) {
  RF_IF_AVX2(col_neg_sum_avx2(s, clab, n, rl, eps, thr, beta, shift, colsum))
  col_neg_sum_impl<T>(s, clab, n, rl, eps, thr, beta, shift, colsum);
}
template <typename T>
bool neg_weights(const T* s, const int32_t* clab, int64_t n, int32_t rl, T eps, T thr, T beta, T base, T logz, T scale,
                 const T* col_thr, const T* col_logz, T* g) {
  RF_IF_AVX2(neg_weights_avx2(s, clab, n, rl, eps, thr, beta, base, logz, scale, col_thr, col_logz, g))
  return neg_weights_impl<T>(s, clab, n, rl, eps, thr, beta, base, logz, scale, col_thr, col_logz, g);
}

template <typename T>
void gram(const T* const* rows, int64_t na, int64_t n, int64_t D, T* S, int64_t ld) {
  RF_IF_AVX2(gram_avx2(rows, na, n, D, S, ld))
  gram_impl<T>(rows, na, n, D, S, ld);
}
template <typename T>
T dot_rows(const T* a, const T* b, int64_t D) {
  RF_IF_AVX2(dot_avx2(a, b, D))
  T s;
  dots_impl<1, T>(a, &b, D, &s);
  return s;
}
template <typename T>
void add_weighted_rows(T* y, const T* const* x, const T* w, int64_t n, int64_t D) {
  RF_IF_AVX2(add_weighted_rows_avx2(y, x, w, n, D))
  add_weighted_rows_impl<T>(y, x, w, n, D);
}

// log(1 + exp(a)) without overflow.
template <typename T>
T softplus(T a) {
  return std::max(a, T(0)) + std::log1p(std::exp(-std::abs(a)));
}

// A log-sum-exp log(sum exp(x)) kept as (xm, z) with z = sum exp(x - xm), merged chunk by chunk.
template <typename T>
void lse_merge(T& xm, T& z, T xm_new, T z_new) {
  if (!(z_new > 0)) return;
  if (!(z > 0)) {
    xm = xm_new;
    z = z_new;
  } else if (xm_new > xm) {
    z = z * std::exp(xm - xm_new) + z_new;
    xm = xm_new;
  } else {
    z += z_new * std::exp(xm_new - xm);
  }
}

// log(1 + sum exp(x)) from the running (xm, z).
template <typename T>
T lse_finish(T xm, T z) {
  if (!(z > 0)) return T(0);
  return softplus(xm + std::log(z));
}


}  // namespace
}  // namespace recogfast
