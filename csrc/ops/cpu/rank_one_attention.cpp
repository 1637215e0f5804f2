// Vectorised float loops of rank_one_attention.h, compiled for AVX2+FMA and for the baseline and
// picked at run time (GCC/Clang target_clones). Sums go to 8 independent fp32 lanes per chunk of
// 256 elements and then into double, so long rows (H·W = 36864) keep fp32 rounding per chunk only.
#include "ops/cpu/rank_one_attention.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RECOGFAST_MULTIVERSION __attribute__((target_clones("avx2,fma", "default")))
#else
#define RECOGFAST_MULTIVERSION
#endif

namespace recogfast {
namespace cpu {

namespace {
constexpr int64_t kChunk = 256;

RECOGFAST_MULTIVERSION
void row_chunk(float qs, float ms, const float* k, const float* v, int64_t n, bool grad, float* out) {
  float l = 0, sv = 0, sk = 0, skv = 0;
  if (grad) {
#pragma omp simd reduction(+ : l, sv, sk, skv)
    for (int64_t j = 0; j < n; ++j) {
      const float e = exp2_nonpos(qs * k[j] - ms);
      const float ek = e * k[j];
      l += e;
      sv += e * v[j];
      sk += ek;
      skv += ek * v[j];
    }
  } else {
#pragma omp simd reduction(+ : l, sv)
    for (int64_t j = 0; j < n; ++j) {
      const float e = exp2_nonpos(qs * k[j] - ms);
      l += e;
      sv += e * v[j];
    }
  }
  out[0] = l;
  out[1] = sv;
  out[2] = sk;
  out[3] = skv;
}

RECOGFAST_MULTIVERSION
void col_chunk(float ks, const float* q, const float* m, const float* a, const float* b, const float* c, int64_t n,
               float* out) {
  float sa = 0, sb = 0, sc = 0;
#pragma omp simd reduction(+ : sa, sb, sc)
  for (int64_t i = 0; i < n; ++i) {
    const float e = exp2_nonpos(q[i] * ks - m[i]);
    sa += e * a[i];
    sb += e * b[i];
    sc += e * c[i];
  }
  out[0] = sa;
  out[1] = sb;
  out[2] = sc;
}
}  // namespace

template <bool kGrad>
RowSums row_sums_f32(float qi, float mi, const float* k, const float* v, int64_t L) {
  // exp(q k - m) = 2^(q log2e k - m log2e)
  const float qs = qi * kLog2e, ms = mi * kLog2e;
  RowSums r{0, 0, 0, 0};
  float part[4];
  for (int64_t j0 = 0; j0 < L; j0 += kChunk) {
    row_chunk(qs, ms, k + j0, v + j0, std::min(kChunk, L - j0), kGrad, part);
    r.l += part[0];
    r.sv += part[1];
    r.sk += part[2];
    r.skv += part[3];
  }
  return r;
}

template RowSums row_sums_f32<true>(float, float, const float*, const float*, int64_t);
template RowSums row_sums_f32<false>(float, float, const float*, const float*, int64_t);

// m arrives multiplied by log2(e) (exp_scale<float>(); the caller scales it once for all columns).
void col_sums_f32(float kj, const float* q, const float* m, const float* a, const float* b, const float* c,
                  int64_t L, double* out) {
  out[0] = out[1] = out[2] = 0;
  const float ks = kj * kLog2e;
  float part[3];
  for (int64_t i0 = 0; i0 < L; i0 += kChunk) {
    col_chunk(ks, q + i0, m + i0, a + i0, b + i0, c + i0, std::min(kChunk, L - i0), part);
    out[0] += part[0];
    out[1] += part[1];
    out[2] += part[2];
  }
}

}  // namespace cpu
}  // namespace recogfast
