// Vectorised float loops of rank_one_attention.h, compiled twice on x86-64 -- for AVX2+FMA (8 lanes)
// and for the baseline (SSE2, 4 lanes) -- and picked once at run time (simd.h).
// Sums go to fp32 SIMD lanes per chunk of 256 elements and then into double, so long rows
// (H·W = 36864) keep fp32 rounding per chunk only.
#include "ops/cpu/rank_one_attention.h"

namespace recogfast {
namespace cpu {

namespace {
constexpr int64_t kChunk = 256;

using simd::exp2_poly;
using simd::hsum;
using simd::load;
template <int W>
using Simd = simd::Vec<W>;

// mode 0: l and sv; 1: also sk and skv (v about vs; svc = sv); 2: skv and svc about vc.
template <int W>
RECOGFAST_SIMD_INLINE void row_chunk_impl(float qs, const float* k, const float* v, int64_t n, int mode, float ks,
                                     float vs, float vc, float* out) {
  using F = typename Simd<W>::F;
  F l = F{}, sv = F{}, sk = F{}, skv = F{}, svc = F{};
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const F dk = load<W>(k + j) - ks, vj = load<W>(v + j), dv = vj - vs;
    const F e = exp2_poly<W>(dk * qs);
    l += e;
    sv += e * dv;
    if (mode == 1) {
      const F ek = e * dk;
      sk += ek;
      skv += ek * dv;
    } else if (mode == 2) {
      const F ek = e * dk, dvc = vj - vc;
      sk += ek;
      skv += ek * dvc;
      svc += e * dvc;
    }
  }
  float tl = hsum<W>(l), tsv = hsum<W>(sv), tsk = hsum<W>(sk), tskv = hsum<W>(skv), tsvc = hsum<W>(svc);
  for (; j < n; ++j) {
    const float dk = k[j] - ks, dv = v[j] - vs, e = exp2_poly(dk * qs), ek = e * dk;
    tl += e;
    tsv += e * dv;
    tsk += ek;
    tskv += ek * (v[j] - vc);
    tsvc += e * (v[j] - vc);
  }
  out[0] = tl;
  out[1] = tsv;
  out[2] = tsk;
  out[3] = tskv;
  out[4] = mode == 2 ? tsvc : tsv;
}

template <int W>
RECOGFAST_SIMD_INLINE void col_chunk_impl(float kj, float vj, const float* qs, const float* kst, const float* a,
                                     const float* b, const float* f, int64_t n, float* out) {
  using F = typename Simd<W>::F;
  F sa = F{}, sb = F{};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const F e = exp2_poly<W>(load<W>(qs + i) * (kj - load<W>(kst + i)));
    sa += e * load<W>(a + i);
    sb += e * load<W>(b + i) * (vj - load<W>(f + i));
  }
  float ta = hsum<W>(sa), tb = hsum<W>(sb);
  for (; i < n; ++i) {
    const float e = exp2_poly(qs[i] * (kj - kst[i]));
    ta += e * a[i];
    tb += e * b[i] * (vj - f[i]);
  }
  out[0] = ta;
  out[1] = tb;
}

using RowChunk = void (*)(float, const float*, const float*, int64_t, int, float, float, float, float*);
using ColChunk = void (*)(float, float, const float*, const float*, const float*, const float*, const float*,
                          int64_t, float*);

void row_chunk_default(float qs, const float* k, const float* v, int64_t n, int mode, float ks, float vs,
                       float vc, float* out) {
  row_chunk_impl<4>(qs, k, v, n, mode, ks, vs, vc, out);
}
void col_chunk_default(float kj, float vj, const float* qs, const float* kst, const float* a, const float* b,
                       const float* f, int64_t n, float* out) {
  col_chunk_impl<4>(kj, vj, qs, kst, a, b, f, n, out);
}

#if RECOGFAST_X86_DISPATCH
RECOGFAST_TARGET_AVX2 void row_chunk_avx2(float qs, const float* k, const float* v, int64_t n,
                                                        int mode, float ks, float vs, float vc, float* out) {
  row_chunk_impl<8>(qs, k, v, n, mode, ks, vs, vc, out);
}
RECOGFAST_TARGET_AVX2 void col_chunk_avx2(float kj, float vj, const float* qs, const float* kst,
                                                        const float* a, const float* b, const float* f, int64_t n,
                                                        float* out) {
  col_chunk_impl<8>(kj, vj, qs, kst, a, b, f, n, out);
}
const RowChunk row_chunk = simd::has_avx2_fma() ? row_chunk_avx2 : row_chunk_default;
const ColChunk col_chunk = simd::has_avx2_fma() ? col_chunk_avx2 : col_chunk_default;
#else
const RowChunk row_chunk = row_chunk_default;
const ColChunk col_chunk = col_chunk_default;
#endif

}  // namespace

template <bool kGrad>
RowSums row_sums_f32(float qi, const float* k, const float* v, int64_t L, float kstar, float vstar, float vc) {
  const float qs = qi * simd::kLog2e;  // exp(q (k - k*)) = 2^(q log2e (k - k*))
  const int mode = !kGrad ? 0 : vc == vstar ? 1 : 2;
  RowSums r{0, 0, 0, 0, 0};
  float part[5];
  for (int64_t j0 = 0; j0 < L; j0 += kChunk) {
    row_chunk(qs, k + j0, v + j0, std::min(kChunk, L - j0), mode, kstar, vstar, vc, part);
    r.l += part[0];
    r.sv += part[1];
    r.sk += part[2];
    r.skv += part[3];
    r.svc += part[4];
  }
  return r;
}

template RowSums row_sums_f32<true>(float, const float*, const float*, int64_t, float, float, float);
template RowSums row_sums_f32<false>(float, const float*, const float*, int64_t, float, float, float);

// qs arrives multiplied by log2(e) (exp_scale<float>(); the caller scales it once for all columns).
void col_sums_f32(float kj, float vj, const float* qs, const float* kst, const float* a, const float* b,
                  const float* f, int64_t L, double* out) {
  out[0] = out[1] = 0;
  float part[2];
  for (int64_t i0 = 0; i0 < L; i0 += kChunk) {
    col_chunk(kj, vj, qs + i0, kst + i0, a + i0, b + i0, f + i0, std::min(kChunk, L - i0), part);
    out[0] += part[0];
    out[1] += part[1];
  }
}

}  // namespace cpu
}  // namespace recogfast
