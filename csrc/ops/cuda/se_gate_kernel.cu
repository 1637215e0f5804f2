// SE gate on CUDA, forward and backward, NCHW and NHWC (channels_last), fp32/fp64/fp16/bf16 with
// fp32 (fp64 for double) accumulation.
//
// Forward:  1. channel sums of x           (channel_gate.cuh, shared with CUBS Block 1)
//           2. the MLP, one block a sample  (se_gate_mlp_kernel)
//           3. y = x * gate                 (channel_gate.cuh, 16-byte vector loads where aligned)
// Backward: 1. channel sums of x and of grad_y * x
//           2. the MLP forward again and its backward -> gate, coef = dL/dg / HW, per-sample dz, h, du, g
//           3. grad_x = grad_y * gate + coef
//           4. weight and bias gradients, a deterministic sum over the batch (se_gate_weight_grad_kernel)
// The only buffers are per-(sample, channel) vectors; nothing of the size of x is allocated but the output.
// The weights are w_t: x's type, or float for a 16-bit x (mixed: fp32 parameters under autocast, read without a
// cast). The MLP and weight-gradient kernels see only the weights and acc_t, so a mixed call runs the fp32
// instantiations of those and the 16-bit ones of the streaming passes: no kernel is compiled for the mix.
// RECOGFAST_SE_VARIANT=fused (opt-in, se_gate_fused.cuh): forward in one launch a sample and backward in two
// wherever a sample fits in shared memory; "auto" (default) and "split" run the passes above.

#include <algorithm>
#include <cstdint>

#include "ops/cuda/channel_gate.cuh"
#include "ops/cuda/common.cuh"
#include "ops/cuda/se_gate_fused.cuh"
#include "ops/se_gate.h"

namespace recogfast {
namespace {

// relu that keeps NaN, as torch.relu (fmax(NaN, 0) would return 0 and hide a diverged input).
template <typename T>
__device__ __forceinline__ T relu(T u) {
  return u <= T(0) ? T(0) : u;
}

using namespace gpu;
using channel_gate::launch_apply;
using channel_gate::launch_pool;
using channel_gate::pool_chunks;

// One block per sample. Shared memory: g [C], u [R], and for the backward dz [C], du [R].
// Outputs (all [B, C] or [B, R], acc_t): gate; with kBackward also coef, dz, h, du, g.
template <typename w_t, typename acc_t, bool kBackward>
__global__ void se_gate_mlp_kernel(const acc_t* __restrict__ partial_x, const acc_t* __restrict__ partial_gx,
                                   int64_t chunks, const w_t* __restrict__ w1, const w_t* __restrict__ b1,
                                   const w_t* __restrict__ w2, const w_t* __restrict__ b2, int64_t B,
                                   int64_t C, int64_t R, int64_t HW, acc_t* __restrict__ gate,
                                   acc_t* __restrict__ coef, acc_t* __restrict__ dz_out, acc_t* __restrict__ h_out,
                                   acc_t* __restrict__ du_out, acc_t* __restrict__ g_out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* g = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* u = g + C;
  acc_t* dz = u + R;
  acc_t* du = dz + C;
  const int64_t b = blockIdx.x;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, warps = blockDim.x / kWarp;
  const acc_t inv_hw = acc_t(1) / acc_t(HW);

  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    acc_t s = 0;
    for (int64_t k = 0; k < chunks; ++k) s += partial_x[(k * B + b) * C + c];
    g[c] = s * inv_hw;
  }
  __syncthreads();
  // u[r] = b1[r] + W1[r, :] . g  (a warp per row r, lanes along C: coalesced reads of W1)
  for (int64_t r = warp; r < R; r += warps) {
    acc_t a = 0;
    for (int64_t c = lane; c < C; c += kWarp) a += static_cast<acc_t>(w1[r * C + c]) * g[c];
    a = warp_sum(a);
    if (lane == 0) u[r] = a + static_cast<acc_t>(b1[r]);
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    acc_t z = static_cast<acc_t>(b2[c]);
    for (int64_t r = 0; r < R; ++r) z += static_cast<acc_t>(w2[c * R + r]) * relu(u[r]);
    const acc_t s = sigmoid(z);
    gate[b * C + c] = s;
    if constexpr (kBackward) {
      acc_t ds = 0;
      for (int64_t k = 0; k < chunks; ++k) ds += partial_gx[(k * B + b) * C + c];
      dz[c] = ds * s * (acc_t(1) - s);
      dz_out[b * C + c] = dz[c];
      g_out[b * C + c] = g[c];
    }
  }
  if constexpr (kBackward) {
    __syncthreads();
    // du[r] = [u[r] > 0] * W2[:, r] . dz (NaN u passes, as torch's threshold_backward)
    for (int64_t r = warp; r < R; r += warps) {
      acc_t a = 0;
      if (!(u[r] <= acc_t(0))) {
        for (int64_t c = lane; c < C; c += kWarp) a += static_cast<acc_t>(w2[c * R + r]) * dz[c];
        a = warp_sum(a);
      }
      if (lane == 0) {
        du[r] = a;
        du_out[b * R + r] = a;
        h_out[b * R + r] = relu(u[r]);
      }
    }
    __syncthreads();
    // coef[c] = (W1[:, c] . du) / HW
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      acc_t a = 0;
      for (int64_t r = 0; r < R; ++r) a += static_cast<acc_t>(w1[r * C + c]) * du[r];
      coef[b * C + c] = a * inv_hw;
    }
  }
}

// Weight and bias gradients: sums over the batch of per-sample outer products, one warp per output
// (lanes split the batch), in a fixed order so results are deterministic.
template <typename w_t, typename acc_t>
__global__ void se_gate_weight_grad_kernel(const acc_t* __restrict__ dz, const acc_t* __restrict__ h,
                                           const acc_t* __restrict__ du, const acc_t* __restrict__ g, int64_t B,
                                           int64_t C, int64_t R, w_t* __restrict__ gw1, w_t* __restrict__ gb1,
                                           w_t* __restrict__ gw2, w_t* __restrict__ gb2) {
  // Outputs laid end to end: gw2 [C, R], gb2 [C], gw1 [R, C], gb1 [R].
  const int64_t n_w2 = C * R, n_b2 = C, n_w1 = R * C, n_b1 = R;
  const int64_t total = n_w2 + n_b2 + n_w1 + n_b1;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp;
  for (int64_t t = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; t < total; t += warps) {
    acc_t a = 0;
    if (t < n_w2) {
      const int64_t c = t / R, r = t % R;
      for (int64_t b = lane; b < B; b += kWarp) a += dz[b * C + c] * h[b * R + r];
    } else if (t < n_w2 + n_b2) {
      const int64_t c = t - n_w2;
      for (int64_t b = lane; b < B; b += kWarp) a += dz[b * C + c];
    } else if (t < n_w2 + n_b2 + n_w1) {
      const int64_t i = t - n_w2 - n_b2, r = i / C, c = i % C;
      for (int64_t b = lane; b < B; b += kWarp) a += du[b * R + r] * g[b * C + c];
    } else {
      const int64_t r = t - n_w2 - n_b2 - n_w1;
      for (int64_t b = lane; b < B; b += kWarp) a += du[b * R + r];
    }
    a = warp_sum(a);
    if (lane != 0) continue;
    if (t < n_w2) {
      gw2[t] = static_cast<w_t>(a);
    } else if (t < n_w2 + n_b2) {
      gb2[t - n_w2] = static_cast<w_t>(a);
    } else if (t < n_w2 + n_b2 + n_w1) {
      gw1[t - n_w2 - n_b2] = static_cast<w_t>(a);
    } else {
      gb1[t - n_w2 - n_b2 - n_w1] = static_cast<w_t>(a);
    }
  }
}

// Dynamic shared memory of the MLP kernel: g and dz [C], u and du [R].
size_t mlp_smem_bytes(int64_t C, int64_t R, size_t acc_size) {
  const size_t bytes = (2 * C + 2 * R) * acc_size;
  RF_CHECK(bytes <= gpu::kDefaultSmemBytes, "recogfast::se_gate: x has C = ", C, " channels and w1 R = ", R,
              " rows; the CUDA kernel supports 2 * (C + R) accumulators of ", acc_size,
              " bytes within 48 KiB of shared memory");
  return bytes;
}


Tensor se_gate_cuda(const Tensor& x_, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                        const Tensor& b2) {
  // Arguments first (a CUDA weight with a CPU x names the weight), then the device.
  detail::check_se_gate_args(x_, w1, b1, w2, b2);
  RF_CHECK(x_.is_cuda(), "recogfast::se_gate: x must be a CUDA tensor for the CUDA kernel, got ", device_str(x_.device()));
  const gpu::DeviceGuard guard(x_);
  const auto a = detail::prepare_se_gate(x_, w1, b1, w2, b2);
  const Tensor& x = a.x;
  const bool cl = a.channels_last;
  Tensor y = empty_like(x, checks::layout_of(cl));
  if (x.numel() == 0) return y;
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), R = a.R;
  const cudaStream_t stream = gpu::current_stream(x_);
  const ScalarType acc_type = acc_dtype(x.scalar_type());
  const bool fused = se_fused::fused_wanted(x.scalar_type());

  RF_DISPATCH_GATE(x.scalar_type(), a.w1.scalar_type(), "se_gate_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    if (fused && se_fused::launch<scalar_t, w_t, acc_t, false>(
                     x.const_data_ptr<scalar_t>(), nullptr, y.mutable_data_ptr<scalar_t>(), a.w1.const_data_ptr<w_t>(),
                     a.b1.const_data_ptr<w_t>(), a.w2.const_data_ptr<w_t>(), a.b2.const_data_ptr<w_t>(), B, C, HW, R,
                     cl, nullptr, nullptr, nullptr, nullptr, stream))
      return;
    int64_t per_chunk = 0;
    const int64_t chunks = pool_chunks(B, C, HW, cl, &per_chunk);
    Tensor partial = empty_as(x, {chunks * B * C}, acc_type);
    Tensor gate = empty_as(x, {B, C}, acc_type);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    launch_pool<scalar_t, acc_t, false>(xp, nullptr, partial.mutable_data_ptr<acc_t>(), nullptr, B, C, HW, cl, chunks,
                                        per_chunk, stream);
    se_gate_mlp_kernel<w_t, acc_t, false><<<B, 256, mlp_smem_bytes(C, R, sizeof(acc_t)), stream>>>(
        partial.const_data_ptr<acc_t>(), nullptr, chunks, a.w1.const_data_ptr<w_t>(), a.b1.const_data_ptr<w_t>(),
        a.w2.const_data_ptr<w_t>(), a.b2.const_data_ptr<w_t>(), B, C, R,
        HW, gate.mutable_data_ptr<acc_t>(), nullptr, nullptr, nullptr, nullptr, nullptr);
    RF_CUDA_KERNEL_LAUNCH_CHECK();
    launch_apply<scalar_t, acc_t, false>(xp, y.mutable_data_ptr<scalar_t>(), gate.const_data_ptr<acc_t>(), nullptr,
                                         x.numel(), C, HW, cl, stream);
  });
  return y;
}

detail::SEGateGrads se_gate_backward_cuda(const Tensor& grad_y, const Tensor& x_, const Tensor& w1,
                                          const Tensor& b1, const Tensor& w2, const Tensor& b2) {
  detail::check_se_gate_args(x_, w1, b1, w2, b2);
  if (grad_y.defined()) checks::like("recogfast::_se_gate_backward", "grad_y", grad_y, "x", x_);
  RF_CHECK(x_.is_cuda(), "recogfast::_se_gate_backward: x must be a CUDA tensor for the CUDA kernel, got ",
              device_str(x_.device()));
  const gpu::DeviceGuard guard(x_);
  const auto a = detail::prepare_se_gate(x_, w1, b1, w2, b2, grad_y);
  auto grads = detail::alloc_se_gate_grads(a);
  const Tensor& x = a.x;
  if (x.numel() == 0) return grads;
  auto& [gx, gw1, gb1, gw2, gb2] = grads;
  const bool cl = a.channels_last;
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), R = a.R;
  const cudaStream_t stream = gpu::current_stream(x_);
  const ScalarType acc_type = acc_dtype(x.scalar_type());
  const bool fused = se_fused::fused_wanted(x.scalar_type());

  RF_DISPATCH_GATE(x.scalar_type(), a.w1.scalar_type(), "se_gate_backward_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    // Per-sample vectors: gate, coef, dz, g ([B, C] each) and h, du ([B, R] each); the fused kernel writes only
    // dz, g, h and du (gate and coef stay in its shared memory).
    Tensor per_c = empty_as(x, {4, B, C}, acc_type), per_r = empty_as(x, {2, B, R}, acc_type);
    acc_t* gate = per_c.mutable_data_ptr<acc_t>() ;
    acc_t* coef = per_c.mutable_data_ptr<acc_t>() + 1 * B * C;
    acc_t* dz = per_c.mutable_data_ptr<acc_t>() + 2 * B * C;
    acc_t* g = per_c.mutable_data_ptr<acc_t>() + 3 * B * C;
    acc_t* h = per_r.mutable_data_ptr<acc_t>() ;
    acc_t* du = per_r.mutable_data_ptr<acc_t>() + 1 * B * R;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gyp = a.grad_y.const_data_ptr<scalar_t>();

    if (!fused || !se_fused::launch<scalar_t, w_t, acc_t, true>(
                      xp, gyp, gx.mutable_data_ptr<scalar_t>(), a.w1.const_data_ptr<w_t>(), a.b1.const_data_ptr<w_t>(),
                      a.w2.const_data_ptr<w_t>(), a.b2.const_data_ptr<w_t>(), B, C, HW, R, cl, dz, h, du, g, stream)) {
      int64_t per_chunk = 0;
      const int64_t chunks = pool_chunks(B, C, HW, cl, &per_chunk);
      Tensor partial = empty_as(x, {2, chunks * B * C}, acc_type);
      acc_t* px = partial.mutable_data_ptr<acc_t>() ;
      acc_t* pgx = partial.mutable_data_ptr<acc_t>() + 1 * chunks * B * C;
      launch_pool<scalar_t, acc_t, true>(xp, gyp, px, pgx, B, C, HW, cl, chunks, per_chunk, stream);
      se_gate_mlp_kernel<w_t, acc_t, true><<<B, 256, mlp_smem_bytes(C, R, sizeof(acc_t)), stream>>>(
          px, pgx, chunks, a.w1.const_data_ptr<w_t>(), a.b1.const_data_ptr<w_t>(), a.w2.const_data_ptr<w_t>(),
          a.b2.const_data_ptr<w_t>(), B, C, R, HW, gate, coef, dz, h, du, g);
      RF_CUDA_KERNEL_LAUNCH_CHECK();
      launch_apply<scalar_t, acc_t, true>(gyp, gx.mutable_data_ptr<scalar_t>(), gate, coef, x.numel(), C, HW, cl,
                                          stream);
    }
    constexpr int threads = 256;
    se_gate_weight_grad_kernel<w_t, acc_t><<<grid_for((2 * C * R + C + R) * kWarp, threads), threads, 0, stream>>>(
        dz, h, du, g, B, C, R, gw1.mutable_data_ptr<w_t>(), gb1.mutable_data_ptr<w_t>(), gw2.mutable_data_ptr<w_t>(),
        gb2.mutable_data_ptr<w_t>());
    RF_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grads;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(recogfast, CUDA, m) {
  m.impl("se_gate", TORCH_BOX(&se_gate_cuda));
  m.impl("_se_gate_backward", TORCH_BOX(&se_gate_backward_cuda));
}

}  // namespace recogfast
