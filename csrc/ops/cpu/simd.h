// The SIMD pieces every CPU kernel shares: W-lane float / int32 vectors (GCC/Clang vector extensions, which
// the auto-vectoriser does not reliably reproduce for these loops), the one exp polynomial, the one
// run-time dispatch to AVX2 + FMA, and row sums with independent partial sums (sum_row, dot_row).
//
// Dispatch: the extension is built for the baseline ISA. On x86-64 a kernel compiles its float loops twice,
// once plain and once inside a function marked RECOGFAST_TARGET_AVX2, and picks one with has_avx2_fma()
// (once per process). Elsewhere (aarch64, or a compiler without __builtin_cpu_supports)
// RECOGFAST_X86_DISPATCH is 0, the AVX2 copies are not compiled, and the generic vectors are all there is.
#pragma once

// Vector-typed helpers are always inlined into their callers; their nominal ABI does not matter.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <algorithm>
#include <cstdint>

#define RECOGFAST_SIMD_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__)
#define RECOGFAST_X86_DISPATCH 1
#define RECOGFAST_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define RECOGFAST_X86_DISPATCH 0
#endif

namespace recogfast {
namespace cpu {
namespace simd {

#if RECOGFAST_X86_DISPATCH
inline bool has_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#else
inline bool has_avx2_fma() { return false; }
#endif

// W lanes: W = 8 fills an AVX2 register (two SSE registers on the baseline), W = 4 one SSE register.
template <int W>
struct Vec {
  typedef float F __attribute__((vector_size(4 * W)));
  typedef int32_t I __attribute__((vector_size(4 * W)));
};

template <int W>
RECOGFAST_SIMD_INLINE typename Vec<W>::F load(const float* p) {
  typename Vec<W>::F v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
template <int W>
RECOGFAST_SIMD_INLINE typename Vec<W>::I load(const int32_t* p) {
  typename Vec<W>::I v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
template <int W>
RECOGFAST_SIMD_INLINE void store(float* p, typename Vec<W>::F v) {
  __builtin_memcpy(p, &v, sizeof(v));
}
template <int W>
RECOGFAST_SIMD_INLINE typename Vec<W>::F splat(float x) {
  return typename Vec<W>::F{} + x;
}
template <int W>
RECOGFAST_SIMD_INLINE typename Vec<W>::I splat(int32_t x) {
  return typename Vec<W>::I{} + x;
}
template <int W>
RECOGFAST_SIMD_INLINE float hsum(typename Vec<W>::F v) {
  float s = 0;
  for (int i = 0; i < W; ++i) s += v[i];
  return s;
}
template <int W>
RECOGFAST_SIMD_INLINE float hmax(typename Vec<W>::F v) {
  float m = v[0];
  for (int i = 1; i < W; ++i) m = std::max(m, v[i]);
  return m;
}

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kExp2Min = -126.0f;      // 2^t for t below this flushes to 2^-126 ~ 1.2e-38
constexpr float kRound = 12582912.0f;    // 1.5 * 2^23: t + kRound rounds t to an integer in the low mantissa bits

// 2^t for t <= 127 (the kernels call it with t <= 0 up to rounding: exponents shifted by a running or a known
// maximum). A degree-6 polynomial for 2^f, |f| <= 1/2, times 2^n built in the exponent bits: relative error
// below 2.4e-7 (measured against exp2 in double over t in [-126, 5]). Written once for a float (F = float,
// I = int32_t) and for W lanes (Vec<W>): the same operations, branch-free and memcpy-free, so that the loops
// calling it vectorise.
template <typename F, typename I>
RECOGFAST_SIMD_INLINE F exp2_poly_any(F t) {
  const F lo = F{} + kExp2Min, round = F{} + kRound;
  t = t < lo ? lo : t;
  const F r = t + round;
  const F f = t - (r - round);
  const I n = __builtin_bit_cast(I, r) - 0x4B400000;  // round(t)
  F p = F{} + 1.5403530393381606e-4f;
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  return p * __builtin_bit_cast(F, (n + 127) << 23);
}
RECOGFAST_SIMD_INLINE float exp2_poly(float t) { return exp2_poly_any<float, int32_t>(t); }
template <int W>
RECOGFAST_SIMD_INLINE typename Vec<W>::F exp2_poly(typename Vec<W>::F t) {
  return exp2_poly_any<typename Vec<W>::F, typename Vec<W>::I>(t);
}

// exp(x) = 2^(x log2 e), x clamped to <= 88 (exp(88) ~ 1.7e38, the largest float power of e) so that lanes a
// kernel computes and then masks out never overflow the exponent bits. Rounding x log2 e costs |x| * 6e-8
// of relative error, which matters only for terms far below the largest of their sum (x <= -17 is below
// 4e-8 of it).
constexpr float kExpMax = 88.0f;
RECOGFAST_SIMD_INLINE float exp_poly(float x) { return exp2_poly((x > kExpMax ? kExpMax : x) * kLog2e); }
template <int W>
RECOGFAST_SIMD_INLINE typename Vec<W>::F exp_poly(typename Vec<W>::F x) {
  return exp2_poly<W>((x > kExpMax ? splat<W>(kExpMax) : x) * kLog2e);
}

}  // namespace simd

// Sums with 16 independent partial sums: a single accumulator makes every add wait for the previous
// one (4 cycles of latency each), which left these loops 4x slower than their loads. The inner k loop
// compiles to four independent SIMD accumulators.
constexpr int kLanes = 16;

template <typename T, typename acc_t>
inline acc_t sum_row(const T* a, int64_t n) {
  acc_t part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) part[k] += acc_t(a[i + k]);
  }
  acc_t s = 0;
  for (; i < n; ++i) s += acc_t(a[i]);
  for (int k = 0; k < kLanes; ++k) s += part[k];
  return s;
}

template <typename T, typename U, typename acc_t>
inline acc_t dot_row(const T* a, const U* b, int64_t n) {
  acc_t part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) part[k] += acc_t(a[i + k]) * acc_t(b[i + k]);
  }
  acc_t s = 0;
  for (; i < n; ++i) s += acc_t(a[i]) * acc_t(b[i]);
  for (int k = 0; k < kLanes; ++k) s += part[k];
  return s;
}

}  // namespace cpu
}  // namespace recogfast
