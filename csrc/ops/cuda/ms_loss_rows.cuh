// The device side of the CUDA Multi-Similarity loss (ms_loss_kernel.cu, its only includer, holds the host
// side: the tiles, the GEMMs and the launches): the block sizes, the per-row reduction kernels of the forward
// pass, the pair-weight kernel of the backward pass and the normalisation kernels. Internal linkage.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/ms_loss.h"

// Tile budget: bytes of one S tile (rows x candidates in the accumulation dtype). The emulation
// (tools/cuda_emulation) shrinks it, and the block sizes, to get several tiles out of small inputs quickly.
#ifndef RECOGFAST_MS_LOSS_TILE_BYTES
#define RECOGFAST_MS_LOSS_TILE_BYTES (int64_t(16) << 20)
#endif
#ifndef RECOGFAST_MS_LOSS_MIN_TILE_ROWS
#define RECOGFAST_MS_LOSS_MIN_TILE_ROWS 32
#endif
#ifndef RECOGFAST_MS_LOSS_ROW_THREADS
#define RECOGFAST_MS_LOSS_ROW_THREADS 256
#endif
#ifndef RECOGFAST_MS_LOSS_THREADS
#define RECOGFAST_MS_LOSS_THREADS 256
#endif

namespace recogfast {
namespace {

using namespace gpu;

constexpr int64_t kTileBytes = RECOGFAST_MS_LOSS_TILE_BYTES;
constexpr int64_t kMinTileRows = RECOGFAST_MS_LOSS_MIN_TILE_ROWS;  // GEMMs thinner than this waste tensor cores
constexpr int kRowThreads = RECOGFAST_MS_LOSS_ROW_THREADS;         // threads per row of the reductions
constexpr int kRowWarps = kRowThreads / kWarp;
constexpr int kThreads = RECOGFAST_MS_LOSS_THREADS;                // element-wise kernels; a multiple of 32
constexpr double kNormEps = 1e-12;                               // as torch.nn.functional.normalize
constexpr int64_t kMaxTileBytes = 4 * kTileBytes;                // the SM-count minimum tile stays under this

struct Params {
  int64_t B, M;
  int mining;  // Mining
  double alpha, beta, base, eps;
};

template <typename T>
__device__ __forceinline__ T softplus(T a) {
  return fmax(a, T(0)) + log1p(exp(-fabs(a)));
}

// Keeps (v, idx) with the smaller v (kMin) or the larger v; ties to the smaller index; idx -1 = none.
template <bool kMin, typename T>
__device__ __forceinline__ void arg_merge(T& v, int64_t& idx, T v2, int64_t idx2) {
  if (idx2 < 0) return;
  if (idx < 0 || (kMin ? v2 < v : v2 > v) || (v2 == v && idx2 < idx)) {
    v = v2;
    idx = idx2;
  }
}

// Block-wide arg-min (kMin) or arg-max of (v, idx); every thread gets the result.
template <bool kMin, typename T>
__device__ __forceinline__ void block_arg(T& v, int64_t& idx, T* shv, int64_t* shi) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    const T v2 = __shfl_xor_sync(0xffffffffu, v, o);
    const int64_t i2 = __shfl_xor_sync(0xffffffffu, idx, o);
    arg_merge<kMin>(v, idx, v2, i2);
  }
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  __syncthreads();
  if (lane == 0) {
    shv[warp] = v;
    shi[warp] = idx;
  }
  __syncthreads();
  for (int w = 0; w < kRowWarps; ++w) arg_merge<kMin>(v, idx, shv[w], shi[w]);
}

// Row norms, one warp per row: norms[r] = |x_r| (summed in fp64 as the CPU kernel), inv[r] = 1 / max(|x_r|,
// eps), and the power of two p2[r] = 2^-e that brings a nonzero norm to [0.5, 1) (1 for a zero row) with
// inv2[r] = inv[r] / p2[r], the scale of the copy x · p2 (0 for a zero row). flags[bad_slot] = 1 on NaN/inf
// (the row is then treated as a zero row). Every writer stores the same value 1, so no atomics are needed.
template <typename scalar_t, typename acc_t>
__global__ void ms_loss_norms_kernel(const scalar_t* __restrict__ x, acc_t* __restrict__ norms,
                                     acc_t* __restrict__ inv, acc_t* __restrict__ p2, acc_t* __restrict__ inv2,
                                     int* __restrict__ flags, int bad_slot, int64_t rows, int64_t D) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= rows) return;
  const scalar_t* xr = x + r * D;
  double ss = 0;
  for (int64_t d = lane; d < D; d += kWarp) {
    const double v = static_cast<double>(xr[d]);
    ss += v * v;
  }
  ss = warp_sum(ss);
  if (lane != 0) return;
  if (!isfinite(ss)) {
    flags[bad_slot] = 1;
    ss = 0;
  }
  const double n = sqrt(ss);
  int e = 0;
  if (n != 0) frexp(n, &e);
  e = e < -100 ? -100 : e > 100 ? 100 : e;  // 2^±100 stays normal in fp32 (rows that tiny/huge are edge cases)
  const acc_t in = acc_t(1) / acc_t(fmax(n, kNormEps)), q = acc_t(ldexp(1.0, -e));
  norms[r] = acc_t(n);
  inv[r] = in;
  p2[r] = q;
  inv2[r] = n != 0 ? in / q : acc_t(0);  // a power-of-two factor: exact; <= 2 (0 for a zero row, all of whose
                                        // products are 0: 1 / eps would overflow fp16 in the weights)
}

// xs = x · p2 (a power of two per row: exact, in the input dtype); 0 for zero and non-finite rows (inv2 = 0).
template <typename scalar_t, typename acc_t>
__global__ void ms_loss_scale_rows_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ p2,
                                          const acc_t* __restrict__ inv2, scalar_t* __restrict__ xs, int64_t rows,
                                          int64_t D) {
  const int64_t n = rows * D;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += int64_t(gridDim.x) * blockDim.x)
    xs[k] = inv2[k / D] != acc_t(0) ? static_cast<scalar_t>(static_cast<acc_t>(x[k]) * p2[k / D]) : scalar_t(0);
}

// Element (r, k) of a tile stored as a batch part [rows, nb] and a reference part [rows, nr].
template <typename acc_t>
__device__ __forceinline__ acc_t tile_at(const acc_t* se, const acc_t* sr, int64_t nb, int64_t nr, int64_t r,
                                         int64_t k) {
  return k < nb ? se[r * nb + k] : sr[r * nr + (k - nb)];
}

// Forward reductions: one block per anchor row i = row0 + blockIdx.x of the tile (se, sr).
// scale: the factors that turn the operands' rows into normalised rows (nullptr: 1).
template <typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    ms_loss_rows_kernel(const acc_t* __restrict__ se, const acc_t* __restrict__ sr, int64_t row0,
                        const acc_t* __restrict__ scale, const int64_t* __restrict__ lab, acc_t* __restrict__ stats,
                        int64_t* __restrict__ hard_idx, acc_t* __restrict__ per_anchor, Params p) {
  __shared__ acc_t shv[kRowWarps];
  __shared__ int64_t shi[kRowWarps];
  const int64_t r = blockIdx.x, i = row0 + r, B = p.B, R = p.M - p.B;
  const acc_t inf = acc_t(INFINITY);
  const acc_t alpha = acc_t(p.alpha), beta = acc_t(p.beta), base = acc_t(p.base), eps = acc_t(p.eps);
  const int64_t li = lab[i];
  const acc_t si = scale ? scale[i] : acc_t(1);
  auto sim = [&](int64_t k) {
    const acc_t s = tile_at(se, sr, B, R, r, k);
    return scale ? s * (si * scale[k]) : s;
  };
  // Sweep 1: thresholds.
  acc_t mn = inf, mx = -inf;
  int64_t an = -1, ax = -1;
  for (int64_t k = threadIdx.x; k < p.M; k += kRowThreads) {
    if (k == i) continue;
    const acc_t s = sim(k);
    if (lab[k] == li) {
      if (an < 0 || s < mn) {
        mn = s;
        an = k;
      }
    } else if (ax < 0 || s > mx) {
      mx = s;
      ax = k;
    }
  }
  block_arg<true>(mn, an, shv, shi);
  block_arg<false>(mx, ax, shv, shi);
  if (an < 0) mn = inf;
  if (ax < 0) mx = -inf;
  acc_t lzp = 0, lzn = 0;
  if (p.mining == int(Mining::kHardest)) {
    if (an >= 0 && ax >= 0) {
      lzp = softplus(-alpha * (mn - base));
      lzn = softplus(beta * (mx - base));
    } else {
      an = ax = -1;
    }
    if (threadIdx.x == 0) {
      hard_idx[i * 2] = an;
      hard_idx[i * 2 + 1] = ax;
    }
  } else {
    // Sweep 2: the mined sums. "ms": positives need s - eps < max_neg, negatives s + eps > min_pos; "all": none.
    // The largest mined term is the one at min_pos (positives) / max_neg (negatives), so they are the shifts.
    const bool ms = p.mining == int(Mining::kMS);
    const acc_t thr_pos = ms ? mx : inf, thr_neg = ms ? mn : -inf;
    acc_t zp = 0, zn = 0;
    for (int64_t k = threadIdx.x; k < p.M; k += kRowThreads) {
      if (k == i) continue;
      const acc_t s = sim(k);
      if (lab[k] == li) {
        if (s - eps < thr_pos) zp += exp(-alpha * (s - mn));
      } else if (s + eps > thr_neg) {
        zn += exp(beta * (s - mx));
      }
    }
    zp = block_sum(zp, shv);
    zn = block_sum(zn, shv);
    if (zp > 0) lzp = softplus(-alpha * (mn - base) + log(zp));
    if (zn > 0) lzn = softplus(beta * (mx - base) + log(zn));
  }
  if (threadIdx.x == 0) {
    acc_t* st = stats + i * 4;
    st[0] = lzp;
    st[1] = lzn;
    st[2] = mn;
    st[3] = mx;
    per_anchor[i] = lzp / alpha + lzn / beta;
  }
}

// e^x: exp, or with kFast one FMUL and one MUFU.EX2 (gpu::ex2, relative error 2^-22, plus |x| 2^-24 from x log2 e:
// at most 6e-6 for the |x| <= 100 of the loss's terms). The flash path takes kFast: its operands are bf16 / fp16
// (rounding 2^-9 / 2^-12) or TF32 (2^-11), so each similarity, and through beta = 50 each exponent, already carries
// an error hundreds of times larger; the tiles path's exact fp32 / fp64 and the flash path's 3xTF32 keep exp.
template <bool kFast, typename acc_t>
__device__ __forceinline__ acc_t exp_of(acc_t x) {
  if constexpr (kFast && std::is_same_v<acc_t, float>)
    return ex2(x * log2e<float>());
  else
    return exp(x);
}

// dL/dS (without the g/B factor) of the pair (anchor a, candidate j) with similarity s (kFast: exp_of).
template <typename acc_t, bool kFast = false>
__device__ __forceinline__ acc_t pair_weight(const acc_t* __restrict__ stats, const int64_t* __restrict__ hard_idx,
                                             int64_t a, int64_t j, acc_t s, bool positive, const Params& p) {
  const acc_t* st = stats + a * 4;
  if (positive) {
    const bool mined = p.mining == int(Mining::kHardest) ? hard_idx[a * 2] == j
                       : p.mining == int(Mining::kAll)   ? true
                                                         : s - acc_t(p.eps) < st[3];
    return mined ? -exp_of<kFast>(-acc_t(p.alpha) * (s - acc_t(p.base)) - st[0]) : acc_t(0);
  }
  const bool mined = p.mining == int(Mining::kHardest) ? hard_idx[a * 2 + 1] == j
                     : p.mining == int(Mining::kAll)   ? true
                                                       : s + acc_t(p.eps) > st[2];
  return mined ? exp_of<kFast>(acc_t(p.beta) * (s - acc_t(p.base)) - st[1]) : acc_t(0);
}

// Backward weights of a tile whose rows are candidates row0 + r and whose columns are candidates k (a batch
// part of nb columns and a reference part of nr): W[r, k] = (w(anchor row, cand k) if the row is an anchor
// + w(anchor k, cand row) if k is an anchor) · scale_g[k], written as we (batch part) and wr.
// scale_s / scale_g: the factors that normalise the rows of the S / product operands (nullptr: 1).
template <typename acc_t, typename op_t>
__global__ void __launch_bounds__(kThreads)
    ms_loss_weights_kernel(const acc_t* __restrict__ se, const acc_t* __restrict__ sr, int64_t rows, int64_t nb,
                           int64_t nr, int64_t row0, const acc_t* __restrict__ scale_s,
                           const acc_t* __restrict__ scale_g, const int64_t* __restrict__ lab,
                           const acc_t* __restrict__ stats, const int64_t* __restrict__ hard_idx,
                           op_t* __restrict__ we, op_t* __restrict__ wr, Params p) {
  const int64_t cols = nb + nr;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const int64_t c = row0 + r;
    const int64_t lc = lab[c];
    const bool row_anchor = c < p.B;
    const acc_t sc = scale_s ? scale_s[c] : acc_t(1);
    for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < cols; k += int64_t(gridDim.x) * blockDim.x) {
      acc_t w = 0;
      if (k != c) {
        acc_t s = tile_at(se, sr, nb, nr, r, k);
        if (scale_s) s *= sc * scale_s[k];
        const bool positive = lab[k] == lc;
        if (row_anchor) w += pair_weight(stats, hard_idx, c, k, s, positive, p);
        if (k < p.B) w += pair_weight(stats, hard_idx, k, c, s, positive, p);
        if (scale_g) w *= scale_g[k];
      }
      if (k < nb)
        we[r * nb + k] = static_cast<op_t>(w);
      else
        wr[r * nr + (k - nb)] = static_cast<op_t>(w);
    }
  }
}

// grad_x = (g - c (c·g)) / |x| (or g / eps where |x| <= eps) with g = (G1 + G2) · grad_loss / B and
// c = x · inv, one warp per row.
template <typename scalar_t, typename acc_t>
__global__ void ms_loss_normalize_backward_kernel(const acc_t* __restrict__ g1, const acc_t* __restrict__ g2,
                                                  const scalar_t* __restrict__ x, const acc_t* __restrict__ norms,
                                                  const acc_t* __restrict__ grad_loss, int64_t B,
                                                  scalar_t* __restrict__ out, int64_t rows, int64_t D) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= rows) return;
  const acc_t scale = grad_loss[0] / acc_t(B);
  const acc_t n = norms[r];
  const acc_t inv = acc_t(1) / acc_t(fmax(double(n), kNormEps));
  auto g = [&](int64_t d) { return (g2 ? g1[r * D + d] + g2[r * D + d] : g1[r * D + d]) * scale; };
  const scalar_t* xr = x + r * D;
  scalar_t* o = out + r * D;
  if (n > acc_t(kNormEps)) {
    acc_t dot = 0;
    for (int64_t d = lane; d < D; d += kWarp) dot += static_cast<acc_t>(xr[d]) * inv * g(d);
    dot = warp_sum(dot);
    for (int64_t d = lane; d < D; d += kWarp)
      o[d] = static_cast<scalar_t>((g(d) - static_cast<acc_t>(xr[d]) * inv * dot) * inv);
  } else {
    for (int64_t d = lane; d < D; d += kWarp) o[d] = static_cast<scalar_t>(g(d) / acc_t(kNormEps));
  }
}

}  // namespace
}  // namespace recogfast
