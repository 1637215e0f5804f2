// CUBS Block 2 on CUDA, forward and backward, NCHW and NHWC, fp32/fp64/fp16/bf16 with fp32 (fp64 for
// double) accumulation and no [B, HW, HW] buffer: scratch is a few [B, HW] vectors.
//
// Forward:  1. q, k, v per pixel                      (cubs_spatial_project_*)
//           2. min k, max k (and v there) per sample   (cubs_spatial_key_range_kernel; training: mean of v)
//           3. per row i: l_i, f_i in one pass over j  (cubs_spatial_row_kernel), gate = sigmoid(f); the
//              training forward (_cubs_spatial_forward_train) also forms sum e k, sum e k v, sum e v about the
//              mean of v and saves stats = {f, 1 / l, cov} per row
//           4. y = x * gate                            (cubs_spatial_apply_kernel)
// Backward (from the saved stats): 1. q, k, v and d_i = sum_c grad_y x; 2. the key range and per row gate, dq and
//           the column pass's factors (cubs_spatial_prep_kernel, O(B·HW)); 3. a column pass over i -> dk, dv
//           (cubs_spatial_col_kernel); 4. grad_x; 5. weight gradients (fixed-order sums).
// Kernels: 4 a forward, 6 a backward (project, prep, col, apply, wgrad, reduce), two B·HW² passes a step.
// _cubs_spatial_backward (no stats: the registered op's autograd) runs the key range and the row pass with stats
// first (8 kernels, three passes a step).
//
// The two B·HW² passes: each thread owns kRows rows (or columns); the block stages tiles of the other
// side's values in shared memory, read as broadcasts (every thread reads the same address), so the
// inner loop per pair is one FFMA, one MUFU.EX2 and two or three FFMA/FADD: it is bound by the
// exponential rate (16 MUFU ops/clk/SM on sm_90), the floor the benchmark reports. Those passes (steps 2-3 of
// the forward, 2-3 of the backward) are in cubs_spatial_passes.cuh; this file holds the rest and the launches.
// The weights are w_t: x's type, or float for a 16-bit x (mixed, read without a cast). Only the projections and
// the backward's grad_x pass read both x and weights; they are the kernels compiled once more per 16-bit type.

#include <algorithm>

#include "ops/cubs_spatial.h"
#include "ops/cuda/cubs_common.cuh"
#include "ops/cuda/cubs_spatial_passes.cuh"

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

// y = x * gate[b, p]; with kGrad: grad_x = grad_y * gate + wq[c] dq + wk[c] dk + wv[c] dv.
template <typename scalar_t, typename w_t, typename acc_t, typename index_t, bool kChannelsLast, bool kGrad>
__global__ void cubs_spatial_apply_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                          const acc_t* __restrict__ gate, const acc_t* __restrict__ dqkv,
                                          const Weights<w_t> wt, index_t numel, index_t C, index_t P,
                                          index_t BP) {
  for (index_t e = blockIdx.x * blockDim.x + threadIdx.x; e < numel; e += gridDim.x * blockDim.x) {
    index_t bp, c;
    if constexpr (kChannelsLast) {
      bp = e / C;
      c = e - bp * C;
    } else {
      const index_t bc = e / P;
      const index_t b = bc / C;
      c = bc - b * C;
      bp = b * P + (e - bc * P);
    }
    acc_t r = static_cast<acc_t>(in[e]) * gate[bp];
    if constexpr (kGrad) {
      r += static_cast<acc_t>(wt.w[0][c]) * dqkv[bp] + static_cast<acc_t>(wt.w[1][c]) * dqkv[BP + bp] +
           static_cast<acc_t>(wt.w[2][c]) * dqkv[2 * BP + bp];
    }
    out[e] = static_cast<scalar_t>(r);
  }
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


struct Launch {
  int64_t B, C, P;
  bool cl;
  cudaStream_t stream;
};

dim3 quad_grid(const Launch& L) { return dim3(static_cast<unsigned>(ceil_div(L.P, kThreads * kRows)), L.B); }

template <typename scalar_t, typename w_t, typename acc_t, bool kGrad>
void launch_project(const Launch& L, const scalar_t* x, const scalar_t* gy, const Weights<w_t>& wt, acc_t* qkv,
                    acc_t* d) {
  constexpr int threads = 256;
  if (L.cl) {
    cubs_spatial_project_nhwc<scalar_t, w_t, acc_t, kGrad>
        <<<grid_for(L.B * L.P * kWarp, threads), threads, 0, L.stream>>>(x, gy, wt, L.B, L.C, L.P, qkv, d);
  } else {
    cubs_spatial_project_nchw<scalar_t, w_t, acc_t, kGrad>
        <<<grid_for(L.B * L.P, threads), threads, 0, L.stream>>>(x, gy, wt, L.B, L.C, L.P, qkv, d);
  }
  RF_CUDA_KERNEL_LAUNCH_CHECK();
}

// The key range of each sample, then the row pass: gate = sigmoid(f); with stats (training) also the mean of v
// and the saved statistics. vmean: B scratch values (stats only).
template <typename acc_t>
void launch_rows(const Launch& L, const acc_t* qkv, Quad<acc_t>* kr, acc_t* vmean, acc_t* gate, acc_t* stats) {
  const int64_t BP = L.B * L.P;
  cubs_spatial_key_range_kernel<acc_t><<<L.B, 256, 0, L.stream>>>(qkv + BP, qkv + 2 * BP, L.P, kr,
                                                                  stats ? vmean : nullptr);
  RF_CUDA_KERNEL_LAUNCH_CHECK();
  if (stats) {
    cubs_spatial_row_kernel<acc_t, true>
        <<<quad_grid(L), kThreads, 0, L.stream>>>(qkv, kr, vmean, L.B, L.P, gate, stats);
  } else {
    cubs_spatial_row_kernel<acc_t, false>
        <<<quad_grid(L), kThreads, 0, L.stream>>>(qkv, kr, nullptr, L.B, L.P, gate, nullptr);
  }
  RF_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename w_t, typename acc_t, bool kGrad>
void launch_apply(const Launch& L, const scalar_t* in, scalar_t* out, const acc_t* gate, const acc_t* dqkv,
                  const Weights<w_t>& wt) {
  constexpr int threads = 256;
  const int64_t numel = L.B * L.C * L.P;
  const int64_t blocks = grid_for(numel, threads);
  auto go = [&](auto index_tag) {
    using index_t = decltype(index_tag);
    auto kernel = L.cl ? cubs_spatial_apply_kernel<scalar_t, w_t, acc_t, index_t, true, kGrad>
                       : cubs_spatial_apply_kernel<scalar_t, w_t, acc_t, index_t, false, kGrad>;
    kernel<<<blocks, threads, 0, L.stream>>>(in, out, gate, dqkv, wt, index_t(numel), index_t(L.C), index_t(L.P),
                                             index_t(L.B * L.P));
    RF_CUDA_KERNEL_LAUNCH_CHECK();
  };
  // The largest index formed: e < numel, and with kGrad dqkv[2 * BP + bp] < 3 * B * P, which exceeds numel
  // when C <= 2.
  const int64_t max_index = kGrad ? std::max(numel, 3 * L.B * L.P) : numel;
  if (fits_int32(max_index, blocks * threads)) {
    go(int32_t{});
  } else {
    go(int64_t{});
  }
}

void check_launch(const Launch& L) {
  RF_CHECK(L.B <= 65535, "recogfast::cubs_spatial: the CUDA kernel takes at most 65535 samples, x has ", L.B);
}

// The forward; with stats (the training forward) it also saves the per-row statistics.
Tensor spatial_forward_cuda(const char* op, const Tensor& x_, const Tensor& wq, const Tensor& bq, const Tensor& wk,
                            const Tensor& bk, const Tensor& wv, const Tensor& bv, Tensor* stats) {
  detail::check_cubs_spatial_args(x_, wq, bq, wk, bk, wv, bv);
  RF_CHECK(x_.is_cuda(), op, ": x must be a CUDA tensor for the CUDA kernel, got ", device_str(x_.device()));
  const gpu::DeviceGuard guard(x_);
  const auto act = checks::activation(op, x_);
  const Tensor& x = act.x;
  const bool cl = act.channels_last;
  Tensor y = empty_like(x, checks::layout_of(cl));
  if (stats) {
    const std::initializer_list<int64_t> shape = {3, x.size(0), x.size(2) * x.size(3)};
    *stats = x.numel() == 0 ? zeros_as(x, shape, detail::cubs_spatial_stats_dtype(x))
                            : empty_as(x, shape, detail::cubs_spatial_stats_dtype(x));
  }
  if (x.numel() == 0) return y;
  const Launch L{x.size(0), x.size(1), x.size(2) * x.size(3), cl, gpu::current_stream(x_)};
  const ScalarType acc_type = acc_dtype(x.scalar_type());
  check_launch(L);
  const Tensor wc[6] = {as_contiguous(wq), bq, as_contiguous(wk), bk, as_contiguous(wv), bv};
  RF_DISPATCH_GATE(x.scalar_type(), wq.scalar_type(), "cubs_spatial_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    const Weights<w_t> wt{{wc[0].const_data_ptr<w_t>(), wc[2].const_data_ptr<w_t>(), wc[4].const_data_ptr<w_t>()},
                          {wc[1].const_data_ptr<w_t>(), wc[3].const_data_ptr<w_t>(), wc[5].const_data_ptr<w_t>()}};
    const int64_t BP = L.B * L.P;
    Tensor scratch = empty_as(x, {4 * BP}, acc_type);  // q, k, v, gate
    Tensor key_range = empty_as(x, {5 * L.B}, acc_type);  // kr (4 a sample), vmean
    acc_t* qkv = scratch.mutable_data_ptr<acc_t>();
    acc_t* gate = qkv + 3 * BP;
    auto* kr = reinterpret_cast<Quad<acc_t>*>(key_range.mutable_data_ptr<acc_t>());
    acc_t* vmean = key_range.mutable_data_ptr<acc_t>() + 4 * L.B;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    launch_project<scalar_t, w_t, acc_t, false>(L, xp, nullptr, wt, qkv, nullptr);
    launch_rows<acc_t>(L, qkv, kr, vmean, gate, stats ? stats->mutable_data_ptr<acc_t>() : nullptr);
    // the forward's scaling reads no weight: its x-typed instantiation serves a mixed call too
    launch_apply<scalar_t, scalar_t, acc_t, false>(L, xp, y.mutable_data_ptr<scalar_t>(), gate, nullptr,
                                                   Weights<scalar_t>{});
  });
  return y;
}

Tensor cubs_spatial_cuda(const Tensor& x, const Tensor& wq, const Tensor& bq, const Tensor& wk, const Tensor& bk,
                         const Tensor& wv, const Tensor& bv) {
  return spatial_forward_cuda("recogfast::cubs_spatial", x, wq, bq, wk, bk, wv, bv, nullptr);
}

CubsSpatialTrain cubs_spatial_forward_train_cuda(const Tensor& x, const Tensor& wq, const Tensor& bq,
                                                 const Tensor& wk, const Tensor& bk, const Tensor& wv,
                                                 const Tensor& bv) {
  Tensor stats;
  Tensor y = spatial_forward_cuda("recogfast::_cubs_spatial_forward_train", x, wq, bq, wk, bk, wv, bv, &stats);
  return {y, stats};
}

// The backward from the saved statistics, or (saved == nullptr) with the row pass run first for them.
CubsSpatialGrads spatial_backward_cuda(const char* op, const Tensor& grad_y_, const Tensor& x_, const Tensor* saved,
                                       const Tensor& wq, const Tensor& bq, const Tensor& wk, const Tensor& bk,
                                       const Tensor& wv, const Tensor& bv) {
  detail::check_cubs_spatial_args(x_, wq, bq, wk, bk, wv, bv);
  RF_CHECK(x_.is_cuda(), op, ": x must be a CUDA tensor for the CUDA kernel, got ", device_str(x_.device()));
  const gpu::DeviceGuard guard(x_);
  const auto act = checks::activation(op, x_, grad_y_);
  if (saved) detail::check_cubs_spatial_stats(x_, *saved);
  const Tensor &x = act.x, &gy = act.grad_y;
  const bool cl = act.channels_last;
  Tensor gx = empty_like(x, checks::layout_of(cl));
  const auto g = checks::param_grads({wq, bq, wk, bk, wv, bv}, x.numel() == 0);
  if (x.numel() == 0) {
    return {gx, g[0], g[1], g[2], g[3], g[4], g[5]};
  }
  const Launch L{x.size(0), x.size(1), x.size(2) * x.size(3), cl, gpu::current_stream(x_)};
  const ScalarType acc_type = acc_dtype(x.scalar_type());
  check_launch(L);
  const Tensor wc[6] = {as_contiguous(wq), bq, as_contiguous(wk), bk, as_contiguous(wv), bv};
  RF_DISPATCH_GATE(x.scalar_type(), wq.scalar_type(), "cubs_spatial_backward_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    const Weights<w_t> wt{{wc[0].const_data_ptr<w_t>(), wc[2].const_data_ptr<w_t>(), wc[4].const_data_ptr<w_t>()},
                          {wc[1].const_data_ptr<w_t>(), wc[3].const_data_ptr<w_t>(), wc[5].const_data_ptr<w_t>()}};
    const int64_t B = L.B, C = L.C, P = L.P, BP = B * P;
    // q, k, v | d | gate | dq, dk, dv | pack (4) | fr
    Tensor scratch = empty_as(x, {13 * BP}, acc_type);
    acc_t* qkv = scratch.mutable_data_ptr<acc_t>();
    acc_t* d = qkv + 3 * BP;
    acc_t* gate = d + BP;
    acc_t* dqkv = gate + BP;
    auto* pack = reinterpret_cast<Quad<acc_t>*>(dqkv + 3 * BP);  // 16-byte aligned: offset 8·BP elements
    acc_t* fr = dqkv + 3 * BP + 4 * BP;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    launch_project<scalar_t, w_t, acc_t, true>(L, xp, gy.const_data_ptr<scalar_t>(), wt, qkv, d);
    Tensor own;  // the recomputed statistics when none were saved
    if (!saved) {
      own = empty_as(x, {5 * B + 3 * BP}, acc_type);  // kr (4 a sample, first: 16-byte aligned) | vmean | stats
      acc_t* o = own.mutable_data_ptr<acc_t>();
      launch_rows<acc_t>(L, qkv, reinterpret_cast<Quad<acc_t>*>(o), o + 4 * B, gate, o + 5 * B);
    }
    const acc_t* stats = saved ? saved->const_data_ptr<acc_t>() : own.const_data_ptr<acc_t>() + 5 * B;
    cubs_spatial_prep_kernel<acc_t><<<B, 256, 0, L.stream>>>(qkv, stats, d, B, P, gate, dqkv, pack, fr);
    RF_CUDA_KERNEL_LAUNCH_CHECK();
    cubs_spatial_col_kernel<acc_t>
        <<<quad_grid(L), kThreads, 0, L.stream>>>(qkv, pack, fr, B, P, dqkv + BP, dqkv + 2 * BP);
    RF_CUDA_KERNEL_LAUNCH_CHECK();
    launch_apply<scalar_t, w_t, acc_t, true>(L, gy.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(), gate,
                                             dqkv, wt);
    int64_t tasks = B;
    Tensor part;
    if (cl) {
      const int64_t cblocks = ceil_div(C, kWarp);
      const int64_t want = std::max<int64_t>(1, ceil_div(num_sms() * 8, B * cblocks));
      const int64_t chunks = std::min<int64_t>({want, ceil_div(P, 32), 65535});
      const int64_t per_chunk = ceil_div(P, chunks);
      const int64_t n_chunks = ceil_div(P, per_chunk);
      tasks = B * n_chunks;
      part = empty_as(x, {tasks * 3 * C}, acc_type);
      cubs_spatial_wgrad_nhwc<scalar_t, acc_t><<<dim3(B * cblocks, n_chunks), dim3(kWarp, 8), 0, L.stream>>>(
          xp, dqkv, B, C, P, per_chunk, part.mutable_data_ptr<acc_t>());
    } else {
      part = empty_as(x, {tasks * 3 * C}, acc_type);
      constexpr int threads = 256;
      cubs_spatial_wgrad_nchw<scalar_t, acc_t><<<ceil_div(B * C * kWarp, threads), threads, 0, L.stream>>>(
          xp, dqkv, B, C, P, part.mutable_data_ptr<acc_t>());
    }
    RF_CUDA_KERNEL_LAUNCH_CHECK();
    cubs_spatial_wgrad_reduce<w_t, acc_t><<<3 * C + 3, 256, 0, L.stream>>>(
        part.const_data_ptr<acc_t>(), tasks, dqkv, BP, C, g[0].mutable_data_ptr<w_t>(), g[2].mutable_data_ptr<w_t>(),
        g[4].mutable_data_ptr<w_t>(), g[1].mutable_data_ptr<w_t>(), g[3].mutable_data_ptr<w_t>(),
        g[5].mutable_data_ptr<w_t>());
    RF_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx, g[0], g[1], g[2], g[3], g[4], g[5]};
}

CubsSpatialGrads cubs_spatial_backward_cuda(const Tensor& grad_y, const Tensor& x, const Tensor& wq, const Tensor& bq,
                                            const Tensor& wk, const Tensor& bk, const Tensor& wv, const Tensor& bv) {
  return spatial_backward_cuda("recogfast::_cubs_spatial_backward", grad_y, x, nullptr, wq, bq, wk, bk, wv, bv);
}

CubsSpatialGrads cubs_spatial_backward_saved_cuda(const Tensor& grad_y, const Tensor& x, const Tensor& stats,
                                                  const Tensor& wq, const Tensor& bq, const Tensor& wk,
                                                  const Tensor& bk, const Tensor& wv, const Tensor& bv) {
  return spatial_backward_cuda("recogfast::_cubs_spatial_backward_saved", grad_y, x, &stats, wq, bq, wk, bk, wv, bv);
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(recogfast, CUDA, m) {
  m.impl("cubs_spatial", TORCH_BOX(&cubs_spatial_cuda));
  m.impl("_cubs_spatial_backward", TORCH_BOX(&cubs_spatial_backward_cuda));
  m.impl("_cubs_spatial_forward_train", TORCH_BOX(&cubs_spatial_forward_train_cuda));
  m.impl("_cubs_spatial_backward_saved", TORCH_BOX(&cubs_spatial_backward_saved_cuda));
}

}  // namespace recogfast
