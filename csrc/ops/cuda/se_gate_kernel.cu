// SE gate on CUDA, forward and backward, NCHW and NHWC (channels_last), fp32/fp64/fp16/bf16 with
// fp32 (fp64 for double) accumulation.
//
// Forward:  1. channel sums of x           (se_gate_pool_nchw_kernel / se_gate_pool_nhwc_kernel)
//           2. the MLP, one block a sample  (se_gate_mlp_kernel)
//           3. y = x * gate                 (se_gate_apply_kernel, 16-byte vector loads where aligned)
// Backward: 1. channel sums of x and of grad_y * x
//           2. the MLP forward again and its backward -> gate, coef = dL/dg / HW, per-sample dz, h, du, g
//           3. grad_x = grad_y * gate + coef
//           4. weight and bias gradients, a deterministic sum over the batch (se_gate_weight_grad_kernel)
// The only buffers are per-(sample, channel) vectors; nothing of the size of x is allocated but the output.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "ops/se_gate.h"

namespace recogfast {
namespace {

constexpr int kWarp = 32;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename acc_t>
__device__ __forceinline__ acc_t sigmoid(acc_t z) {
  return acc_t(1) / (acc_t(1) + exp(-z));
}

// NCHW: one warp per (b, c) row of HW contiguous elements. partial_x[row] = sum x, and with
// kWithGrad partial_gx[row] = sum grad_y * x.
template <typename scalar_t, typename acc_t, bool kWithGrad>
__global__ void se_gate_pool_nchw_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gy,
                                         acc_t* __restrict__ partial_x, acc_t* __restrict__ partial_gx,
                                         int64_t rows, int64_t HW) {
  const int64_t warps_per_block = blockDim.x / kWarp;
  const int64_t row = blockIdx.x * warps_per_block + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) return;
  const scalar_t* xr = x + row * HW;
  acc_t sx = 0, sgx = 0;
  for (int64_t i = lane; i < HW; i += kWarp) {
    const acc_t v = static_cast<acc_t>(xr[i]);
    sx += v;
    if constexpr (kWithGrad) sgx += static_cast<acc_t>(gy[row * HW + i]) * v;
  }
  sx = warp_sum(sx);
  if constexpr (kWithGrad) sgx = warp_sum(sgx);
  if (lane == 0) {
    partial_x[row] = sx;
    if constexpr (kWithGrad) partial_gx[row] = sgx;
  }
}

// NHWC ([B, HW, C]): a block covers one sample and 32 of its channels (blockIdx.x; threadIdx.x is the
// channel, so reads are coalesced) and one chunk of pixels (blockIdx.y) with blockDim.y pixel lanes.
// partial_*[chunk][b][c].
template <typename scalar_t, typename acc_t, bool kWithGrad>
__global__ void se_gate_pool_nhwc_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gy,
                                         acc_t* __restrict__ partial_x, acc_t* __restrict__ partial_gx,
                                         int64_t B, int64_t C, int64_t HW, int64_t pixels_per_chunk) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* red = reinterpret_cast<acc_t*>(smem_raw);  // [2][blockDim.y][kWarp]
  const int64_t cblocks = (C + kWarp - 1) / kWarp;
  const int64_t b = blockIdx.x / cblocks, c = (blockIdx.x % cblocks) * kWarp + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t p0 = chunk * pixels_per_chunk, p1 = min(HW, p0 + pixels_per_chunk);
  acc_t sx = 0, sgx = 0;
  if (c < C) {
    for (int64_t p = p0 + threadIdx.y; p < p1; p += blockDim.y) {
      const int64_t idx = (b * HW + p) * C + c;
      const acc_t v = static_cast<acc_t>(x[idx]);
      sx += v;
      if constexpr (kWithGrad) sgx += static_cast<acc_t>(gy[idx]) * v;
    }
  }
  red[threadIdx.y * kWarp + threadIdx.x] = sx;
  if constexpr (kWithGrad) red[(blockDim.y + threadIdx.y) * kWarp + threadIdx.x] = sgx;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int i = 1; i < blockDim.y; ++i) {
      sx += red[i * kWarp + threadIdx.x];
      if constexpr (kWithGrad) sgx += red[(blockDim.y + i) * kWarp + threadIdx.x];
    }
    const int64_t out = (chunk * B + b) * C + c;
    partial_x[out] = sx;
    if constexpr (kWithGrad) partial_gx[out] = sgx;
  }
}

// One block per sample. Shared memory: g [C], u [R], and for the backward dz [C], du [R].
// Outputs (all [B, C] or [B, R], acc_t): gate; with kBackward also coef, dz, h, du, g.
template <typename scalar_t, typename acc_t, bool kBackward>
__global__ void se_gate_mlp_kernel(const acc_t* __restrict__ partial_x, const acc_t* __restrict__ partial_gx,
                                   int64_t chunks, const scalar_t* __restrict__ w1, const scalar_t* __restrict__ b1,
                                   const scalar_t* __restrict__ w2, const scalar_t* __restrict__ b2, int64_t B,
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
    for (int64_t r = 0; r < R; ++r) z += static_cast<acc_t>(w2[c * R + r]) * max(u[r], acc_t(0));
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
    // du[r] = [u[r] > 0] * W2[:, r] . dz
    for (int64_t r = warp; r < R; r += warps) {
      acc_t a = 0;
      if (u[r] > acc_t(0)) {
        for (int64_t c = lane; c < C; c += kWarp) a += static_cast<acc_t>(w2[c * R + r]) * dz[c];
        a = warp_sum(a);
      }
      if (lane == 0) {
        du[r] = a;
        du_out[b * R + r] = a;
        h_out[b * R + r] = max(u[r], acc_t(0));
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

template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) VecT {
  scalar_t v[kVec];
};

// out = in * gate[b, c] (+ coef[b, c] when kWithCoef), kVec elements a thread. kVec must divide the
// innermost extent (HW for NCHW, C for NHWC) so that one division per vector finds (b, c).
template <typename scalar_t, typename acc_t, typename index_t, int kVec, bool kChannelsLast, bool kWithCoef>
__global__ void se_gate_apply_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                     const acc_t* __restrict__ gate, const acc_t* __restrict__ coef, index_t nvec,
                                     index_t C, index_t HW) {
  using Vec = VecT<scalar_t, kVec>;
  for (index_t i = blockIdx.x * blockDim.x + threadIdx.x; i < nvec; i += gridDim.x * blockDim.x) {
    const index_t e = i * kVec;
    index_t bc;
    if constexpr (kChannelsLast) {
      const index_t pixel = e / C;
      bc = (pixel / HW) * C + (e - pixel * C);
    } else {
      bc = e / HW;
    }
    Vec v = reinterpret_cast<const Vec*>(in)[i];
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const index_t j = kChannelsLast ? bc + k : bc;
      acc_t r = static_cast<acc_t>(v.v[k]) * gate[j];
      if constexpr (kWithCoef) r += coef[j];
      v.v[k] = static_cast<scalar_t>(r);
    }
    reinterpret_cast<Vec*>(out)[i] = v;
  }
}

// Weight and bias gradients: sums over the batch of per-sample outer products, one warp per output
// (lanes split the batch), in a fixed order so results are deterministic.
template <typename scalar_t, typename acc_t>
__global__ void se_gate_weight_grad_kernel(const acc_t* __restrict__ dz, const acc_t* __restrict__ h,
                                           const acc_t* __restrict__ du, const acc_t* __restrict__ g, int64_t B,
                                           int64_t C, int64_t R, scalar_t* __restrict__ gw1,
                                           scalar_t* __restrict__ gb1, scalar_t* __restrict__ gw2,
                                           scalar_t* __restrict__ gb2) {
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
      gw2[t] = static_cast<scalar_t>(a);
    } else if (t < n_w2 + n_b2) {
      gb2[t - n_w2] = static_cast<scalar_t>(a);
    } else if (t < n_w2 + n_b2 + n_w1) {
      gw1[t - n_w2 - n_b2] = static_cast<scalar_t>(a);
    } else {
      gb1[t - n_w2 - n_b2 - n_w1] = static_cast<scalar_t>(a);
    }
  }
}

int64_t num_sms() {
  static int64_t sms = [] {
    int dev = 0, n = 0;
    C10_CUDA_CHECK(cudaGetDevice(&dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return static_cast<int64_t>(n);
  }();
  return sms;
}

int64_t grid_for(int64_t work_items, int64_t threads) {
  return std::max<int64_t>(1, std::min<int64_t>((work_items + threads - 1) / threads, num_sms() * 32));
}

// Upper bound on the pixel chunks launch_pool splits an NHWC sample into (NCHW: one).
int64_t max_pool_chunks(int64_t HW, bool channels_last) {
  return channels_last ? std::min<int64_t>(65535, (HW + 31) / 32) : 1;
}

// Channel sums of x (and of grad_y * x): returns the number of pixel chunks written.
template <typename scalar_t, typename acc_t, bool kWithGrad>
int64_t launch_pool(const scalar_t* x, const scalar_t* gy, acc_t* px, acc_t* pgx, int64_t B, int64_t C, int64_t HW,
                    bool channels_last, cudaStream_t stream) {
  if (!channels_last) {
    constexpr int threads = 256;
    const int64_t rows = B * C, rows_per_block = threads / kWarp;
    se_gate_pool_nchw_kernel<scalar_t, acc_t, kWithGrad>
        <<<(rows + rows_per_block - 1) / rows_per_block, threads, 0, stream>>>(x, gy, px, pgx, rows, HW);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return 1;
  }
  const dim3 block(kWarp, 8);
  const int64_t cblocks = (C + kWarp - 1) / kWarp;
  // Enough blocks to fill the GPU several times over, but each chunk at least 4 pixels a lane.
  const int64_t want = std::max<int64_t>(1, (num_sms() * 8 + B * cblocks - 1) / (B * cblocks));
  const int64_t chunks = std::min<int64_t>(want, max_pool_chunks(HW, true));
  const int64_t per_chunk = (HW + chunks - 1) / chunks;
  const int64_t n_chunks = (HW + per_chunk - 1) / per_chunk;
  const size_t smem = 2 * block.y * kWarp * sizeof(acc_t);
  se_gate_pool_nhwc_kernel<scalar_t, acc_t, kWithGrad>
      <<<dim3(B * cblocks, n_chunks), block, smem, stream>>>(x, gy, px, pgx, B, C, HW, per_chunk);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return n_chunks;
}

template <typename scalar_t, typename acc_t, bool kWithCoef>
void launch_apply(const scalar_t* in, scalar_t* out, const acc_t* gate, const acc_t* coef, int64_t numel, int64_t C,
                  int64_t HW, bool channels_last, cudaStream_t stream) {
  constexpr int threads = 256;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const int64_t inner = channels_last ? C : HW;
  const bool vec_ok = inner % kVec == 0 && reinterpret_cast<uintptr_t>(in) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(out) % 16 == 0;
  auto go = [&](auto vec_tag, auto index_tag) {
    constexpr int V = decltype(vec_tag)::value;
    using index_t = decltype(index_tag);
    const int64_t nvec = numel / V;
    const int64_t blocks = grid_for(nvec, threads);
    auto kernel = channels_last ? se_gate_apply_kernel<scalar_t, acc_t, index_t, V, true, kWithCoef>
                                : se_gate_apply_kernel<scalar_t, acc_t, index_t, V, false, kWithCoef>;
    kernel<<<blocks, threads, 0, stream>>>(in, out, gate, coef, static_cast<index_t>(nvec), static_cast<index_t>(C),
                                           static_cast<index_t>(HW));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  // 32-bit index arithmetic (cheaper divisions) whenever the grid-stride loop cannot overflow it.
  const bool small = numel + grid_for(numel, threads) * threads < (int64_t{1} << 31);
  if (vec_ok && small) {
    go(std::integral_constant<int, kVec>{}, int32_t{});
  } else if (vec_ok) {
    go(std::integral_constant<int, kVec>{}, int64_t{});
  } else if (small) {
    go(std::integral_constant<int, 1>{}, int32_t{});
  } else {
    go(std::integral_constant<int, 1>{}, int64_t{});
  }
}

// Dynamic shared memory of the MLP kernel: g and dz [C], u and du [R].
size_t mlp_smem_bytes(int64_t C, int64_t R, size_t acc_size) {
  const size_t bytes = (2 * C + 2 * R) * acc_size;
  TORCH_CHECK(bytes <= 48 * 1024, "recogfast::se_gate: x has C = ", C, " channels and w1 R = ", R,
              " rows; the CUDA kernel supports 2 * (C + R) accumulators of ", acc_size,
              " bytes within 48 KiB of shared memory");
  return bytes;
}

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor se_gate_cuda(const at::Tensor& x_, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                        const at::Tensor& b2) {
  TORCH_CHECK(x_.is_cuda(), "recogfast::se_gate: x must be a CUDA tensor for the CUDA kernel, got ", x_.device());
  const c10::cuda::CUDAGuard guard(x_.device());
  const auto a = detail::prepare_se_gate(x_, w1, b1, w2, b2);
  const at::Tensor& x = a.x;
  const bool cl = a.channels_last;
  at::Tensor y = at::empty_like(x, checks::layout_of(cl));
  if (x.numel() == 0) return y;
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), R = a.R;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto acc_opts = x.options().dtype(acc_dtype(x.scalar_type()));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_gate_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor partial = at::empty({max_pool_chunks(HW, cl) * B * C}, acc_opts);
    at::Tensor gate = at::empty({B, C}, acc_opts);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const int64_t chunks =
        launch_pool<scalar_t, acc_t, false>(xp, nullptr, partial.mutable_data_ptr<acc_t>(), nullptr, B, C, HW, cl, stream);
    se_gate_mlp_kernel<scalar_t, acc_t, false><<<B, 256, mlp_smem_bytes(C, R, sizeof(acc_t)), stream>>>(
        partial.const_data_ptr<acc_t>(), nullptr, chunks, a.w1.const_data_ptr<scalar_t>(),
        a.b1.const_data_ptr<scalar_t>(), a.w2.const_data_ptr<scalar_t>(), a.b2.const_data_ptr<scalar_t>(), B, C, R,
        HW, gate.mutable_data_ptr<acc_t>(), nullptr, nullptr, nullptr, nullptr, nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_apply<scalar_t, acc_t, false>(xp, y.mutable_data_ptr<scalar_t>(), gate.const_data_ptr<acc_t>(), nullptr,
                                         x.numel(), C, HW, cl, stream);
  });
  return y;
}

detail::SEGateGrads se_gate_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x_, const at::Tensor& w1,
                                          const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2) {
  TORCH_CHECK(x_.is_cuda(), "recogfast::se_gate_backward: x must be a CUDA tensor for the CUDA kernel, got ",
              x_.device());
  const c10::cuda::CUDAGuard guard(x_.device());
  const auto a = detail::prepare_se_gate(x_, w1, b1, w2, b2, grad_y);
  auto grads = detail::alloc_se_gate_grads(a);
  const at::Tensor& x = a.x;
  if (x.numel() == 0) return grads;
  auto& [gx, gw1, gb1, gw2, gb2] = grads;
  const bool cl = a.channels_last;
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), R = a.R;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto acc_opts = x.options().dtype(acc_dtype(x.scalar_type()));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_gate_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor partial = at::empty({2, max_pool_chunks(HW, cl) * B * C}, acc_opts);
    // Per-sample vectors: gate, coef, dz, g ([B, C] each) and h, du ([B, R] each).
    at::Tensor per_c = at::empty({4, B, C}, acc_opts), per_r = at::empty({2, B, R}, acc_opts);
    acc_t* gate = per_c[0].mutable_data_ptr<acc_t>();
    acc_t* coef = per_c[1].mutable_data_ptr<acc_t>();
    acc_t* dz = per_c[2].mutable_data_ptr<acc_t>();
    acc_t* g = per_c[3].mutable_data_ptr<acc_t>();
    acc_t* h = per_r[0].mutable_data_ptr<acc_t>();
    acc_t* du = per_r[1].mutable_data_ptr<acc_t>();
    acc_t* px = partial[0].mutable_data_ptr<acc_t>();
    acc_t* pgx = partial[1].mutable_data_ptr<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gyp = a.grad_y.const_data_ptr<scalar_t>();

    const int64_t chunks = launch_pool<scalar_t, acc_t, true>(xp, gyp, px, pgx, B, C, HW, cl, stream);
    se_gate_mlp_kernel<scalar_t, acc_t, true><<<B, 256, mlp_smem_bytes(C, R, sizeof(acc_t)), stream>>>(
        px, pgx, chunks, a.w1.const_data_ptr<scalar_t>(), a.b1.const_data_ptr<scalar_t>(),
        a.w2.const_data_ptr<scalar_t>(), a.b2.const_data_ptr<scalar_t>(), B, C, R, HW, gate, coef, dz, h, du, g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_apply<scalar_t, acc_t, true>(gyp, gx.mutable_data_ptr<scalar_t>(), gate, coef, x.numel(), C, HW, cl,
                                        stream);
    constexpr int threads = 256;
    se_gate_weight_grad_kernel<scalar_t, acc_t><<<grid_for((2 * C * R + C + R) * kWarp, threads), threads, 0, stream>>>(
        dz, h, du, g, B, C, R, gw1.mutable_data_ptr<scalar_t>(), gb1.mutable_data_ptr<scalar_t>(),
        gw2.mutable_data_ptr<scalar_t>(), gb2.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(recogfast, CUDA, m) {
  m.impl("se_gate", &se_gate_cuda);
  m.impl("se_gate_backward", &se_gate_backward_cuda);
}

}  // namespace recogfast
