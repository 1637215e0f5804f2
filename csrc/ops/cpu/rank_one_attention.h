// The inner loops both CUBS CPU kernels share: softmax attention with a rank-one similarity matrix
// S_ij = q_i k_j, computed without S. Row i's maximum is m_i = q_i * (q_i >= 0 ? max k : min k), so every
// exponent q_i k_j - m_i is <= 0 and l_i = sum_j exp(q_i k_j - m_i) >= 1.
//
// Row pass (forward, and the first pass of the backward), per row i:
//   l_i = sum_j e_ij, sv_i = sum_j e_ij v_j, sk_i = sum_j e_ij k_j, skv_i = sum_j e_ij k_j v_j
//   with e_ij = exp(q_i k_j - m_i); f_i = sv_i / l_i.
// Column pass (backward), per column j, with per-row factors a_i, b_i, c_i:
//   sum_i e_ij a_i, sum_i e_ij b_i, sum_i e_ij c_i.
//
// float runs a polynomial exp2 that the compiler vectorises (8 lanes under AVX2, chosen at run time
// by target_clones; 4 lanes of SSE2 otherwise); double uses std::exp, so the float64 path matches the
// reference to rounding.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace recogfast {
namespace cpu {

constexpr float kLog2e = 1.4426950408889634f;

// 2^t for t <= 0 (t below -126 flushes to 0, far below the l_i >= 1 it is added to). Relative error
// about 1.2e-7: a degree-6 polynomial for 2^f, |f| <= 1/2, times 2^n built in the exponent bits.
inline float exp2_nonpos(float t) {
  // Branch-free and memcpy-free so that the loops calling it vectorise.
  t = t < -126.0f ? -126.0f : t;
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const float r = t + kMagic;
  const float n = r - kMagic;
  const float f = t - n;
  const int32_t ni = __builtin_bit_cast(int32_t, r) - 0x4B400000;  // round(t)
  float p = 1.5403530393381606e-4f;
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  return p * __builtin_bit_cast(float, (ni + 127) << 23);
}

struct RowSums {
  double l, sv, sk, skv;
};

// Row pass for float. With kGrad false only l and sv are formed.
template <bool kGrad>
RowSums row_sums_f32(float qi, float mi, const float* k, const float* v, int64_t L);

// Column pass: out[0..2] = sums over i of e_ij * {a, b, c}_i, e_ij = exp(q_i kj - m_i), where the
// array m holds m_i * exp_scale<T>() (log2 e for float, whose loop runs on exp2; 1 for double).
template <typename T>
constexpr T exp_scale() {
  return std::is_same<T, float>::value ? T(kLog2e) : T(1);
}

void col_sums_f32(float kj, const float* q, const float* m, const float* a, const float* b, const float* c,
                  int64_t L, double* out);

template <bool kGrad>
inline RowSums row_sums(double qi, double mi, const double* k, const double* v, int64_t L) {
  double l = 0, sv = 0, sk = 0, skv = 0;
  for (int64_t j = 0; j < L; ++j) {
    const double e = std::exp(qi * k[j] - mi);
    l += e;
    sv += e * v[j];
    if (kGrad) {
      sk += e * k[j];
      skv += e * k[j] * v[j];
    }
  }
  return {l, sv, sk, skv};
}

template <bool kGrad>
inline RowSums row_sums(float qi, float mi, const float* k, const float* v, int64_t L) {
  return row_sums_f32<kGrad>(qi, mi, k, v, L);
}

inline void col_sums(double kj, const double* q, const double* m, const double* a, const double* b,
                     const double* c, int64_t L, double* out) {
  double sa = 0, sb = 0, sc = 0;
  for (int64_t i = 0; i < L; ++i) {
    const double e = std::exp(q[i] * kj - m[i]);
    sa += e * a[i];
    sb += e * b[i];
    sc += e * c[i];
  }
  out[0] = sa;
  out[1] = sb;
  out[2] = sc;
}

inline void col_sums(float kj, const float* q, const float* m, const float* a, const float* b, const float* c,
                     int64_t L, double* out) {
  col_sums_f32(kj, q, m, a, b, c, L, out);
}

// Grain for at::parallel_for over items of `work_per_item` elementary operations: at least ~64k
// operations a task, so that small inputs run inline instead of paying a parallel region.
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, work_per_item));
}

// The row maximum of S: q_i * max k (q_i >= 0) or q_i * min k.
template <typename T>
inline T row_max(T qi, T kmin, T kmax) {
  return qi >= T(0) ? qi * kmax : qi * kmin;
}

}  // namespace cpu
}  // namespace recogfast
