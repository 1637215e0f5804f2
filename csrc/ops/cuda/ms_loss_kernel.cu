// Multi-Similarity loss on CUDA, forward and backward, without the B x M similarity matrix.
// fp32/fp16/bf16 embeddings are normalised into an fp32 buffer (fp64 for fp64) and every product and
// reduction accumulates in that type.
//
// Forward:  1. ms_loss_normalize_kernel      c = x / max(|x|, 1e-12) for the B anchors and R reference rows,
//                                            a flag for NaN/inf
//           2. ms_loss_tile_kernel<kPass=0>  per anchor: min positive / max negative similarity (+ their
//                                            indices), from BM x BN tiles of S computed in shared memory;
//                                            the candidate range is split over gridDim.y, partials merged by
//           3. ms_loss_merge_kernel<0>
//           4. ms_loss_tile_kernel<kPass=1>  per anchor: running (max, sum) log-sum-exps of the mined
//                                            positives and negatives (thresholds from pass 0)
//           5. ms_loss_merge_kernel<1>       -> log_z_pos, log_z_neg and the per-anchor loss; loss = mean
// Backward: 1. normalise again
//           2. ms_loss_backward_tile_kernel  one block per (anchor tile, candidate tile): recompute S, the
//                                            per-pair weights dL/dS in shared memory, then W·c_J into the
//                                            anchors' rows and Wᵀ·e_I into the candidates' rows of an fp32
//                                            gradient buffer (atomicAdd), D in chunks of BK
//           3. ms_loss_normalize_backward_kernel
// Extra memory: O((B + M)·D) for the normalised rows and the gradient buffer, O(splits·B) for partials.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "ops/ms_loss.h"

namespace recogfast {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;  // 16 x 16 threads; each owns a TM x TM block of the tile
constexpr int kBK = 32;        // depth of a shared-memory slab of the product
constexpr double kNormEps = 1e-12;

template <typename acc_t>
struct Tiles {
  // fp32: 64 x 64 tiles, 4 x 4 per thread; fp64: 32 x 32, 2 x 2 per thread (keeps shared memory < 48 KB).
  static constexpr int TM = sizeof(acc_t) == 8 ? 2 : 4;
  static constexpr int BM = 16 * TM;
};

template <typename T>
__device__ __forceinline__ T dev_inf() {
  return sizeof(T) == 8 ? T(__longlong_as_double(0x7ff0000000000000LL)) : T(__int_as_float(0x7f800000));
}

__device__ __forceinline__ float dev_exp(float x) { return __expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }

template <typename T>
__device__ __forceinline__ T softplus(T a) {
  return fmax(a, T(0)) + log1p(exp(-fabs(a)));
}

// (xm, z) with z = sum exp(x - xm): add one term x.
template <typename T>
__device__ __forceinline__ void lse_add(T& xm, T& z, T x) {
  if (z == T(0)) {
    xm = x;
    z = T(1);
  } else if (x > xm) {
    z = z * dev_exp(xm - x) + T(1);
    xm = x;
  } else {
    z += dev_exp(x - xm);
  }
}

template <typename T>
__device__ __forceinline__ void lse_merge(T& xm, T& z, T xm2, T z2) {
  if (z2 == T(0)) return;
  if (z == T(0)) {
    xm = xm2;
    z = z2;
  } else if (xm2 > xm) {
    z = z * exp(xm - xm2) + z2;
    xm = xm2;
  } else {
    z += z2 * exp(xm2 - xm);
  }
}

// Keeps (v, idx) with the smaller v (kMin) or larger v, ties to the smaller index (-1 = none).
template <bool kMin, typename T>
__device__ __forceinline__ void arg_update(T& v, int64_t& idx, T v2, int64_t idx2) {
  if (idx2 < 0) return;
  const bool better = kMin ? (v2 < v) : (v2 > v);
  if (idx < 0 || better || (v2 == v && idx2 < idx)) {
    v = v2;
    idx = idx2;
  }
}

// Normalise rows: c[r] = x[r] / max(|x[r]|, eps), one warp per row.
template <typename scalar_t, typename acc_t>
__global__ void ms_loss_normalize_kernel(const scalar_t* __restrict__ x, acc_t* __restrict__ c,
                                         acc_t* __restrict__ norms, int* __restrict__ bad, int64_t rows, int64_t D) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= rows) return;
  const scalar_t* xr = x + r * D;
  double ss = 0;
  for (int64_t d = lane; d < D; d += kWarp) {
    const double v = static_cast<double>(xr[d]);
    ss += v * v;
  }
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (!isfinite(ss)) {
    if (lane == 0) atomicExch(bad, 1);
    ss = 0;
  }
  const double n = sqrt(ss);
  const acc_t inv = acc_t(1.0 / fmax(n, kNormEps));
  if (lane == 0) norms[r] = acc_t(n);
  for (int64_t d = lane; d < D; d += kWarp) c[r * D + d] = static_cast<acc_t>(xr[d]) * inv;
}

// S tile [BM x BM] of c[i0..] · c[j0..]ᵀ into the thread's registers acc[TM][TM]
// (rows ty*TM + r, columns tx*TM + q). Out-of-range rows/columns read zeros.
template <typename acc_t>
__device__ __forceinline__ void compute_tile(const acc_t* __restrict__ c, int64_t i0, int64_t rows_end, int64_t j0,
                                             int64_t cols_end, int64_t D, acc_t (*As)[Tiles<acc_t>::BM + 1],
                                             acc_t (*Bs)[Tiles<acc_t>::BM + 1],
                                             acc_t acc[Tiles<acc_t>::TM][Tiles<acc_t>::TM]) {
  constexpr int TM = Tiles<acc_t>::TM, BM = Tiles<acc_t>::BM;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int q = 0; q < TM; ++q) acc[r][q] = 0;
  for (int64_t k0 = 0; k0 < D; k0 += kBK) {
    for (int idx = tid; idx < BM * kBK; idx += kThreads) {
      const int m = idx / kBK, k = idx % kBK;
      const int64_t i = i0 + m, j = j0 + m, d = k0 + k;
      As[k][m] = (i < rows_end && d < D) ? c[i * D + d] : acc_t(0);
      Bs[k][m] = (j < cols_end && d < D) ? c[j * D + d] : acc_t(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kBK; ++k) {
      acc_t a[TM], b[TM];
#pragma unroll
      for (int r = 0; r < TM; ++r) a[r] = As[k][ty * TM + r];
#pragma unroll
      for (int q = 0; q < TM; ++q) b[q] = Bs[k][tx * TM + q];
#pragma unroll
      for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int q = 0; q < TM; ++q) acc[r][q] += a[r] * b[q];
    }
    __syncthreads();
  }
}

struct Params {
  int64_t B, M, D;
  int mining;  // Mining
  double alpha, beta, base, eps;
  int64_t tiles_per_split;  // candidate tiles per gridDim.y slice
};

// kPass 0: part[split][i] = (min_pos, max_neg) and pidx[split][i] = (arg_pos, arg_neg).
// kPass 1: part[split][i] = (pos xm, pos z, neg xm, neg z), thresholds from stats [B, 4].
template <int kPass, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    ms_loss_tile_kernel(const acc_t* __restrict__ c, const int64_t* __restrict__ lab, const acc_t* __restrict__ stats,
                        acc_t* __restrict__ part, int64_t* __restrict__ pidx, Params p) {
  constexpr int TM = Tiles<acc_t>::TM, BM = Tiles<acc_t>::BM;
  __shared__ acc_t As[kBK][BM + 1];
  __shared__ acc_t Bs[kBK][BM + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t i0 = int64_t(blockIdx.x) * BM;
  const int64_t split = blockIdx.y;
  const int64_t n_tiles = (p.M + BM - 1) / BM;
  const int64_t t_begin = split * p.tiles_per_split, t_end = min(n_tiles, t_begin + p.tiles_per_split);
  const acc_t inf = dev_inf<acc_t>();
  const acc_t alpha = acc_t(p.alpha), beta = acc_t(p.beta), base = acc_t(p.base), eps = acc_t(p.eps);

  int64_t li[TM];
  acc_t s0[TM], s1[TM], s2[TM], s3[TM];  // pass 0: min_pos, max_neg; pass 1: pxm, pz, nxm, nz
  int64_t a0[TM], a1[TM];
  acc_t thr_pos[TM], thr_neg[TM];
#pragma unroll
  for (int r = 0; r < TM; ++r) {
    const int64_t i = i0 + ty * TM + r;
    li[r] = i < p.B ? lab[i] : 0;
    s0[r] = inf;
    s1[r] = -inf;
    s2[r] = 0;
    s3[r] = 0;
    a0[r] = a1[r] = -1;
    if (kPass == 1) {
      s0[r] = 0;
      s1[r] = 0;
      // ms: positives need s - eps < max_neg, negatives s + eps > min_pos; all: no condition.
      thr_pos[r] = (i < p.B && p.mining == int(Mining::kMS)) ? stats[i * 4 + 3] : inf;
      thr_neg[r] = (i < p.B && p.mining == int(Mining::kMS)) ? stats[i * 4 + 2] : -inf;
    }
  }
  acc_t acc[TM][TM];
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t j0 = t * BM;
    compute_tile<acc_t>(c, i0, p.B, j0, p.M, p.D, As, Bs, acc);
#pragma unroll
    for (int q = 0; q < TM; ++q) {
      const int64_t j = j0 + tx * TM + q;
      if (j >= p.M) continue;
      const int64_t lj = lab[j];
#pragma unroll
      for (int r = 0; r < TM; ++r) {
        const int64_t i = i0 + ty * TM + r;
        if (i >= p.B || j == i) continue;
        const acc_t s = acc[r][q];
        const bool pos = lj == li[r];
        if (kPass == 0) {
          if (pos) {
            if (s < s0[r] || a0[r] < 0) {
              s0[r] = s;
              a0[r] = j;
            }
          } else if (s > s1[r] || a1[r] < 0) {
            s1[r] = s;
            a1[r] = j;
          }
        } else {
          if (pos) {
            if (s - eps < thr_pos[r]) lse_add(s0[r], s1[r], -alpha * (s - base));
          } else if (s + eps > thr_neg[r]) {
            lse_add(s2[r], s3[r], beta * (s - base));
          }
        }
      }
    }
  }
  // Merge over the 16 threads (tx) that share a row: they are 16 consecutive lanes of one warp.
#pragma unroll
  for (int r = 0; r < TM; ++r) {
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) {
      const acc_t o0 = __shfl_xor_sync(0xffffffffu, s0[r], o), o1 = __shfl_xor_sync(0xffffffffu, s1[r], o);
      const acc_t o2 = __shfl_xor_sync(0xffffffffu, s2[r], o), o3 = __shfl_xor_sync(0xffffffffu, s3[r], o);
      const int64_t b0 = __shfl_xor_sync(0xffffffffu, a0[r], o), b1 = __shfl_xor_sync(0xffffffffu, a1[r], o);
      if (kPass == 0) {
        arg_update<true>(s0[r], a0[r], o0, b0);
        arg_update<false>(s1[r], a1[r], o1, b1);
      } else {
        lse_merge(s0[r], s1[r], o0, o1);
        lse_merge(s2[r], s3[r], o2, o3);
      }
    }
    const int64_t i = i0 + ty * TM + r;
    if (tx == 0 && i < p.B) {
      acc_t* out = part + (split * p.B + i) * 4;
      out[0] = s0[r];
      out[1] = s1[r];
      out[2] = s2[r];
      out[3] = s3[r];
      if (kPass == 0) {
        pidx[(split * p.B + i) * 2] = a0[r];
        pidx[(split * p.B + i) * 2 + 1] = a1[r];
      }
    }
  }
}

// kPass 0: stats[:, 2:4] and hard_idx from the split partials. kPass 1: stats[:, 0:2] and the per-anchor loss.
template <int kPass, typename acc_t>
__global__ void ms_loss_merge_kernel(const acc_t* __restrict__ part, const int64_t* __restrict__ pidx,
                                     int64_t splits, acc_t* __restrict__ stats, int64_t* __restrict__ hard_idx,
                                     acc_t* __restrict__ per_anchor, Params p) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.B) return;
  const acc_t inf = dev_inf<acc_t>();
  if (kPass == 0) {
    acc_t mn = inf, mx = -inf;
    int64_t an = -1, ax = -1;
    for (int64_t s = 0; s < splits; ++s) {
      const acc_t* q = part + (s * p.B + i) * 4;
      arg_update<true>(mn, an, q[0], pidx[(s * p.B + i) * 2]);
      arg_update<false>(mx, ax, q[1], pidx[(s * p.B + i) * 2 + 1]);
    }
    stats[i * 4 + 2] = an >= 0 ? mn : inf;
    stats[i * 4 + 3] = ax >= 0 ? mx : -inf;
    const bool hardest = p.mining == int(Mining::kHardest) && an >= 0 && ax >= 0;
    hard_idx[i * 2] = hardest ? an : -1;
    hard_idx[i * 2 + 1] = hardest ? ax : -1;
    return;
  }
  acc_t lzp = 0, lzn = 0;
  if (p.mining == int(Mining::kHardest)) {
    if (hard_idx[i * 2] >= 0) {
      lzp = softplus(-acc_t(p.alpha) * (stats[i * 4 + 2] - acc_t(p.base)));
      lzn = softplus(acc_t(p.beta) * (stats[i * 4 + 3] - acc_t(p.base)));
    }
  } else {
    acc_t pxm = 0, pz = 0, nxm = 0, nz = 0;
    for (int64_t s = 0; s < splits; ++s) {
      const acc_t* q = part + (s * p.B + i) * 4;
      lse_merge(pxm, pz, q[0], q[1]);
      lse_merge(nxm, nz, q[2], q[3]);
    }
    if (pz > 0) lzp = softplus(pxm + log(pz));
    if (nz > 0) lzn = softplus(nxm + log(nz));
  }
  stats[i * 4] = lzp;
  stats[i * 4 + 1] = lzn;
  per_anchor[i] = lzp / acc_t(p.alpha) + lzn / acc_t(p.beta);
}

// One block per (anchor tile, candidate tile): W = dL/dS on the tile, then gall[I] += W·c_J and
// gall[J] += Wᵀ·c_I (rows of J below grad_rows only).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    ms_loss_backward_tile_kernel(const acc_t* __restrict__ c, const int64_t* __restrict__ lab,
                                 const acc_t* __restrict__ stats, const int64_t* __restrict__ hard_idx,
                                 const acc_t* __restrict__ grad_loss, acc_t* __restrict__ gall, int64_t grad_rows,
                                 Params p) {
  constexpr int TM = Tiles<acc_t>::TM, BM = Tiles<acc_t>::BM;
  __shared__ acc_t As[kBK][BM + 1];
  __shared__ acc_t Bs[kBK][BM + 1];
  __shared__ acc_t Ws[BM][BM + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t i0 = int64_t(blockIdx.x) * BM, j0 = int64_t(blockIdx.y) * BM;
  const acc_t alpha = acc_t(p.alpha), beta = acc_t(p.beta), base = acc_t(p.base), eps = acc_t(p.eps);
  const acc_t scale = grad_loss[0] / acc_t(p.B);
  acc_t acc[TM][TM];
  compute_tile<acc_t>(c, i0, p.B, j0, p.M, p.D, As, Bs, acc);
  bool any = false;
#pragma unroll
  for (int r = 0; r < TM; ++r) {
    const int64_t i = i0 + ty * TM + r;
#pragma unroll
    for (int q = 0; q < TM; ++q) {
      const int64_t j = j0 + tx * TM + q;
      acc_t w = 0;
      if (i < p.B && j < p.M && j != i) {
        const acc_t s = acc[r][q];
        const acc_t* st = stats + i * 4;
        if (lab[j] == lab[i]) {
          const bool mined = p.mining == int(Mining::kHardest) ? hard_idx[i * 2] == j
                             : p.mining == int(Mining::kAll)   ? true
                                                               : s - eps < st[3];
          if (mined) w = -scale * exp(-alpha * (s - base) - st[0]);
        } else {
          const bool mined = p.mining == int(Mining::kHardest) ? hard_idx[i * 2 + 1] == j
                             : p.mining == int(Mining::kAll)   ? true
                                                               : s + eps > st[2];
          if (mined) w = scale * exp(beta * (s - base) - st[1]);
        }
      }
      Ws[ty * TM + r][tx * TM + q] = w;
      any |= w != acc_t(0);
    }
  }
  if (!__syncthreads_or(any)) return;
  // D in slabs of kBK: As[d][m] = c_I, Bs[d][n] = c_J; each thread owns TM rows x 2 columns of the slab.
  for (int64_t k0 = 0; k0 < p.D; k0 += kBK) {
    for (int idx = tid; idx < BM * kBK; idx += kThreads) {
      const int m = idx / kBK, k = idx % kBK;
      const int64_t i = i0 + m, j = j0 + m, d = k0 + k;
      As[k][m] = (i < p.B && d < p.D) ? c[i * p.D + d] : acc_t(0);
      Bs[k][m] = (j < p.M && d < p.D) ? c[j * p.D + d] : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < TM; ++r) {
      const int row = ty * TM + r;
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const int k = tx * 2 + q;
        const int64_t d = k0 + k;
        if (d >= p.D) continue;
        acc_t gi = 0, gj = 0;
        for (int n = 0; n < BM; ++n) {
          gi += Ws[row][n] * Bs[k][n];
          gj += Ws[n][row] * As[k][n];
        }
        const int64_t i = i0 + row, j = j0 + row;
        if (i < p.B && gi != acc_t(0)) atomicAdd(gall + i * p.D + d, gi);
        if (j < grad_rows && gj != acc_t(0)) atomicAdd(gall + j * p.D + d, gj);
      }
    }
    __syncthreads();
  }
}

// grad_x = (g - c (c·g)) / |x| (or g / eps where |x| <= eps), one warp per row.
template <typename scalar_t, typename acc_t>
__global__ void ms_loss_normalize_backward_kernel(const acc_t* __restrict__ g, const acc_t* __restrict__ c,
                                                  const acc_t* __restrict__ norms, scalar_t* __restrict__ out,
                                                  int64_t rows, int64_t D) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= rows) return;
  const acc_t* gr = g + r * D;
  const acc_t* cr = c + r * D;
  acc_t dot = 0;
  for (int64_t d = lane; d < D; d += kWarp) dot += gr[d] * cr[d];
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
  const acc_t n = norms[r];
  if (n > acc_t(kNormEps)) {
    const acc_t inv = acc_t(1) / n;
    for (int64_t d = lane; d < D; d += kWarp) out[r * D + d] = static_cast<scalar_t>((gr[d] - cr[d] * dot) * inv);
  } else {
    for (int64_t d = lane; d < D; d += kWarp) out[r * D + d] = static_cast<scalar_t>(gr[d] / acc_t(kNormEps));
  }
}

int64_t blocks_for(int64_t n, int64_t per_block) { return (n + per_block - 1) / per_block; }

// Normalised candidates [M, D] (acc dtype), their norms [M] and labels [M] (int64) on the device.
struct Prepared {
  at::Tensor c, norms, lab;
};

template <typename scalar_t, typename acc_t>
Prepared prepare(const at::Tensor& emb, const at::Tensor& labels, const std::optional<at::Tensor>& ref,
                 const std::optional<at::Tensor>& ref_labels, cudaStream_t stream) {
  const int64_t B = emb.size(0), D = emb.size(1), R = ref.has_value() ? ref->size(0) : 0, M = B + R;
  const auto acc = emb.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  Prepared out{at::empty({M, D}, acc), at::empty({M}, acc), at::Tensor()};
  at::Tensor bad = at::zeros({2}, emb.options().dtype(at::kInt));
  const at::Tensor e = emb.contiguous();
  constexpr int threads = 256, rows_per_block = threads / kWarp;
  if (B > 0) {
    ms_loss_normalize_kernel<scalar_t, acc_t><<<blocks_for(B, rows_per_block), threads, 0, stream>>>(
        e.const_data_ptr<scalar_t>(), out.c.mutable_data_ptr<acc_t>(), out.norms.mutable_data_ptr<acc_t>(),
        bad.mutable_data_ptr<int>(), B, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (R > 0) {
    const at::Tensor r = ref->contiguous();
    ms_loss_normalize_kernel<scalar_t, acc_t><<<blocks_for(R, rows_per_block), threads, 0, stream>>>(
        r.const_data_ptr<scalar_t>(), out.c.mutable_data_ptr<acc_t>() + B * D,
        out.norms.mutable_data_ptr<acc_t>() + B, bad.mutable_data_ptr<int>() + 1, R, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor bad_host = bad.cpu();  // synchronises: the NaN/inf check is an error, not a NaN loss
  TORCH_CHECK(bad_host.const_data_ptr<int>()[0] == 0, "recogfast::ms_loss: embeddings contains NaN or inf");
  TORCH_CHECK(bad_host.const_data_ptr<int>()[1] == 0, "recogfast::ms_loss: ref_embeddings contains NaN or inf");
  out.lab = R > 0 ? at::cat({labels.to(at::kLong), ref_labels->to(at::kLong)}).contiguous()
                  : labels.to(at::kLong).contiguous();
  return out;
}

int64_t num_sms() {
  int dev = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return std::max(sms, 1);
}

Params make_params(int64_t B, int64_t M, int64_t D, Mining mining, double alpha, double beta, double base,
                   double eps) {
  Params p{};
  p.B = B;
  p.M = M;
  p.D = D;
  p.mining = int(mining);
  p.alpha = alpha;
  p.beta = beta;
  p.base = base;
  p.eps = eps;
  return p;
}

// ref_grad_cache is always empty here (cache_ref_grad is a CPU optimisation; see ms_loss.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ms_loss_cuda(
    const at::Tensor& embeddings, const at::Tensor& labels, const std::optional<at::Tensor>& ref_embeddings,
    const std::optional<at::Tensor>& ref_labels, double alpha, double beta, double base, double epsilon,
    std::string_view mining_name, bool /*cache_ref_grad*/) {
  const Mining mining =
      detail::check_ms_loss_args(embeddings, labels, ref_embeddings, ref_labels, alpha, beta, epsilon, mining_name);
  const c10::cuda::CUDAGuard guard(embeddings.device());
  const int64_t B = embeddings.size(0), D = embeddings.size(1);
  const int64_t M = B + (ref_embeddings.has_value() ? ref_embeddings->size(0) : 0);
  const auto acc = embeddings.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor stats = at::empty({B, 4}, embeddings.options().dtype(acc));
  at::Tensor hard_idx = at::full({B, 2}, -1, embeddings.options().dtype(at::kLong));
  at::Tensor ref_grad_cache = at::empty({0}, embeddings.options().dtype(acc));
  if (B == 0) return {at::zeros({}, embeddings.options()), stats, hard_idx, ref_grad_cache};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor loss;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, embeddings.scalar_type(), "ms_loss_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    constexpr int BM = Tiles<acc_t>::BM;
    const Prepared pr = prepare<scalar_t, acc_t>(embeddings, labels, ref_embeddings, ref_labels, stream);
    Params p = make_params(B, M, D, mining, alpha, beta, base, epsilon);
    // Split the candidates over gridDim.y until there are about two blocks per SM.
    const int64_t row_blocks = blocks_for(B, BM), n_tiles = blocks_for(M, BM);
    const int64_t splits = std::min<int64_t>(n_tiles, std::max<int64_t>(1, blocks_for(2 * num_sms(), row_blocks)));
    p.tiles_per_split = blocks_for(n_tiles, splits);
    const int64_t used_splits = blocks_for(n_tiles, p.tiles_per_split);
    at::Tensor part = at::empty({used_splits, B, 4}, embeddings.options().dtype(acc));
    at::Tensor pidx = at::empty({used_splits, B, 2}, embeddings.options().dtype(at::kLong));
    at::Tensor per_anchor = at::empty({B}, embeddings.options().dtype(acc));
    const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(used_splits), 1u);
    const acc_t* c = pr.c.const_data_ptr<acc_t>();
    const int64_t* lab = pr.lab.const_data_ptr<int64_t>();
    acc_t* sp = stats.mutable_data_ptr<acc_t>();
    ms_loss_tile_kernel<0, acc_t><<<grid, kThreads, 0, stream>>>(c, lab, sp, part.mutable_data_ptr<acc_t>(),
                                                                 pidx.mutable_data_ptr<int64_t>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ms_loss_merge_kernel<0, acc_t><<<blocks_for(B, 256), 256, 0, stream>>>(
        part.const_data_ptr<acc_t>(), pidx.const_data_ptr<int64_t>(), used_splits, sp,
        hard_idx.mutable_data_ptr<int64_t>(), per_anchor.mutable_data_ptr<acc_t>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (mining != Mining::kHardest) {
      ms_loss_tile_kernel<1, acc_t><<<grid, kThreads, 0, stream>>>(c, lab, sp, part.mutable_data_ptr<acc_t>(),
                                                                   pidx.mutable_data_ptr<int64_t>(), p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    ms_loss_merge_kernel<1, acc_t><<<blocks_for(B, 256), 256, 0, stream>>>(
        part.const_data_ptr<acc_t>(), pidx.const_data_ptr<int64_t>(), used_splits, sp,
        hard_idx.mutable_data_ptr<int64_t>(), per_anchor.mutable_data_ptr<acc_t>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    loss = at::sum(per_anchor).div_(double(B)).to(embeddings.scalar_type());
  });
  return {loss, stats, hard_idx, ref_grad_cache};
}

std::tuple<at::Tensor, at::Tensor> ms_loss_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& embeddings, const at::Tensor& labels,
    const std::optional<at::Tensor>& ref_embeddings, const std::optional<at::Tensor>& ref_labels,
    const at::Tensor& stats_, const at::Tensor& hard_idx_, const at::Tensor& ref_grad_cache, double alpha,
    double beta, double base, double epsilon, std::string_view mining_name, bool ref_requires_grad) {
  const Mining mining =
      detail::check_ms_loss_args(embeddings, labels, ref_embeddings, ref_labels, alpha, beta, epsilon, mining_name);
  detail::check_ms_loss_backward_args(grad_loss, embeddings, stats_, hard_idx_, ref_grad_cache);
  const c10::cuda::CUDAGuard guard(embeddings.device());
  const int64_t B = embeddings.size(0), D = embeddings.size(1);
  const int64_t R = ref_embeddings.has_value() ? ref_embeddings->size(0) : 0, M = B + R;
  const bool ref_grad = ref_requires_grad && ref_embeddings.has_value();
  at::Tensor grad_e = at::zeros({B, D}, embeddings.options());
  at::Tensor grad_r = ref_grad ? at::zeros({R, D}, embeddings.options()) : at::empty({0}, embeddings.options());
  if (B == 0 || D == 0) return {grad_e, grad_r};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto acc = embeddings.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor stats = stats_.to(acc).contiguous();
  const at::Tensor hard_idx = hard_idx_.contiguous();
  const at::Tensor g = grad_loss.reshape({1}).to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, embeddings.scalar_type(), "ms_loss_backward_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    constexpr int BM = Tiles<acc_t>::BM;
    const Prepared pr = prepare<scalar_t, acc_t>(embeddings, labels, ref_embeddings, ref_labels, stream);
    const Params p = make_params(B, M, D, mining, alpha, beta, base, epsilon);
    const int64_t grad_rows = ref_grad ? M : B;
    at::Tensor gall = at::zeros({grad_rows, D}, embeddings.options().dtype(acc));
    const dim3 grid(static_cast<unsigned>(blocks_for(B, BM)), static_cast<unsigned>(blocks_for(M, BM)), 1u);
    ms_loss_backward_tile_kernel<acc_t><<<grid, kThreads, 0, stream>>>(
        pr.c.const_data_ptr<acc_t>(), pr.lab.const_data_ptr<int64_t>(), stats.const_data_ptr<acc_t>(),
        hard_idx.const_data_ptr<int64_t>(), g.const_data_ptr<acc_t>(), gall.mutable_data_ptr<acc_t>(), grad_rows, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    constexpr int threads = 256, rows_per_block = threads / kWarp;
    ms_loss_normalize_backward_kernel<scalar_t, acc_t><<<blocks_for(B, rows_per_block), threads, 0, stream>>>(
        gall.const_data_ptr<acc_t>(), pr.c.const_data_ptr<acc_t>(), pr.norms.const_data_ptr<acc_t>(),
        grad_e.mutable_data_ptr<scalar_t>(), B, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (ref_grad && R > 0) {
      ms_loss_normalize_backward_kernel<scalar_t, acc_t><<<blocks_for(R, rows_per_block), threads, 0, stream>>>(
          gall.const_data_ptr<acc_t>() + B * D, pr.c.const_data_ptr<acc_t>() + B * D,
          pr.norms.const_data_ptr<acc_t>() + B, grad_r.mutable_data_ptr<scalar_t>(), R, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_e, grad_r};
}

}  // namespace

TORCH_LIBRARY_IMPL(recogfast, CUDA, m) {
  m.impl("ms_loss", &ms_loss_cuda);
  m.impl("ms_loss_backward", &ms_loss_backward_cuda);
}

}  // namespace recogfast
