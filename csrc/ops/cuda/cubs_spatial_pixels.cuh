// The per-pixel kernels of CUBS Block 2 on CUDA (cubs_spatial_kernel.cu, its only includer, holds the launches):
// the 1×1 projections q, k, v (and d = sum_c grad_y x), the gating y = x * gate (and grad_x), and the weight
// gradients' fixed-order sums, NCHW and NHWC. Internal linkage.
#pragma once

#include <cstdint>
#include <type_traits>

#include "ops/cuda/cubs_common.cuh"

namespace recogfast {
namespace {

using namespace cubs_cuda;

// The three 1×1 projections' weights ([C] each) and biases ([1] each), passed by value.
template <typename w_t>
struct Weights {
  const w_t* w[3];
  const w_t* b[3];
};

// The projections' sums (issue 25, as the CPU kernel's project()): fp32 partial sums of kChannelBlock channels
// added in double, the bias added in double. One serial fp32 sum over C = 64-512 channels put the rounding of q,
// k, v and d, and so of dq, at several times the fp32 reference's. For double (acc_t) the same in double.
constexpr int kChannelBlock = 16;

// NCHW projections: a thread a pixel, channels in the loop (reads coalesced along pixels).
// qkv [3][B * P]; with kGrad also d[b * P + p] = sum_c gy x.
template <typename scalar_t, typename w_t, typename acc_t, bool kGrad>
__global__ void cubs_spatial_project_nchw(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gy,
                                          const Weights<w_t> wt, int64_t B, int64_t C, int64_t P,
                                          acc_t* __restrict__ qkv, acc_t* __restrict__ d) {
  const int64_t BP = B * P;
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < BP; r += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = r / P, p = r - b * P;
    const scalar_t* xp = x + b * C * P + p;
    double aq = 0, ak = 0, av = 0, ad = 0;
    for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
      const int64_t c1 = min(C, c0 + kChannelBlock);
      acc_t sq = 0, sk = 0, sv = 0, sd = 0;
      for (int64_t c = c0; c < c1; ++c) {
        const acc_t xv = static_cast<acc_t>(xp[c * P]);
        sq += static_cast<acc_t>(wt.w[0][c]) * xv;
        sk += static_cast<acc_t>(wt.w[1][c]) * xv;
        sv += static_cast<acc_t>(wt.w[2][c]) * xv;
        if constexpr (kGrad) sd += static_cast<acc_t>(gy[b * C * P + c * P + p]) * xv;
      }
      aq += double(sq);
      ak += double(sk);
      av += double(sv);
      if constexpr (kGrad) ad += double(sd);
    }
    qkv[r] = acc_t(aq + double(static_cast<acc_t>(wt.b[0][0])));
    qkv[BP + r] = acc_t(ak + double(static_cast<acc_t>(wt.b[1][0])));
    qkv[2 * BP + r] = acc_t(av + double(static_cast<acc_t>(wt.b[2][0])));
    if constexpr (kGrad) d[r] = acc_t(ad);
  }
}

// NHWC projections: a warp a pixel, lanes along the channels (coalesced); each lane's channels in fp32 blocks of
// kChannelBlock added in double, the lanes' sums added in double.
template <typename scalar_t, typename w_t, typename acc_t, bool kGrad>
__global__ void cubs_spatial_project_nhwc(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gy,
                                          const Weights<w_t> wt, int64_t B, int64_t C, int64_t P,
                                          acc_t* __restrict__ qkv, acc_t* __restrict__ d) {
  const int64_t BP = B * P;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / kWarp;
  for (int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kWarp; r < BP; r += warps) {
    const scalar_t* xr = x + r * C;
    double aq = 0, ak = 0, av = 0, ad = 0;
    acc_t sq = 0, sk = 0, sv = 0, sd = 0;
    int n = 0;
    for (int64_t c = lane; c < C; c += kWarp) {
      const acc_t xv = static_cast<acc_t>(xr[c]);
      sq += static_cast<acc_t>(wt.w[0][c]) * xv;
      sk += static_cast<acc_t>(wt.w[1][c]) * xv;
      sv += static_cast<acc_t>(wt.w[2][c]) * xv;
      if constexpr (kGrad) sd += static_cast<acc_t>(gy[r * C + c]) * xv;
      if (++n == kChannelBlock) {
        aq += double(sq);
        ak += double(sk);
        av += double(sv);
        ad += double(sd);
        sq = sk = sv = sd = 0;
        n = 0;
      }
    }
    aq = warp_sum(aq + double(sq));
    ak = warp_sum(ak + double(sk));
    av = warp_sum(av + double(sv));
    if constexpr (kGrad) ad = warp_sum(ad + double(sd));
    if (lane == 0) {
      qkv[r] = acc_t(aq + double(static_cast<acc_t>(wt.b[0][0])));
      qkv[BP + r] = acc_t(ak + double(static_cast<acc_t>(wt.b[1][0])));
      qkv[2 * BP + r] = acc_t(av + double(static_cast<acc_t>(wt.b[2][0])));
      if constexpr (kGrad) d[r] = acc_t(ad);
    }
  }
}

// The gating of one pixel tile, the epilogue of a quadratic pass (issue 25 part 2: the forward's row pass and the
// backward's column pass scale their own pixels, one launch fewer each way, no separate read of the gate):
// out = in * gate; with kGrad (grad_x from grad_y) out = in * gate + wq[c] dq + wk[c] dk + wv[c] dv, the
// arithmetic of the former cubs_spatial_apply_kernel term for term (same roundings: the results are those of the
// separate pass). The tile is the block's pixels [i0, i0 + n), i0 = blockIdx.x · tile, of sample blockIdx.y, all
// C channels; its factors are in shared memory, fs[k · tile + p] for p < n (k = 0 gate; kGrad: 1 dq, 2 dk,
// 3 dv), written before a __syncthreads by the calling block, which runs this whole.
template <typename acc_t, bool kGrad>
__device__ __forceinline__ acc_t gated(acc_t in, const acc_t* fs, int tile, int p, acc_t w0, acc_t w1, acc_t w2) {
  acc_t r = in * fs[p];
  if constexpr (kGrad) r += w0 * fs[tile + p] + w1 * fs[2 * tile + p] + w2 * fs[3 * tile + p];
  return r;
}

// NHWC: the tile is one run of n·C elements, moved in units of kVec elements of one pixel (a 16-byte access when
// C is a multiple of kVec and both pointers are 16-byte aligned: the launcher's vec; else kVec = 1). Unit u is
// pixel u / cv, channels from (u % cv) kVec; each thread steps by blockDim.x units and tracks (pixel, channel
// unit) by additions: no division a unit (the former apply kernel's per-element e / C) and 64-bit offsets
// throughout (no int32 / int64 choice).
template <typename scalar_t, typename w_t, typename acc_t, bool kGrad, int kVec>
__device__ __forceinline__ void gate_run_nhwc(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                              const acc_t* fs, int tile, const w_t* wq, const w_t* wk,
                                              const w_t* wv, int n, int64_t C) {
  using Vec = gpu::VecT<scalar_t, kVec>;
  const int64_t cv = C / kVec, units = n * cv, step = blockDim.x;
  const int64_t dp = step / cv, dc = step - dp * cv;
  int64_t p = threadIdx.x / cv, c = threadIdx.x - p * cv;
  for (int64_t u = threadIdx.x; u < units; u += step) {
    Vec v = reinterpret_cast<const Vec*>(in)[u];
#pragma unroll
    for (int t = 0; t < kVec; ++t) {
      acc_t w0 = 0, w1 = 0, w2 = 0;
      if constexpr (kGrad) {
        const int64_t ch = c * kVec + t;
        w0 = static_cast<acc_t>(wq[ch]);
        w1 = static_cast<acc_t>(wk[ch]);
        w2 = static_cast<acc_t>(wv[ch]);
      }
      v.v[t] = static_cast<scalar_t>(gated<acc_t, kGrad>(static_cast<acc_t>(v.v[t]), fs, tile, int(p), w0, w1, w2));
    }
    reinterpret_cast<Vec*>(out)[u] = v;
    p += dp;
    c += dc;
    if (c >= cv) {
      c -= cv;
      ++p;
    }
  }
}

// The whole tile, by every thread of the block. NCHW: per channel the tile's pixels are contiguous (one run of n,
// the channel's weights read once); NHWC: gate_run_nhwc. Not inlined: inlined, its code raised the registers of
// the quadratic loop before it (fp64 column pass of variant 1: 48 registers and 80 bytes of spills, against 64 and
// none); called, it costs one call a block (few arguments: they are registers of the call).
template <typename scalar_t, typename w_t, typename acc_t, bool kGrad>
__device__ __attribute__((noinline)) void gate_tile(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                                    const acc_t* fs, int tile, const w_t* wq, const w_t* wk,
                                                    const w_t* wv, int64_t C, int64_t P, bool cl, bool vec) {
  const int64_t b = blockIdx.y, i0 = int64_t(blockIdx.x) * tile;
  const int n = static_cast<int>(min(int64_t(tile), P - i0));
  if (!cl) {
    const int64_t base = b * C * P + i0;
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* ic = in + base + c * P;
      scalar_t* oc = out + base + c * P;
      acc_t w0 = 0, w1 = 0, w2 = 0;
      if constexpr (kGrad) {
        w0 = static_cast<acc_t>(wq[c]);
        w1 = static_cast<acc_t>(wk[c]);
        w2 = static_cast<acc_t>(wv[c]);
      }
      for (int p = threadIdx.x; p < n; p += blockDim.x)
        oc[p] = static_cast<scalar_t>(gated<acc_t, kGrad>(static_cast<acc_t>(ic[p]), fs, tile, p, w0, w1, w2));
    }
    return;
  }
  const int64_t base = (b * P + i0) * C;
  if (vec) {
    gate_run_nhwc<scalar_t, w_t, acc_t, kGrad, 16 / sizeof(scalar_t)>(in + base, out + base, fs, tile, wq, wk, wv, n,
                                                                      C);
  } else {
    gate_run_nhwc<scalar_t, w_t, acc_t, kGrad, 1>(in + base, out + base, fs, tile, wq, wk, wv, n, C);
  }
}

// grad_y's element type and the weights' chosen at run time, for the column pass, compiled per accumulation type
// only (its epilogue is its only code that reads them; compiled per (x, w) type pair it took 24 kernels instead
// of 8): kind 0 x and weights acc_t; 1 / 2 Half / BFloat16 x (acc_t float) with weights of x's type, or float
// where wfloat. Calls f(x type*, weight type*) with null pointers as tags.
inline int x_kind(ScalarType t) { return t == kHalf ? 1 : t == kBFloat16 ? 2 : 0; }

template <typename acc_t, typename F>
__device__ __forceinline__ void with_x_type(int kind, bool wfloat, F&& f) {
  if constexpr (std::is_same_v<acc_t, float>) {
    if (kind == 1) {
      if (wfloat) return f(static_cast<Half*>(nullptr), static_cast<float*>(nullptr));
      return f(static_cast<Half*>(nullptr), static_cast<Half*>(nullptr));
    }
    if (kind == 2) {
      if (wfloat) return f(static_cast<BFloat16*>(nullptr), static_cast<float*>(nullptr));
      return f(static_cast<BFloat16*>(nullptr), static_cast<BFloat16*>(nullptr));
    }
  }
  f(static_cast<acc_t*>(nullptr), static_cast<acc_t*>(nullptr));
}

// vec for gate_tile: NHWC runs start at multiples of C elements, so C a multiple of the 16-byte vector and
// 16-byte aligned tensors make every run's accesses whole vectors.
template <typename scalar_t>
inline bool gate_tile_vec(int64_t C, const void* in, const void* out) {
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return C % (16 / int64_t(sizeof(scalar_t))) == 0 && aligned(in) && aligned(out);
}

// Weight-gradient partial sums, NCHW: a warp per (b, c) row; part[b][i][c] = sum_p dqkv[i][b, p] x[b, c, p].
template <typename scalar_t, typename acc_t>
__global__ void cubs_spatial_wgrad_nchw(const scalar_t* __restrict__ x, const acc_t* __restrict__ dqkv, int64_t B,
                                        int64_t C, int64_t P, acc_t* __restrict__ part) {
  const int64_t BP = B * P;
  const int lane = threadIdx.x % kWarp;
  const int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kWarp;
  if (row >= B * C) return;
  const int64_t b = row / C, c = row - b * C;
  const scalar_t* xr = x + row * P;
  acc_t s0 = 0, s1 = 0, s2 = 0;
  for (int64_t p = lane; p < P; p += kWarp) {
    const acc_t xv = static_cast<acc_t>(xr[p]);
    const int64_t bp = b * P + p;
    s0 += dqkv[bp] * xv;
    s1 += dqkv[BP + bp] * xv;
    s2 += dqkv[2 * BP + bp] * xv;
  }
  s0 = warp_sum(s0);
  s1 = warp_sum(s1);
  s2 = warp_sum(s2);
  if (lane == 0) {
    part[(b * 3 + 0) * C + c] = s0;
    part[(b * 3 + 1) * C + c] = s1;
    part[(b * 3 + 2) * C + c] = s2;
  }
}

// NHWC: block (32 channels, 8 pixel lanes) over (sample, channel block) x pixel chunk;
// part[(b * chunks + chunk)][i][c].
template <typename scalar_t, typename acc_t>
__global__ void cubs_spatial_wgrad_nhwc(const scalar_t* __restrict__ x, const acc_t* __restrict__ dqkv, int64_t B,
                                        int64_t C, int64_t P, int64_t per_chunk, acc_t* __restrict__ part) {
  __shared__ acc_t red[3][8][kWarp];
  const int64_t BP = B * P;
  const int64_t cblocks = ceil_div(C, kWarp);
  const int64_t b = blockIdx.x / cblocks, c = (blockIdx.x % cblocks) * kWarp + threadIdx.x;
  const int64_t chunk = blockIdx.y, chunks = gridDim.y;
  const int64_t p0 = chunk * per_chunk, p1 = min(P, p0 + per_chunk);
  acc_t s[3] = {0, 0, 0};
  if (c < C) {
    for (int64_t p = p0 + threadIdx.y; p < p1; p += blockDim.y) {
      const acc_t xv = static_cast<acc_t>(x[(b * P + p) * C + c]);
      const int64_t bp = b * P + p;
      s[0] += dqkv[bp] * xv;
      s[1] += dqkv[BP + bp] * xv;
      s[2] += dqkv[2 * BP + bp] * xv;
    }
  }
  for (int i = 0; i < 3; ++i) red[i][threadIdx.y][threadIdx.x] = s[i];
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int i = 0; i < 3; ++i) {
      acc_t a = 0;
      for (int y = 0; y < int(blockDim.y); ++y) a += red[i][y][threadIdx.x];
      part[((b * chunks + chunk) * 3 + i) * C + c] = a;
    }
  }
}

// One block an output: o < 3C sums part[t][o] over the tasks; o >= 3C sums dqkv[o - 3C] over B·P (bias), in
// double (the sums of dq, dk, dv over the pixels cancel: sum |dq| was 470 |grad bq| in one 4x64x7x7 draw; as the
// CPU kernel).
template <typename w_t, typename acc_t>
__global__ void cubs_spatial_wgrad_reduce(const acc_t* __restrict__ part, int64_t tasks, const acc_t* __restrict__ dqkv,
                                          int64_t BP, int64_t C, w_t* __restrict__ gwq, w_t* __restrict__ gwk,
                                          w_t* __restrict__ gwv, w_t* __restrict__ gbq, w_t* __restrict__ gbk,
                                          w_t* __restrict__ gbv) {
  __shared__ acc_t red[32];
  __shared__ double red_d[32];
  const int64_t o = blockIdx.x;
  acc_t s = 0;
  if (o < 3 * C) {
    for (int64_t t = threadIdx.x; t < tasks; t += blockDim.x) s += part[t * 3 * C + o];
    s = block_sum(s, red);
  } else {
    const acc_t* src = dqkv + (o - 3 * C) * BP;
    double sd = 0;
    for (int64_t t = threadIdx.x; t < BP; t += blockDim.x) sd += double(src[t]);
    s = acc_t(block_sum(sd, red_d));
  }
  if (threadIdx.x != 0) return;
  w_t* gw[3] = {gwq, gwk, gwv};
  w_t* gb[3] = {gbq, gbk, gbv};
  if (o < 3 * C) {
    gw[o / C][o % C] = static_cast<w_t>(s);
  } else {
    gb[o - 3 * C][0] = static_cast<w_t>(s);
  }
}

}  // namespace
}  // namespace recogfast
