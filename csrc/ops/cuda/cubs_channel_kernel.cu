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
// RECOGFAST_CUBS_CHANNEL_VARIANT=fused (or the tuned table's cubs_channel_variant; cubs_channel_fused.cuh): forward
// steps 1-3 in one launch a sample, backward steps 1-3 in one, wherever a sample fits in shared memory.
// The head itself (both paths): cubs_channel_head.cuh.
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
#include "ops/cuda/cubs_channel_fused.cuh"
#include "ops/cuda/cubs_channel_head.cuh"
#include "ops/cuda/cubs_common.cuh"

namespace recogfast {
namespace {

using namespace cubs_cuda;
using channel_gate::launch_apply;
using channel_gate::launch_pool;
using channel_gate::pool_chunks;

// The head of one sample (blockIdx.x) after the pool: adds the pool's chunk sums in double, then head_sample.
// Writes gate [B, C]; with kGrad also coef = dg / HW [B, C] and, for the weight gradients, g [B, C], f [B, N],
// dz [B, C], dqkv [B, 3N].
template <typename w_t, typename acc_t, bool kGrad>
__global__ void cubs_channel_head_kernel(const acc_t* __restrict__ px, const acc_t* __restrict__ pgx, int64_t chunks,
                                         const Params<w_t> prm, int64_t B, int64_t C, int64_t N, int64_t HW,
                                         acc_t* __restrict__ gate, acc_t* __restrict__ coef, acc_t* __restrict__ g_out,
                                         acc_t* __restrict__ f_out, acc_t* __restrict__ dz_out,
                                         acc_t* __restrict__ dqkv_out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* g = reinterpret_cast<acc_t*>(smem_raw);  // [C], then dz [C]: head_sample's layout
  const int64_t b = blockIdx.x;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    double s = 0, t = 0;
    for (int64_t k = 0; k < chunks; ++k) {
      s += double(px[(k * B + b) * C + c]);
      if constexpr (kGrad) t += double(pgx[(k * B + b) * C + c]);
    }
    g[c] = acc_t(s / double(HW));  // one rounding, as mean()
    g[C + c] = acc_t(t);            // sum_hw grad_y x until the gate is known
  }
  __syncthreads();
  head_sample<w_t, acc_t, kGrad>(g, prm, b, C, N, HW, gate + b * C, kGrad ? coef + b * C : nullptr, g_out, f_out,
                                 dz_out, dqkv_out);
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
  const size_t bytes = head_smem_elems(C, N) * acc_size;
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
    const size_t smem = head_smem_bytes(C, N, sizeof(acc_t));  // both paths: the head's limit
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const auto fused = cubs_channel_fused::plan<scalar_t, acc_t>(xp, nullptr, yp, C, HW, N, cl, x.scalar_type());
    if (fused.K) {
      cubs_channel_fused::launch<scalar_t, w_t, acc_t, false>(fused, xp, nullptr, yp, params<w_t>(w), B, C, HW, N, cl,
                                                              nullptr, nullptr, nullptr, nullptr, stream);
      return;
    }
    Tensor scratch = empty_as(x, {chunks * B * C + B * C}, acc_type);
    acc_t* px = scratch.mutable_data_ptr<acc_t>();
    acc_t* gate = px + chunks * B * C;
    launch_pool<scalar_t, acc_t, false>(xp, nullptr, px, nullptr, B, C, HW, cl, chunks, per_chunk, stream);
    cubs_channel_head_kernel<w_t, acc_t, false><<<B, head_threads<acc_t>(x.scalar_type()), smem, stream>>>(
        px, nullptr, chunks, params<w_t>(w), B, C, N, HW, gate, nullptr, nullptr, nullptr, nullptr, nullptr);
    RF_CUDA_KERNEL_LAUNCH_CHECK();
    launch_apply<scalar_t, acc_t, false>(xp, yp, gate, nullptr, x.numel(), C, HW, cl, stream);
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
    const size_t smem = head_smem_bytes(C, N, sizeof(acc_t));  // both paths: the head's limit
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    const auto fused = cubs_channel_fused::plan<scalar_t, acc_t>(xp, gyp, gxp, C, HW, N, cl, x.scalar_type());
    // g, dz [B, C] | f [B, N] | dqkv [B, 3N] | split path only: gate, coef [B, C] | px, pgx [chunks, B, C]
    const int64_t split = fused.K ? 0 : 2 * B * C + 2 * chunks * B * C;
    Tensor scratch = empty_as(x, {2 * B * C + 4 * B * N + split}, acc_type);
    acc_t* gs = scratch.mutable_data_ptr<acc_t>();
    acc_t* dz = gs + B * C;
    acc_t* f = dz + B * C;
    acc_t* dqkv = f + B * N;
    if (fused.K) {
      cubs_channel_fused::launch<scalar_t, w_t, acc_t, true>(fused, xp, gyp, gxp, params<w_t>(w), B, C, HW, N, cl, gs,
                                                             f, dz, dqkv, stream);
    } else {
      acc_t* gate = dqkv + 3 * B * N;
      acc_t* coef = gate + B * C;
      acc_t* px = coef + B * C;
      acc_t* pgx = px + chunks * B * C;
      launch_pool<scalar_t, acc_t, true>(xp, gyp, px, pgx, B, C, HW, cl, chunks, per_chunk, stream);
      cubs_channel_head_kernel<w_t, acc_t, true><<<B, head_threads<acc_t>(x.scalar_type()), smem, stream>>>(
          px, pgx, chunks, params<w_t>(w), B, C, N, HW, gate, coef, gs, f, dz, dqkv);
      RF_CUDA_KERNEL_LAUNCH_CHECK();
      launch_apply<scalar_t, acc_t, true>(gyp, gxp, gate, coef, x.numel(), C, HW, cl, stream);
    }
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
