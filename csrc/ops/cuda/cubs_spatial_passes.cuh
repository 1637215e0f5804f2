// The two B·HW² passes of CUBS Block 2 on CUDA (cubs_spatial_kernel.cu, its only includer, holds the
// projections, the gating, the weight gradients and the launches): the key range of each sample, the row pass
// (softmax sums per row i over all j; the training forward's also saves the per-row statistics the backward
// needs), the backward's per-row factors from those statistics (cubs_spatial_prep_kernel, O(B·HW)) and the
// column pass of the backward (per column j over all i), each thread owning kRows rows (columns) against tiles of
// the other side staged in shared memory. Internal linkage.
//
// Kernel variants of the two quadratic passes (issue 25 part 1): Cfg = SpatialTile<kThreads a block, kRows rows
// (columns) a thread, kTile staged values a tile>, every variant compiled in, chosen by RECOGFAST_CUBS_SPATIAL_TILE
// (read once per process; each launch of the emulation re-reads it; another value is a one-line error):
//   0 (default) 128 threads, 2 rows, 512-value tiles: today's kernels;
//   1 256 threads, 1 row: fewer registers a thread, twice the warps a block (the latency of MUFU.EX2 hidden by
//     occupancy rather than by a second row), one shared-memory read an exponential instead of half of one;
//   2 128 threads, 3 rows: each staged value serves 3 rows and 3 independent exponentials are in flight, at more
//     registers and fewer resident warps (4 rows spilled: 8 bytes in the fp32 inference pass, 304 in fp64 stats);
//   3 64 threads, 2 rows, 1024-value tiles: 128 rows a block, twice the blocks of variant 0 (28x28 and smaller:
//     B·ceil(784 / 128) = 448 blocks at B = 64, against 256 for 132 SMs), half the barriers a pass.
// ptxas -v (nvcc 13.0, sm_90), registers of fp32 row pass with stats / without / column pass, fp64 in brackets,
// with their gating epilogues (gate_tile; the row pass of fp16 / bf16 x alike, but 32 in variant 1 without stats);
// no variant spills: 0: 94 / 56 / 56 (164 / 80 / 92); 1: 48 / 40 / 48 (96 / 48 / 64);
// 2: 127 / 64 / 64 (252 / 126 / 126); 3: 94 / 56 / 96 (164 / 80 / 142).
// All four give bit-identical results: a row's (column's) sums take the same terms in the same order whatever the
// variant (summation lane = position in its kChunk-term chunk, chunks at multiples of kChunk from 0, since every
// kTile is a multiple of kChunk; the thread that owns the row does not enter the arithmetic). Unmeasured: the first
// GPU run sweeps them (tools/gpu_check.sh step cubs_tiles).
#pragma once

#include <cstdint>

#include "ops/cuda/cubs_common.cuh"
#include "ops/cuda/cubs_spatial_pixels.cuh"

namespace recogfast {
namespace {

using namespace cubs_cuda;

template <int Threads, int Rows, int Tile>
struct SpatialTile {
  static constexpr int kThreads = Threads;  // threads a block in the two quadratic passes
  static constexpr int kRows = Rows;        // rows (columns) a thread
  static constexpr int kTile = Tile;        // staged j (i) values a tile
  static_assert(Tile % kChunk == 0, "a tile holds whole summation chunks (the variants' sums are then identical)");
  static_assert(Threads % kWarp == 0 && Threads <= 1024, "whole warps, at most 1024 threads a block");
};
using SpatialTile0 = SpatialTile<128, 2, 512>;
using SpatialTile1 = SpatialTile<256, 1, 512>;
using SpatialTile2 = SpatialTile<128, 3, 512>;
using SpatialTile3 = SpatialTile<64, 2, 1024>;

struct SpatialTileEnv {};
// The variant for activations of `dtype`: RECOGFAST_CUBS_SPATIAL_TILE, else the tuned table's, else 0.
inline int spatial_tile_variant(ScalarType dtype) {
  return gpu::env_choice_once<SpatialTileEnv>("recogfast::cubs_spatial", "RECOGFAST_CUBS_SPATIAL_TILE",
                                              {"0", "1", "2", "3"}, 0, gpu::tuned_value("cubs_spatial_tile", dtype));
}

// Calls f(Cfg{}) with the variant chosen for `dtype` (spatial_tile_variant).
template <typename F>
void with_spatial_tile(ScalarType dtype, F&& f) {
  switch (spatial_tile_variant(dtype)) {
    case 1: return f(SpatialTile1{});
    case 2: return f(SpatialTile2{});
    case 3: return f(SpatialTile3{});
    default: return f(SpatialTile0{});
  }
}

struct MinOp {
  template <typename T>
  __device__ T operator()(T x, T y) const {
    return min(x, y);
  }
};
struct MaxOp {
  template <typename T>
  __device__ T operator()(T x, T y) const {
    return max(x, y);
  }
};

// Block-wide reduction of a and b with fa and fb; every thread gets both results. sa, sb: shared arrays of
// one entry a warp.
template <typename A, typename B, typename FA, typename FB>
__device__ __forceinline__ void block_reduce2(A& a, B& b, FA fa, FB fb, A* sa, B* sb) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, warps = blockDim.x / kWarp;
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) {
    a = fa(a, __shfl_xor_sync(0xffffffffu, a, offset));
    b = fb(b, __shfl_xor_sync(0xffffffffu, b, offset));
  }
  if (lane == 0) {
    sa[warp] = a;
    sb[warp] = b;
  }
  __syncthreads();
  for (int w = 0; w < warps; ++w) {
    a = fa(a, sa[w]);
    b = fb(b, sb[w]);
  }
}

// {min k, max k, v at min k, v at max k} over a sample's pixels (first index on ties, as the CPU kernel): the
// rows' dominant columns (csrc/ops/cpu/rank_one_attention.h). Called by every thread of a block; every thread
// gets the result. Shared arrays of 32 entries.
template <typename acc_t>
__device__ __forceinline__ Quad<acc_t> sample_key_range(const acc_t* __restrict__ kb, const acc_t* __restrict__ vb,
                                                        int64_t P, acc_t* lo_s, acc_t* hi_s, long long* ilo_s,
                                                        long long* ihi_s) {
  acc_t lo = kb[0], hi = kb[0];
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    lo = min(lo, kb[p]);
    hi = max(hi, kb[p]);
  }
  block_reduce2(lo, hi, MinOp{}, MaxOp{}, lo_s, hi_s);
  // The first pixel holding each extreme.
  long long ilo = P, ihi = P;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    if (kb[p] == lo && p < ilo) ilo = p;
    if (kb[p] == hi && p < ihi) ihi = p;
  }
  __syncthreads();  // lo_s .. ihi_s are reused
  block_reduce2(ilo, ihi, MinOp{}, MinOp{}, ilo_s, ihi_s);
  return Quad<acc_t>{lo, hi, vb[ilo], vb[ihi]};
}

// kr[b] = the sample's key range; with vmean also vmean[b] = the mean of v over the sample's pixels (a double
// sum, as the CPU kernel's), the centre of the training forward's moments. One block a sample.
template <typename acc_t>
__global__ void cubs_spatial_key_range_kernel(const acc_t* __restrict__ k, const acc_t* __restrict__ v, int64_t P,
                                              Quad<acc_t>* __restrict__ kr, acc_t* __restrict__ vmean) {
  __shared__ acc_t lo_s[32], hi_s[32];
  __shared__ long long ilo_s[32], ihi_s[32];
  __shared__ double sum_s[32];
  const int64_t b = blockIdx.x;
  const Quad<acc_t> r = sample_key_range(k + b * P, v + b * P, P, lo_s, hi_s, ilo_s, ihi_s);
  if (vmean != nullptr) {
    double s = 0;
    for (int64_t p = threadIdx.x; p < P; p += blockDim.x) s += double(v[b * P + p]);
    s = block_sum(s, sum_s);
    if (threadIdx.x == 0) vmean[b] = acc_t(s / double(P));
  }
  if (threadIdx.x == 0) kr[b] = r;
}

// The row pass (Cfg: the variant). grid (ceil(P / (kThreads * kRows)), B). Writes gate = sigmoid(f) (unless gate is
// null), with x also y = x * gate over the block's pixels (its epilogue, gate_tile: C channels, NCHW or NHWC by cl,
// 16-byte accesses with vec; scalar_t is x's type, unused without x); with kStats
// (the training forward) also stats [3][B·P] = {f, 1 / l, cov}: cov = sum_j A_ij k_j (v_j - f_i)
// = (skv - svc sk / l) / l with the moments skv = sum e (k - k*)(v - vc), svc = sum e (v - vc) about the sample's
// mean vc of v (vmean), as the CPU kernel (rank_one_attention.h; issue 25: about v* the cancellation of
// skv - sv sk / l took the rounding of the fp32 sums up to 84x the reference's error in grad bq). Sums relative to
// the row's dominant column (k*, v*): f = v* + sum e (v - v*) / l, free of cancellation when the softmax
// saturates; l and sv are formed the same way with and without kStats (the training forward's y is the inference
// forward's).
template <typename scalar_t, typename acc_t, bool kStats, class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads) cubs_spatial_row_kernel(
    const acc_t* __restrict__ qkv, const Quad<acc_t>* __restrict__ kr, const acc_t* __restrict__ vmean, int64_t B,
    int64_t P, acc_t* __restrict__ gate, acc_t* __restrict__ stats, const scalar_t* __restrict__ x,
    scalar_t* __restrict__ y, int64_t C, bool cl, bool vec) {
  constexpr int kThreads = Cfg::kThreads, kRows = Cfg::kRows, kTile = Cfg::kTile;
  __shared__ Pair<acc_t> kv[kTile];
  __shared__ acc_t gs[kThreads * kRows];  // the block's gates, for the epilogue
  const int64_t BP = B * P, b = blockIdx.y;
  const acc_t* q = qkv + b * P;
  const acc_t* k = qkv + BP + b * P;
  const acc_t* v = qkv + 2 * BP + b * P;
  const Quad<acc_t> range = kr[b];
  const acc_t vc = kStats ? vmean[b] : acc_t(0);
  const int64_t row0 = int64_t(blockIdx.x) * kThreads * kRows + threadIdx.x;
  acc_t qs[kRows], kst[kRows], vst[kRows];
  CompSum<acc_t> l[kRows], sv[kRows], sk[kRows], skv[kRows], svc[kRows];
#pragma unroll
  for (int t = 0; t < kRows; ++t) {
    const int64_t i = row0 + t * kThreads;
    const acc_t qi = i < P ? q[i] : acc_t(0);
    qs[t] = qi * log2e<acc_t>();
    kst[t] = qi >= acc_t(0) ? range.b : range.a;
    vst[t] = qi >= acc_t(0) ? range.d : range.c;
    l[t] = sv[t] = sk[t] = skv[t] = svc[t] = CompSum<acc_t>{0, 0};
  }
  for (int64_t j0 = 0; j0 < P; j0 += kTile) {
    const int n = static_cast<int>(min(int64_t(kTile), P - j0));
    __syncthreads();
    for (int j = threadIdx.x; j < n; j += kThreads) kv[j] = Pair<acc_t>{k[j0 + j], v[j0 + j]};
    __syncthreads();
    // Blocked sums (cubs_common.cuh): kLanes partial sums a chunk of kChunk terms (kTile is a multiple),
    // combined pairwise and added to the compensated totals.
    for (int c0 = 0; c0 < n; c0 += kChunk) {
      const int c1 = min(n, c0 + kChunk);
      acc_t pl[kRows][kLanes] = {}, psv[kRows][kLanes] = {}, psk[kRows][kLanes] = {}, pskv[kRows][kLanes] = {};
      acc_t psvc[kRows][kLanes] = {};
      auto term = [&](int u, int j) {
        const Pair<acc_t> e_kv = kv[j];
#pragma unroll
        for (int t = 0; t < kRows; ++t) {
          const acc_t dk = e_kv.a - kst[t], dv = e_kv.b - vst[t];
          const acc_t e = ex2(qs[t] * dk);  // q (k - k*) log2e <= 0: no cancellation of q k against q k*
          pl[t][u] += e;
          psv[t][u] += e * dv;
          if constexpr (kStats) {
            const acc_t ek = e * dk, dvc = e_kv.b - vc;
            psk[t][u] += ek;
            pskv[t][u] += ek * dvc;
            psvc[t][u] += e * dvc;
          }
        }
      };
      int j = c0;
      for (; j + kLanes <= c1; j += kLanes) {
#pragma unroll
        for (int u = 0; u < kLanes; ++u) term(u, j + u);
      }
#pragma unroll
      for (int u = 0; u < kLanes; ++u)
        if (j + u < c1) term(u, j + u);
#pragma unroll
      for (int t = 0; t < kRows; ++t) {
        l[t].add(lanes_sum(pl[t]));
        sv[t].add(lanes_sum(psv[t]));
        if constexpr (kStats) {
          sk[t].add(lanes_sum(psk[t]));
          skv[t].add(lanes_sum(pskv[t]));
          svc[t].add(lanes_sum(psvc[t]));
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kRows; ++t) {
    const int64_t i = row0 + t * kThreads;
    if (i >= P) continue;
    // The row's outputs in double, from the compensated sums (hi + lo exact in double), as the CPU kernel
    // (csrc/ops/cpu/cubs_spatial_kernel.cpp): in fp32 the cancelling cov (skv - svc sk / l) took several roundings.
    // Once a row: a few fp64 operations against P ex2.
    const double lt = double(l[t].hi) + double(l[t].lo), inv_l = 1.0 / lt;
    const double svt = double(sv[t].hi) + double(sv[t].lo);
    const double f = double(vst[t]) + svt * inv_l;
    const int64_t r = b * P + i;
    const acc_t g = acc_t(sigmoid(f));
    gs[threadIdx.x + t * kThreads] = g;
    if (gate != nullptr) gate[r] = g;
    if constexpr (kStats) {
      const double skt = double(sk[t].hi) + double(sk[t].lo), skvt = double(skv[t].hi) + double(skv[t].lo);
      const double svct = double(svc[t].hi) + double(svc[t].lo);
      stats[r] = acc_t(f);
      stats[BP + r] = acc_t(inv_l);
      stats[2 * BP + r] = acc_t((skvt - svct * skt * inv_l) * inv_l);
    }
  }
  if (x == nullptr) return;  // the backward's recomputation of the statistics: no y
  // Epilogue, the forward's y = x * gate over the block's kThreads·kRows pixels and all channels: one launch and
  // one read of the gates fewer than a separate pass, with accesses as coalesced (gate_tile).
  __syncthreads();
  gate_tile<scalar_t, scalar_t, acc_t, false>(x, y, gs, kThreads * kRows, nullptr, nullptr, nullptr, C, P, cl, vec);
}

// The backward's per-row factors from the saved statistics, one block a sample (O(P) work, after the projections
// of the backward): the key range (for the rows' dominant keys), then per row i with g = sigmoid(f_i),
// df = d_i g (1 - g): gate, dq = df cov_i and the column pass's pack = {q log2e, k*, df / l, df q / l}, fr = f.
// In double per row, as the CPU kernel.
template <typename acc_t>
__global__ void cubs_spatial_prep_kernel(const acc_t* __restrict__ qkv, const acc_t* __restrict__ stats,
                                         const acc_t* __restrict__ d, int64_t B, int64_t P, acc_t* __restrict__ gate,
                                         acc_t* __restrict__ dq, Quad<acc_t>* __restrict__ pack,
                                         acc_t* __restrict__ fr) {
  __shared__ acc_t lo_s[32], hi_s[32];
  __shared__ long long ilo_s[32], ihi_s[32];
  const int64_t BP = B * P, b = blockIdx.x;
  const acc_t* q = qkv + b * P;
  const Quad<acc_t> range = sample_key_range(qkv + BP + b * P, qkv + 2 * BP + b * P, P, lo_s, hi_s, ilo_s, ihi_s);
  for (int64_t i = threadIdx.x; i < P; i += blockDim.x) {
    const int64_t r = b * P + i;
    const acc_t qi = q[i];
    const double f = double(stats[r]), inv_l = double(stats[BP + r]);
    const double g = sigmoid(f);
    const double df = double(d[r]) * g * (1.0 - g);
    gate[r] = acc_t(g);
    dq[r] = acc_t(df * double(stats[2 * BP + r]));
    const double fa = df * inv_l, fb = fa * double(qi);
    pack[r] = Quad<acc_t>{qi * log2e<acc_t>(), qi >= acc_t(0) ? range.b : range.a, acc_t(fa), acc_t(fb)};
    fr[r] = stats[r];
  }
}

// The column pass of the backward: for column j, dv_j = sum_i e_ij fa_i and
// dk_j = sum_i e_ij fb_i (v_j - f_i) (the difference per pair: no cancellation when v_j ~ f_i),
// e_ij = 2^(q_i log2e (k_j - k*_i)). Epilogue: grad_x = grad_y gate + wq dq + wk dk + wv dv over the block's
// columns (pixels) and all channels (gate_tile; gate and dq from the prep kernel; grad_y's and the weights' types
// by xkind and wfloat, with_x_type: one column pass per accumulation type and variant).
template <typename acc_t, class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads) cubs_spatial_col_kernel(
    const acc_t* __restrict__ qkv, const Quad<acc_t>* __restrict__ pack, const acc_t* __restrict__ fr, int64_t B,
    int64_t P, acc_t* __restrict__ dk, acc_t* __restrict__ dv, const acc_t* __restrict__ gate,
    const acc_t* __restrict__ dq, const void* __restrict__ gy, void* __restrict__ gx, const void* wq, const void* wk,
    const void* wv, int xkind, bool wfloat, int64_t C, bool cl, bool vec) {
  constexpr int kThreads = Cfg::kThreads, kRows = Cfg::kRows, kTile = Cfg::kTile;
  __shared__ Quad<acc_t> rows[kTile];
  __shared__ acc_t rows_f[kTile];
  __shared__ acc_t fs[4][kThreads * kRows];  // the block's gate, dq, dk, dv, for the epilogue
  const int64_t BP = B * P, b = blockIdx.y;
  const acc_t* k = qkv + BP + b * P;
  const acc_t* v = qkv + 2 * BP + b * P;
  const Quad<acc_t>* pk = pack + b * P;
  const acc_t* pf = fr + b * P;
  const int64_t col0 = int64_t(blockIdx.x) * kThreads * kRows + threadIdx.x;
  acc_t ks[kRows], vj[kRows];
  CompSum<acc_t> sa[kRows], sb[kRows];
#pragma unroll
  for (int t = 0; t < kRows; ++t) {
    const int64_t j = col0 + t * kThreads;
    ks[t] = j < P ? k[j] : acc_t(0);
    vj[t] = j < P ? v[j] : acc_t(0);
    sa[t] = sb[t] = CompSum<acc_t>{0, 0};
  }
  for (int64_t i0 = 0; i0 < P; i0 += kTile) {
    const int n = static_cast<int>(min(int64_t(kTile), P - i0));
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += kThreads) {
      rows[i] = pk[i0 + i];
      rows_f[i] = pf[i0 + i];
    }
    __syncthreads();
    for (int c0 = 0; c0 < n; c0 += kChunk) {  // blocked sums, as in the row pass
      const int c1 = min(n, c0 + kChunk);
      acc_t pa[kRows][kLanes] = {}, pb[kRows][kLanes] = {};
      auto term = [&](int u, int i) {
        const Quad<acc_t> r = rows[i];
        const acc_t fi = rows_f[i];
#pragma unroll
        for (int t = 0; t < kRows; ++t) {
          const acc_t e = ex2(r.a * (ks[t] - r.b));
          pa[t][u] += e * r.c;
          pb[t][u] += e * r.d * (vj[t] - fi);
        }
      };
      int i = c0;
      for (; i + kLanes <= c1; i += kLanes) {
#pragma unroll
        for (int u = 0; u < kLanes; ++u) term(u, i + u);
      }
#pragma unroll
      for (int u = 0; u < kLanes; ++u)
        if (i + u < c1) term(u, i + u);
#pragma unroll
      for (int t = 0; t < kRows; ++t) {
        sa[t].add(lanes_sum(pa[t]));
        sb[t].add(lanes_sum(pb[t]));
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kRows; ++t) {
    const int64_t j = col0 + t * kThreads;
    if (j >= P) continue;
    const int u = threadIdx.x + t * kThreads;
    fs[0][u] = gate[b * P + j];
    fs[1][u] = dq[b * P + j];
    dv[b * P + j] = fs[3][u] = sa[t].value();
    dk[b * P + j] = fs[2][u] = sb[t].value();
  }
  __syncthreads();
  with_x_type<acc_t>(xkind, wfloat, [&](auto x_tag, auto w_tag) {
    using scalar_t = std::remove_pointer_t<decltype(x_tag)>;
    using w_t = std::remove_pointer_t<decltype(w_tag)>;
    gate_tile<scalar_t, w_t, acc_t, true>(static_cast<const scalar_t*>(gy), static_cast<scalar_t*>(gx), &fs[0][0],
                                          kThreads * kRows, static_cast<const w_t*>(wq), static_cast<const w_t*>(wk),
                                          static_cast<const w_t*>(wv), C, P, cl, vec);
  });
}

}  // namespace
}  // namespace recogfast
