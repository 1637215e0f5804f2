// CUBS Block 1 on CUDA, forward and backward, NCHW and NHWC, fp32/fp64/fp16/bf16 with fp32 (fp64 for
// double) accumulation. No [B, N, N] buffer: the attention of one sample runs in one block's shared
// memory from q, k, v and min/max k.
//
// Forward:  1. channel sums of x                  (channel_gate.cuh, shared with the SE gate)
//           2. the head, one block a sample:       (cubs_channel_head_kernel; RECOGFAST_CUBS_CHANNEL_THREADS)
//              g -> q, k, v -> rank-one softmax rows -> z = Wo f + bo + g -> gate
//           3. y = x * gate                        (channel_gate.cuh, 16-byte vectors where aligned)
// Backward: 1. channel sums of x and grad_y * x; 2. the head forward again and its backward
//           (df = Woᵀ dz, the attention backward with a column pass, dg) -> coef = dg / HW;
//           3. grad_x = grad_y * gate + coef; 4. weight gradients, fixed-order sums over the batch.
// Accuracy (issue 25, as the CPU kernel): the dense sums of the head (q, k, v, z, df, dg), the chunk sums of the
// pool and the weight-gradient sums over the batch accumulate in double (in saturated rows the exponents
// q_i (k_j - k*) amplify any rounding of q and k beyond one); f and dq's moments take v about the sample's mean,
// the column pass keeps f about v* (csrc/ops/cpu/cubs_channel_kernel.cpp head_forward).
// The weights are w_t: x's type, or float for a 16-bit x (mixed, read without a cast). The head and
// weight-gradient kernels see only the weights and acc_t, so a mixed call runs their fp32 instantiations and the
// 16-bit ones of the streaming passes: no kernel is compiled for the mix.

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "ops/cubs_channel.h"
#include "ops/cuda/channel_gate.cuh"
#include "ops/cuda/cubs_common.cuh"

namespace recogfast {
namespace {

using namespace cubs_cuda;
using channel_gate::launch_apply;
using channel_gate::launch_pool;
using channel_gate::pool_chunks;

template <typename w_t>
struct Params {
  const w_t* w[3];  // wq, wk, wv: [N, C]
  const w_t* b[3];  // bq, bk, bv: [N]
  const w_t* wo;    // [C, N]
  const w_t* bo;    // [C]
};

// The head of one sample (blockIdx.x). Writes gate [B, C]; with kGrad also coef = dg / HW [B, C] and,
// for the weight gradients, g [B, C], f [B, N], dz [B, C], dqkv [B, 3N].
template <typename w_t, typename acc_t, bool kGrad>
__global__ void cubs_channel_head_kernel(const acc_t* __restrict__ px, const acc_t* __restrict__ pgx, int64_t chunks,
                                         const Params<w_t> prm, int64_t B, int64_t C, int64_t N, int64_t HW,
                                         acc_t* __restrict__ gate, acc_t* __restrict__ coef, acc_t* __restrict__ g_out,
                                         acc_t* __restrict__ f_out, acc_t* __restrict__ dz_out,
                                         acc_t* __restrict__ dqkv_out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* g = reinterpret_cast<acc_t*>(smem_raw);  // [C]
  acc_t* dz = g + C;                              // [C]
  acc_t* qkv = dz + C;                            // [3N]
  acc_t* dqkv = qkv + 3 * N;                      // [3N]
  acc_t* f = dqkv + 3 * N;                        // [N]
  acc_t* l = f + N;                               // [N] row sums, then per-row factors
  acc_t* sk = l + N;
  acc_t* skv = sk + N;
  acc_t* ms = skv + N;
  const int64_t b = blockIdx.x;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, warps = blockDim.x / kWarp;

  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    double s = 0, t = 0;
    for (int64_t k = 0; k < chunks; ++k) {
      s += double(px[(k * B + b) * C + c]);
      if constexpr (kGrad) t += double(pgx[(k * B + b) * C + c]);
    }
    g[c] = acc_t(s / double(HW));  // one rounding, as mean()
    dz[c] = acc_t(t);               // sum_hw grad_y x until the gate is known
  }
  __syncthreads();
  // q, k, v: a warp a row r of [Wq; Wk; Wv], lanes along C.
  for (int64_t r = warp; r < 3 * N; r += warps) {
    const int which = static_cast<int>(r / N);
    const int64_t n = r - which * N;
    const w_t* wr = prm.w[which] + n * C;
    double a = 0;
    for (int64_t c = lane; c < C; c += kWarp) a += double(static_cast<acc_t>(wr[c])) * double(g[c]);
    a = warp_sum(a);
    if (lane == 0) qkv[r] = acc_t(a + double(static_cast<acc_t>(prm.b[which][n])));
  }
  __syncthreads();
  const acc_t* q = qkv;
  const acc_t* k = qkv + N;
  const acc_t* v = qkv + 2 * N;
  int64_t jmin = 0, jmax = 0;  // the dominant columns (first index on ties), as the CPU kernel
  double vsum = v[0];
  for (int64_t j = 1; j < N; ++j) {
    if (k[j] < k[jmin]) jmin = j;
    if (k[j] > k[jmax]) jmax = j;
    vsum += double(v[j]);
  }
  const acc_t kmin = k[jmin], kmax = k[jmax];
  const acc_t vc = acc_t(vsum / double(N));  // the mean of v
  // Softmax rows: a thread a row, sums relative to the dominant column (csrc/ops/cpu/rank_one_attention.h) with
  // v about its mean vc for f and cov (csrc/ops/cpu/cubs_channel_kernel.cpp head_forward; issue 25: about v* the
  // sums of e (v - v*) left f an error of eps |f - v*| and cov cancelled): f = vc + sum e (v - vc) / l,
  // cov = (sum e (k - k*)(v - vc) - sum e (v - vc) sum e (k - k*) / l) / l; with kGrad also f about v* for the
  // column pass, v* + sum e (v - v*) / l (its v_j - f_i exactly 0 - (f_i - v*) at a saturated row's dominant
  // column; issue 13), kept in sk until the df loop.
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    const acc_t qs = q[i] * log2e<acc_t>();
    const acc_t ks = q[i] >= acc_t(0) ? kmax : kmin, vs = q[i] >= acc_t(0) ? v[jmax] : v[jmin];
    // Blocked sums (cubs_common.cuh: kLanes partials a chunk of kChunk terms, compensated chunk totals).
    CompSum<acc_t> tl{0, 0}, tv{0, 0}, tk{0, 0}, tkv{0, 0}, ts{0, 0};
    for (int64_t j0 = 0; j0 < N; j0 += kChunk) {
      const int64_t j1 = min(N, j0 + kChunk);
      acc_t pl[kLanes] = {}, pv[kLanes] = {}, pk[kLanes] = {}, pkv[kLanes] = {}, ps[kLanes] = {};
      auto term = [&](int u, int64_t j) {
        const acc_t dk = k[j] - ks, dv = v[j] - vc;
        const acc_t e = ex2(qs * dk);  // q (k - k*) log2e <= 0: no cancellation of q k against q k*
        pl[u] += e;
        pv[u] += e * dv;
        if constexpr (kGrad) {
          const acc_t ek = e * dk;
          pk[u] += ek;
          pkv[u] += ek * dv;
          ps[u] += e * (v[j] - vs);
        }
      };
      int64_t j = j0;
      for (; j + kLanes <= j1; j += kLanes) {
#pragma unroll
        for (int u = 0; u < kLanes; ++u) term(u, j + u);
      }
#pragma unroll
      for (int u = 0; u < kLanes; ++u)
        if (j + u < j1) term(u, j + u);
      tl.add(lanes_sum(pl));
      tv.add(lanes_sum(pv));
      if constexpr (kGrad) {
        tk.add(lanes_sum(pk));
        tkv.add(lanes_sum(pkv));
        ts.add(lanes_sum(ps));
      }
    }
    // f and cov in double from the compensated sums (hi + lo exact in double), as the CPU kernel (row_value,
    // row_cov of csrc/ops/cpu/rank_one_attention.h): cov cancels when the softmax saturates.
    const double sl = double(tl.hi) + double(tl.lo), sv = double(tv.hi) + double(tv.lo);
    const double s_k = double(tk.hi) + double(tk.lo), s_kv = double(tkv.hi) + double(tkv.lo);
    f[i] = acc_t(double(vc) + sv / sl);
    l[i] = acc_t(sl);
    skv[i] = acc_t((s_kv - sv * s_k / sl) / sl);  // cov: sum_j a_ij k_j (v_j - f_i)
    if constexpr (kGrad) sk[i] = acc_t(double(vs) + (double(ts.hi) + double(ts.lo)) / sl);  // f about v*
    ms[i] = ks;                            // the row's dominant key, for the column pass
  }
  __syncthreads();
  // z = Wo f + bo + g: a warp a channel, lanes along N.
  for (int64_t c = warp; c < C; c += warps) {
    const w_t* wc = prm.wo + c * N;
    double a = 0;
    for (int64_t n = lane; n < N; n += kWarp) a += double(static_cast<acc_t>(wc[n])) * double(f[n]);
    a = warp_sum(a);
    if (lane == 0) {
      const acc_t s = sigmoid(acc_t(a + double(static_cast<acc_t>(prm.bo[c])) + double(g[c])));
      gate[b * C + c] = s;
      if constexpr (kGrad) dz[c] = dz[c] * s * (acc_t(1) - s);
    }
  }
  if constexpr (!kGrad) return;
  __syncthreads();
  // df_i = sum_c Wo[c, i] dz_c; dq_i = df_i cov_i; the column pass's factors fa, fb, q log2e (kept in l, sk,
  // skv; ms holds the rows' dominant keys); f goes out (grad Wo) and f about v* takes its place.
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    f_out[b * N + i] = f[i];
    f[i] = sk[i];
    double dfd = 0;
    for (int64_t c = 0; c < C; ++c) dfd += double(static_cast<acc_t>(prm.wo[c * N + i])) * double(dz[c]);
    const acc_t df = acc_t(dfd);
    const acc_t inv_l = acc_t(1) / l[i];
    dqkv[i] = df * skv[i];
    const acc_t fa = df * inv_l, fb = fa * q[i];
    l[i] = fa;
    sk[i] = fb;
    skv[i] = q[i] * log2e<acc_t>();
  }
  __syncthreads();
  // Column pass: dv_j = sum_i e_ij fa_i, dk_j = sum_i e_ij fb_i (v_j - f_i), the difference per pair.
  for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
    const acc_t kj = k[j], vj = v[j];
    CompSum<acc_t> ta{0, 0}, tb{0, 0};  // blocked as the row pass
    for (int64_t i0 = 0; i0 < N; i0 += kChunk) {
      const int64_t i1 = min(N, i0 + kChunk);
      acc_t pa[kLanes] = {}, pb[kLanes] = {};
      auto term = [&](int u, int64_t i) {
        const acc_t e = ex2(skv[i] * (kj - ms[i]));
        pa[u] += e * l[i];
        pb[u] += e * sk[i] * (vj - f[i]);
      };
      int64_t i = i0;
      for (; i + kLanes <= i1; i += kLanes) {
#pragma unroll
        for (int u = 0; u < kLanes; ++u) term(u, i + u);
      }
#pragma unroll
      for (int u = 0; u < kLanes; ++u)
        if (i + u < i1) term(u, i + u);
      ta.add(lanes_sum(pa));
      tb.add(lanes_sum(pb));
    }
    dqkv[2 * N + j] = ta.value();
    dqkv[N + j] = tb.value();
  }
  __syncthreads();
  // dg_c = dz_c + sum_r W[r, c] dqkv_r: a thread a channel (reads of W coalesced across threads).
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    double a = 0;
    for (int64_t r = 0; r < 3 * N; ++r) {
      const int which = static_cast<int>(r / N);
      a += double(static_cast<acc_t>(prm.w[which][(r - which * N) * C + c])) * double(dqkv[r]);
    }
    coef[b * C + c] = acc_t((a + double(dz[c])) / double(HW));
    g_out[b * C + c] = g[c];
    dz_out[b * C + c] = dz[c];
  }
  for (int64_t r = threadIdx.x; r < 3 * N; r += blockDim.x) dqkv_out[b * 3 * N + r] = dqkv[r];
}

// Weight and bias gradients, a warp an output (lanes split the batch), fixed order. Outputs end to end:
// W{q,k,v} [3][N, C], b{q,k,v} [3][N], Wo [C, N], bo [C].
template <typename w_t, typename acc_t>
__global__ void cubs_channel_weight_grad_kernel(const acc_t* __restrict__ g, const acc_t* __restrict__ f,
                                                const acc_t* __restrict__ dz, const acc_t* __restrict__ dqkv,
                                                int64_t B, int64_t C, int64_t N, w_t* gw0, w_t* gw1, w_t* gw2,
                                                w_t* gb0, w_t* gb1, w_t* gb2, w_t* gwo, w_t* gbo) {
  const int64_t n_w = 3 * N * C, n_b = 3 * N, n_wo = C * N, n_bo = C;
  const int64_t total = n_w + n_b + n_wo + n_bo;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / kWarp;
  w_t* gw[3] = {gw0, gw1, gw2};
  w_t* gb[3] = {gb0, gb1, gb2};
  for (int64_t t = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kWarp; t < total; t += warps) {
    double a = 0;  // in double, as the CPU kernel
    if (t < n_w) {
      const int64_t r = t / C, c = t - r * C;
      for (int64_t b = lane; b < B; b += kWarp) a += double(dqkv[b * 3 * N + r]) * double(g[b * C + c]);
    } else if (t < n_w + n_b) {
      const int64_t r = t - n_w;
      for (int64_t b = lane; b < B; b += kWarp) a += double(dqkv[b * 3 * N + r]);
    } else if (t < n_w + n_b + n_wo) {
      const int64_t i = t - n_w - n_b, c = i / N, n = i - c * N;
      for (int64_t b = lane; b < B; b += kWarp) a += double(dz[b * C + c]) * double(f[b * N + n]);
    } else {
      const int64_t c = t - n_w - n_b - n_wo;
      for (int64_t b = lane; b < B; b += kWarp) a += double(dz[b * C + c]);
    }
    a = warp_sum(a);
    if (lane != 0) continue;
    if (t < n_w) {
      const int64_t r = t / C, which = r / N;
      gw[which][t - which * N * C] = static_cast<w_t>(a);
    } else if (t < n_w + n_b) {
      const int64_t r = t - n_w, which = r / N;
      gb[which][r - which * N] = static_cast<w_t>(a);
    } else if (t < n_w + n_b + n_wo) {
      gwo[t - n_w - n_b] = static_cast<w_t>(a);
    } else {
      gbo[t - n_w - n_b - n_wo] = static_cast<w_t>(a);
    }
  }
}

size_t head_smem_bytes(int64_t C, int64_t N, size_t acc_size) {
  const size_t bytes = (2 * C + 11 * N) * acc_size;
  RF_CHECK(bytes <= gpu::kDefaultSmemBytes, "recogfast::cubs_channel: x has C = ", C, " channels and wq N = ", N,
              " rows; the CUDA kernel keeps 2 C + 11 N accumulators of ", acc_size,
              " bytes within 48 KiB of shared memory");
  return bytes;
}

// Threads a sample of the head kernel, the variant of Block 1's quadratic part (issue 25 part 1) for activations of
// `dtype`: RECOGFAST_CUBS_CHANNEL_THREADS = 128, 256 or 512, read once per process (each launch of the emulation
// re-reads it), else the tuned table's (recogfast/tuned.py), else 256; another value is a one-line error. Every sum
// of the head is one thread's or one warp's, so the three give bit-identical results. fp64 runs 256 whatever the
// value: its head kernel takes 155 registers (ptxas -v, nvcc 13.0, sm_90; fp32 72), over the 64K register file at
// 512 threads a block.
struct ChannelThreadsEnv {};
template <typename acc_t>
int head_threads(ScalarType dtype) {
  constexpr int kThreads[] = {128, 256, 512};  // 256 the default
  const int t = kThreads[gpu::env_choice_once<ChannelThreadsEnv>("recogfast::cubs_channel",
                                                                 "RECOGFAST_CUBS_CHANNEL_THREADS", {"128", "256", "512"},
                                                                 1, gpu::tuned_value("cubs_channel_threads", dtype))];
  return std::is_same_v<acc_t, double> ? 256 : t;
}

template <typename w_t>
Params<w_t> params(const Tensor* w) {
  return Params<w_t>{{w[0].const_data_ptr<w_t>(), w[2].const_data_ptr<w_t>(), w[4].const_data_ptr<w_t>()},
                     {w[1].const_data_ptr<w_t>(), w[3].const_data_ptr<w_t>(), w[5].const_data_ptr<w_t>()},
                     w[6].const_data_ptr<w_t>(),
                     w[7].const_data_ptr<w_t>()};
}

Tensor cubs_channel_cuda(const Tensor& x_, const Tensor& wq, const Tensor& bq, const Tensor& wk,
                             const Tensor& bk, const Tensor& wv, const Tensor& bv, const Tensor& wo,
                             const Tensor& bo) {
  const int64_t N = detail::check_cubs_channel_args(x_, wq, bq, wk, bk, wv, bv, wo, bo);
  RF_CHECK(x_.is_cuda(), "recogfast::cubs_channel: x must be a CUDA tensor for the CUDA kernel, got ",
              device_str(x_.device()));
  const gpu::DeviceGuard guard(x_);
  const auto act = checks::activation("recogfast::cubs_channel", x_);
  const Tensor& x = act.x;
  const bool cl = act.channels_last;
  const Tensor w[8] = {as_contiguous(wq), as_contiguous(bq), as_contiguous(wk), as_contiguous(bk),
                           as_contiguous(wv), as_contiguous(bv), as_contiguous(wo), as_contiguous(bo)};
  Tensor y = empty_like(x, checks::layout_of(cl));
  if (x.numel() == 0) return y;
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const cudaStream_t stream = gpu::current_stream(x_);
  const ScalarType acc_type = acc_dtype(x.scalar_type());
  int64_t per_chunk = 0;
  const int64_t chunks = pool_chunks(B, C, HW, cl, &per_chunk);
  RF_DISPATCH_GATE(x.scalar_type(), wq.scalar_type(), "cubs_channel_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    Tensor scratch = empty_as(x, {chunks * B * C + B * C}, acc_type);
    acc_t* px = scratch.mutable_data_ptr<acc_t>();
    acc_t* gate = px + chunks * B * C;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    launch_pool<scalar_t, acc_t, false>(xp, nullptr, px, nullptr, B, C, HW, cl, chunks, per_chunk, stream);
    const size_t smem = head_smem_bytes(C, N, sizeof(acc_t));
    cubs_channel_head_kernel<w_t, acc_t, false><<<B, head_threads<acc_t>(x.scalar_type()), smem, stream>>>(
        px, nullptr, chunks, params<w_t>(w), B, C, N, HW, gate, nullptr, nullptr, nullptr, nullptr, nullptr);
    RF_CUDA_KERNEL_LAUNCH_CHECK();
    launch_apply<scalar_t, acc_t, false>(xp, y.mutable_data_ptr<scalar_t>(), gate, nullptr, x.numel(), C, HW, cl,
                                         stream);
  });
  return y;
}

CubsChannelGrads cubs_channel_backward_cuda(const Tensor& grad_y_, const Tensor& x_, const Tensor& wq,
                                            const Tensor& bq, const Tensor& wk, const Tensor& bk,
                                            const Tensor& wv, const Tensor& bv, const Tensor& wo,
                                            const Tensor& bo) {
  const int64_t N = detail::check_cubs_channel_args(x_, wq, bq, wk, bk, wv, bv, wo, bo);
  RF_CHECK(x_.is_cuda(), "recogfast::_cubs_channel_backward: x must be a CUDA tensor for the CUDA kernel, got ",
              device_str(x_.device()));
  const gpu::DeviceGuard guard(x_);
  const auto act = checks::activation("recogfast::_cubs_channel_backward", x_, grad_y_);
  const Tensor &x = act.x, &gy = act.grad_y;
  const bool cl = act.channels_last;
  const Tensor w[8] = {as_contiguous(wq), as_contiguous(bq), as_contiguous(wk), as_contiguous(bk),
                           as_contiguous(wv), as_contiguous(bv), as_contiguous(wo), as_contiguous(bo)};
  Tensor gx = empty_like(x, checks::layout_of(cl));
  const auto g = checks::param_grads({w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]}, x.numel() == 0);
  if (x.numel() == 0) {
    return {gx, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]};
  }
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const cudaStream_t stream = gpu::current_stream(x_);
  const ScalarType acc_type = acc_dtype(x.scalar_type());
  int64_t per_chunk = 0;
  const int64_t chunks = pool_chunks(B, C, HW, cl, &per_chunk);
  RF_DISPATCH_GATE(x.scalar_type(), wq.scalar_type(), "cubs_channel_backward_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    // px, pgx [chunks, B, C] | gate, coef, g, dz [B, C] | f [B, N] | dqkv [B, 3N]
    Tensor scratch = empty_as(x, {2 * chunks * B * C + 4 * B * C + 4 * B * N}, acc_type);
    acc_t* px = scratch.mutable_data_ptr<acc_t>();
    acc_t* pgx = px + chunks * B * C;
    acc_t* gate = pgx + chunks * B * C;
    acc_t* coef = gate + B * C;
    acc_t* gs = coef + B * C;
    acc_t* dz = gs + B * C;
    acc_t* f = dz + B * C;
    acc_t* dqkv = f + B * N;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
    launch_pool<scalar_t, acc_t, true>(xp, gyp, px, pgx, B, C, HW, cl, chunks, per_chunk, stream);
    const size_t smem = head_smem_bytes(C, N, sizeof(acc_t));
    cubs_channel_head_kernel<w_t, acc_t, true><<<B, head_threads<acc_t>(x.scalar_type()), smem, stream>>>(
        px, pgx, chunks, params<w_t>(w), B, C, N, HW, gate, coef, gs, f, dz, dqkv);
    RF_CUDA_KERNEL_LAUNCH_CHECK();
    launch_apply<scalar_t, acc_t, true>(gyp, gx.mutable_data_ptr<scalar_t>(), gate, coef, x.numel(), C, HW, cl,
                                        stream);
    constexpr int threads = 256;
    const int64_t outputs = 3 * N * C + 3 * N + C * N + C;
    cubs_channel_weight_grad_kernel<w_t, acc_t><<<grid_for(outputs * kWarp, threads), threads, 0, stream>>>(
        gs, f, dz, dqkv, B, C, N, g[0].mutable_data_ptr<w_t>(), g[2].mutable_data_ptr<w_t>(),
        g[4].mutable_data_ptr<w_t>(), g[1].mutable_data_ptr<w_t>(), g[3].mutable_data_ptr<w_t>(),
        g[5].mutable_data_ptr<w_t>(), g[6].mutable_data_ptr<w_t>(), g[7].mutable_data_ptr<w_t>());
    RF_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(recogfast, CUDA, m) {
  m.impl("cubs_channel", TORCH_BOX(&cubs_channel_cuda));
  m.impl("_cubs_channel_backward", TORCH_BOX(&cubs_channel_backward_cuda));
}

}  // namespace recogfast
