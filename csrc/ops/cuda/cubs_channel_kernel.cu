// CUBS Block 1 on CUDA, forward and backward, NCHW and NHWC, fp32/fp64/fp16/bf16 with fp32 (fp64 for
// double) accumulation. No [B, N, N] buffer: the attention of one sample runs in one block's shared
// memory from q, k, v and min/max k.
//
// Forward:  1. channel sums of x                  (cubs_channel_pool_*)
//           2. the head, one block a sample:       (cubs_channel_head_kernel)
//              g -> q, k, v -> rank-one softmax rows -> z = Wo f + bo + g -> gate
//           3. y = x * gate                        (cubs_channel_apply_kernel, 16-byte vectors where aligned)
// Backward: 1. channel sums of x and grad_y * x; 2. the head forward again and its backward
//           (df = Woᵀ dz, the attention backward with a column pass, dg) -> coef = dg / HW;
//           3. grad_x = grad_y * gate + coef; 4. weight gradients, fixed-order sums over the batch.
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

#include "ops/cubs_channel.h"
#include "ops/cuda/cubs_common.cuh"

namespace recogfast {
namespace {

using namespace cubs_cuda;

template <typename scalar_t>
struct Params {
  const scalar_t* w[3];  // wq, wk, wv: [N, C]
  const scalar_t* b[3];  // bq, bk, bv: [N]
  const scalar_t* wo;    // [C, N]
  const scalar_t* bo;    // [C]
};

// NCHW: a warp per (b, c) row. px[row] = sum x; with kGrad pgx[row] = sum grad_y x.
template <typename scalar_t, typename acc_t, bool kGrad>
__global__ void cubs_channel_pool_nchw(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gy,
                                       acc_t* __restrict__ px, acc_t* __restrict__ pgx, int64_t rows, int64_t HW) {
  const int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) return;
  const scalar_t* xr = x + row * HW;
  acc_t sx = 0, sgx = 0;
  for (int64_t i = lane; i < HW; i += kWarp) {
    const acc_t v = static_cast<acc_t>(xr[i]);
    sx += v;
    if constexpr (kGrad) sgx += static_cast<acc_t>(gy[row * HW + i]) * v;
  }
  sx = warp_sum(sx);
  if constexpr (kGrad) sgx = warp_sum(sgx);
  if (lane == 0) {
    px[row] = sx;
    if constexpr (kGrad) pgx[row] = sgx;
  }
}

// NHWC: block (32 channels, 8 pixel lanes) over (sample, channel block) x pixel chunk; p*[chunk][b][c].
template <typename scalar_t, typename acc_t, bool kGrad>
__global__ void cubs_channel_pool_nhwc(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gy,
                                       acc_t* __restrict__ px, acc_t* __restrict__ pgx, int64_t B, int64_t C,
                                       int64_t HW, int64_t per_chunk) {
  __shared__ acc_t red[2][8][kWarp];
  const int64_t cblocks = ceil_div(C, kWarp);
  const int64_t b = blockIdx.x / cblocks, c = (blockIdx.x % cblocks) * kWarp + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t p0 = chunk * per_chunk, p1 = min(HW, p0 + per_chunk);
  acc_t sx = 0, sgx = 0;
  if (c < C) {
    for (int64_t p = p0 + threadIdx.y; p < p1; p += blockDim.y) {
      const int64_t idx = (b * HW + p) * C + c;
      const acc_t v = static_cast<acc_t>(x[idx]);
      sx += v;
      if constexpr (kGrad) sgx += static_cast<acc_t>(gy[idx]) * v;
    }
  }
  red[0][threadIdx.y][threadIdx.x] = sx;
  red[1][threadIdx.y][threadIdx.x] = sgx;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int y = 1; y < int(blockDim.y); ++y) {
      sx += red[0][y][threadIdx.x];
      sgx += red[1][y][threadIdx.x];
    }
    px[(chunk * B + b) * C + c] = sx;
    if constexpr (kGrad) pgx[(chunk * B + b) * C + c] = sgx;
  }
}

// The head of one sample (blockIdx.x). Writes gate [B, C]; with kGrad also coef = dg / HW [B, C] and,
// for the weight gradients, g [B, C], f [B, N], dz [B, C], dqkv [B, 3N].
template <typename scalar_t, typename acc_t, bool kGrad>
__global__ void cubs_channel_head_kernel(const acc_t* __restrict__ px, const acc_t* __restrict__ pgx, int64_t chunks,
                                         const Params<scalar_t> prm, int64_t B, int64_t C, int64_t N, int64_t HW,
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
  const acc_t inv_hw = acc_t(1) / acc_t(HW);

  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    acc_t s = 0, t = 0;
    for (int64_t k = 0; k < chunks; ++k) {
      s += px[(k * B + b) * C + c];
      if constexpr (kGrad) t += pgx[(k * B + b) * C + c];
    }
    g[c] = s * inv_hw;
    dz[c] = t;  // sum_hw grad_y x until the gate is known
  }
  __syncthreads();
  // q, k, v: a warp a row r of [Wq; Wk; Wv], lanes along C.
  for (int64_t r = warp; r < 3 * N; r += warps) {
    const int which = static_cast<int>(r / N);
    const int64_t n = r - which * N;
    const scalar_t* wr = prm.w[which] + n * C;
    acc_t a = 0;
    for (int64_t c = lane; c < C; c += kWarp) a += static_cast<acc_t>(wr[c]) * g[c];
    a = warp_sum(a);
    if (lane == 0) qkv[r] = a + static_cast<acc_t>(prm.b[which][n]);
  }
  __syncthreads();
  const acc_t* q = qkv;
  const acc_t* k = qkv + N;
  const acc_t* v = qkv + 2 * N;
  acc_t kmin = k[0], kmax = k[0];
  for (int64_t j = 1; j < N; ++j) {
    kmin = min(kmin, k[j]);
    kmax = max(kmax, k[j]);
  }
  // Softmax rows: a thread a row.
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    const acc_t qs = q[i] * log2e<acc_t>(), m = row_max(q[i], kmin, kmax) * log2e<acc_t>();
    acc_t sl = 0, sv = 0, s_k = 0, s_kv = 0;
    for (int64_t j = 0; j < N; ++j) {
      const acc_t e = ex2(qs * k[j] - m);
      sl += e;
      sv += e * v[j];
      if constexpr (kGrad) {
        s_k += e * k[j];
        s_kv += e * k[j] * v[j];
      }
    }
    f[i] = sv / sl;
    l[i] = sl;
    sk[i] = s_k;
    skv[i] = s_kv;
    ms[i] = m;
  }
  __syncthreads();
  // z = Wo f + bo + g: a warp a channel, lanes along N.
  for (int64_t c = warp; c < C; c += warps) {
    const scalar_t* wc = prm.wo + c * N;
    acc_t a = 0;
    for (int64_t n = lane; n < N; n += kWarp) a += static_cast<acc_t>(wc[n]) * f[n];
    a = warp_sum(a);
    if (lane == 0) {
      const acc_t s = sigmoid(a + static_cast<acc_t>(prm.bo[c]) + g[c]);
      gate[b * C + c] = s;
      if constexpr (kGrad) dz[c] = dz[c] * s * (acc_t(1) - s);
    }
  }
  if constexpr (!kGrad) return;
  __syncthreads();
  // df_i = sum_c Wo[c, i] dz_c; dq_i; the column pass's factors fa, fb, fc (kept in l, sk, skv).
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    acc_t df = 0;
    for (int64_t c = 0; c < C; ++c) df += static_cast<acc_t>(prm.wo[c * N + i]) * dz[c];
    const acc_t inv_l = acc_t(1) / l[i];
    dqkv[i] = df * (skv[i] - f[i] * sk[i]) * inv_l;
    const acc_t fa = df * inv_l, fb = fa * q[i];
    l[i] = fa;
    sk[i] = fb;
    skv[i] = fb * f[i];
  }
  __syncthreads();
  // Column pass: dv_j = sum_i e_ij fa_i, dk_j = v_j sum_i e_ij fb_i - sum_i e_ij fc_i.
  for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
    const acc_t ks = k[j] * log2e<acc_t>();
    acc_t sa = 0, sb = 0, sc = 0;
    for (int64_t i = 0; i < N; ++i) {
      const acc_t e = ex2(q[i] * ks - ms[i]);
      sa += e * l[i];
      sb += e * sk[i];
      sc += e * skv[i];
    }
    dqkv[2 * N + j] = sa;
    dqkv[N + j] = v[j] * sb - sc;
  }
  __syncthreads();
  // dg_c = dz_c + sum_r W[r, c] dqkv_r: a thread a channel (reads of W coalesced across threads).
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    acc_t a = dz[c];
    for (int64_t r = 0; r < 3 * N; ++r) {
      const int which = static_cast<int>(r / N);
      a += static_cast<acc_t>(prm.w[which][(r - which * N) * C + c]) * dqkv[r];
    }
    coef[b * C + c] = a * inv_hw;
    g_out[b * C + c] = g[c];
    dz_out[b * C + c] = dz[c];
  }
  for (int64_t r = threadIdx.x; r < 3 * N; r += blockDim.x) dqkv_out[b * 3 * N + r] = dqkv[r];
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) f_out[b * N + n] = f[n];
}

template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) VecT {
  scalar_t v[kVec];
};

// out = in * gate[b, c] (+ coef[b, c]), kVec elements a thread; kVec divides the innermost extent.
template <typename scalar_t, typename acc_t, typename index_t, int kVec, bool kChannelsLast, bool kGrad>
__global__ void cubs_channel_apply_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                          const acc_t* __restrict__ gate, const acc_t* __restrict__ coef,
                                          index_t nvec, index_t C, index_t HW) {
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
      if constexpr (kGrad) r += coef[j];
      v.v[k] = static_cast<scalar_t>(r);
    }
    reinterpret_cast<Vec*>(out)[i] = v;
  }
}

// Weight and bias gradients, a warp an output (lanes split the batch), fixed order. Outputs end to end:
// W{q,k,v} [3][N, C], b{q,k,v} [3][N], Wo [C, N], bo [C].
template <typename scalar_t, typename acc_t>
__global__ void cubs_channel_weight_grad_kernel(const acc_t* __restrict__ g, const acc_t* __restrict__ f,
                                                const acc_t* __restrict__ dz, const acc_t* __restrict__ dqkv,
                                                int64_t B, int64_t C, int64_t N, scalar_t* gw0, scalar_t* gw1,
                                                scalar_t* gw2, scalar_t* gb0, scalar_t* gb1, scalar_t* gb2,
                                                scalar_t* gwo, scalar_t* gbo) {
  const int64_t n_w = 3 * N * C, n_b = 3 * N, n_wo = C * N, n_bo = C;
  const int64_t total = n_w + n_b + n_wo + n_bo;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / kWarp;
  scalar_t* gw[3] = {gw0, gw1, gw2};
  scalar_t* gb[3] = {gb0, gb1, gb2};
  for (int64_t t = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kWarp; t < total; t += warps) {
    acc_t a = 0;
    if (t < n_w) {
      const int64_t r = t / C, c = t - r * C;
      for (int64_t b = lane; b < B; b += kWarp) a += dqkv[b * 3 * N + r] * g[b * C + c];
    } else if (t < n_w + n_b) {
      const int64_t r = t - n_w;
      for (int64_t b = lane; b < B; b += kWarp) a += dqkv[b * 3 * N + r];
    } else if (t < n_w + n_b + n_wo) {
      const int64_t i = t - n_w - n_b, c = i / N, n = i - c * N;
      for (int64_t b = lane; b < B; b += kWarp) a += dz[b * C + c] * f[b * N + n];
    } else {
      const int64_t c = t - n_w - n_b - n_wo;
      for (int64_t b = lane; b < B; b += kWarp) a += dz[b * C + c];
    }
    a = warp_sum(a);
    if (lane != 0) continue;
    if (t < n_w) {
      const int64_t r = t / C, which = r / N;
      gw[which][t - which * N * C] = static_cast<scalar_t>(a);
    } else if (t < n_w + n_b) {
      const int64_t r = t - n_w, which = r / N;
      gb[which][r - which * N] = static_cast<scalar_t>(a);
    } else if (t < n_w + n_b + n_wo) {
      gwo[t - n_w - n_b] = static_cast<scalar_t>(a);
    } else {
      gbo[t - n_w - n_b - n_wo] = static_cast<scalar_t>(a);
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
  return std::max<int64_t>(1, std::min<int64_t>(ceil_div(work_items, threads), num_sms() * 32));
}

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Pixel chunks the NHWC pool uses (1 for NCHW).
int64_t pool_chunks(int64_t B, int64_t C, int64_t HW, bool cl, int64_t* per_chunk) {
  if (!cl) {
    *per_chunk = HW;
    return 1;
  }
  const int64_t cblocks = ceil_div(C, kWarp);
  const int64_t want = std::max<int64_t>(1, ceil_div(num_sms() * 8, B * cblocks));
  const int64_t chunks = std::min<int64_t>({want, ceil_div(HW, 32), 65535});
  *per_chunk = ceil_div(HW, chunks);
  return ceil_div(HW, *per_chunk);
}

template <typename scalar_t, typename acc_t, bool kGrad>
void launch_pool(const scalar_t* x, const scalar_t* gy, acc_t* px, acc_t* pgx, int64_t B, int64_t C, int64_t HW,
                 bool cl, int64_t chunks, int64_t per_chunk, cudaStream_t stream) {
  if (!cl) {
    constexpr int threads = 256;
    cubs_channel_pool_nchw<scalar_t, acc_t, kGrad>
        <<<ceil_div(B * C * kWarp, threads), threads, 0, stream>>>(x, gy, px, pgx, B * C, HW);
  } else {
    cubs_channel_pool_nhwc<scalar_t, acc_t, kGrad>
        <<<dim3(B * ceil_div(C, kWarp), chunks), dim3(kWarp, 8), 0, stream>>>(x, gy, px, pgx, B, C, HW, per_chunk);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t, bool kGrad>
void launch_apply(const scalar_t* in, scalar_t* out, const acc_t* gate, const acc_t* coef, int64_t numel, int64_t C,
                  int64_t HW, bool cl, cudaStream_t stream) {
  constexpr int threads = 256;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const int64_t inner = cl ? C : HW;
  const bool vec_ok = inner % kVec == 0 && reinterpret_cast<uintptr_t>(in) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(out) % 16 == 0;
  auto go = [&](auto vec_tag, auto index_tag) {
    constexpr int V = decltype(vec_tag)::value;
    using index_t = decltype(index_tag);
    const int64_t nvec = numel / V;
    auto kernel = cl ? cubs_channel_apply_kernel<scalar_t, acc_t, index_t, V, true, kGrad>
                     : cubs_channel_apply_kernel<scalar_t, acc_t, index_t, V, false, kGrad>;
    kernel<<<grid_for(nvec, threads), threads, 0, stream>>>(in, out, gate, coef, index_t(nvec), index_t(C),
                                                            index_t(HW));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
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

size_t head_smem_bytes(int64_t C, int64_t N, size_t acc_size) {
  const size_t bytes = (2 * C + 11 * N) * acc_size;
  TORCH_CHECK(bytes <= 48 * 1024, "recogfast::cubs_channel: x has C = ", C, " channels and wq N = ", N,
              " rows; the CUDA kernel keeps 2 C + 11 N accumulators of ", acc_size,
              " bytes within 48 KiB of shared memory");
  return bytes;
}

template <typename scalar_t>
Params<scalar_t> params(const at::Tensor* w) {
  return Params<scalar_t>{{w[0].const_data_ptr<scalar_t>(), w[2].const_data_ptr<scalar_t>(),
                           w[4].const_data_ptr<scalar_t>()},
                          {w[1].const_data_ptr<scalar_t>(), w[3].const_data_ptr<scalar_t>(),
                           w[5].const_data_ptr<scalar_t>()},
                          w[6].const_data_ptr<scalar_t>(),
                          w[7].const_data_ptr<scalar_t>()};
}

at::Tensor cubs_channel_cuda(const at::Tensor& x_, const at::Tensor& wq, const at::Tensor& bq, const at::Tensor& wk,
                             const at::Tensor& bk, const at::Tensor& wv, const at::Tensor& bv, const at::Tensor& wo,
                             const at::Tensor& bo) {
  const int64_t N = detail::check_cubs_channel_args(x_, wq, bq, wk, bk, wv, bv, wo, bo);
  TORCH_CHECK(x_.is_cuda(), "recogfast::cubs_channel: x must be a CUDA tensor for the CUDA kernel, got ",
              x_.device());
  const c10::cuda::CUDAGuard guard(x_.device());
  const bool cl = checks::use_channels_last(x_);
  const at::Tensor x = x_.contiguous(checks::layout_of(cl));
  const at::Tensor w[8] = {wq.contiguous(), bq.contiguous(), wk.contiguous(), bk.contiguous(),
                           wv.contiguous(), bv.contiguous(), wo.contiguous(), bo.contiguous()};
  at::Tensor y = at::empty_like(x, checks::layout_of(cl));
  if (x.numel() == 0) return y;
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto acc_opts = x.options().dtype(acc_dtype(x.scalar_type()));
  int64_t per_chunk = 0;
  const int64_t chunks = pool_chunks(B, C, HW, cl, &per_chunk);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cubs_channel_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor scratch = at::empty({chunks * B * C + B * C}, acc_opts);
    acc_t* px = scratch.mutable_data_ptr<acc_t>();
    acc_t* gate = px + chunks * B * C;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    launch_pool<scalar_t, acc_t, false>(xp, nullptr, px, nullptr, B, C, HW, cl, chunks, per_chunk, stream);
    cubs_channel_head_kernel<scalar_t, acc_t, false><<<B, 256, head_smem_bytes(C, N, sizeof(acc_t)), stream>>>(
        px, nullptr, chunks, params<scalar_t>(w), B, C, N, HW, gate, nullptr, nullptr, nullptr, nullptr, nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_apply<scalar_t, acc_t, false>(xp, y.mutable_data_ptr<scalar_t>(), gate, nullptr, x.numel(), C, HW, cl,
                                         stream);
  });
  return y;
}

CubsChannelGrads cubs_channel_backward_cuda(const at::Tensor& grad_y_, const at::Tensor& x_, const at::Tensor& wq,
                                            const at::Tensor& bq, const at::Tensor& wk, const at::Tensor& bk,
                                            const at::Tensor& wv, const at::Tensor& bv, const at::Tensor& wo,
                                            const at::Tensor& bo) {
  const int64_t N = detail::check_cubs_channel_args(x_, wq, bq, wk, bk, wv, bv, wo, bo);
  checks::shape("recogfast::cubs_channel_backward", "grad_y", grad_y_, x_.sizes(), "x.shape");
  checks::like("recogfast::cubs_channel_backward", "grad_y", grad_y_, "x", x_);
  TORCH_CHECK(x_.is_cuda(), "recogfast::cubs_channel_backward: x must be a CUDA tensor for the CUDA kernel, got ",
              x_.device());
  const c10::cuda::CUDAGuard guard(x_.device());
  const bool cl = checks::use_channels_last(x_);
  const at::Tensor x = x_.contiguous(checks::layout_of(cl));
  const at::Tensor gy = grad_y_.contiguous(checks::layout_of(cl));
  const at::Tensor w[8] = {wq.contiguous(), bq.contiguous(), wk.contiguous(), bk.contiguous(),
                           wv.contiguous(), bv.contiguous(), wo.contiguous(), bo.contiguous()};
  at::Tensor gx = at::empty_like(x, checks::layout_of(cl));
  at::Tensor g[8];
  for (int i = 0; i < 8; ++i) g[i] = at::empty(w[i].sizes(), w[i].options());
  if (x.numel() == 0) {
    for (auto& t : g) t.zero_();
    return {gx, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]};
  }
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto acc_opts = x.options().dtype(acc_dtype(x.scalar_type()));
  int64_t per_chunk = 0;
  const int64_t chunks = pool_chunks(B, C, HW, cl, &per_chunk);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cubs_channel_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // px, pgx [chunks, B, C] | gate, coef, g, dz [B, C] | f [B, N] | dqkv [B, 3N]
    at::Tensor scratch = at::empty({2 * chunks * B * C + 4 * B * C + 4 * B * N}, acc_opts);
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
    cubs_channel_head_kernel<scalar_t, acc_t, true><<<B, 256, head_smem_bytes(C, N, sizeof(acc_t)), stream>>>(
        px, pgx, chunks, params<scalar_t>(w), B, C, N, HW, gate, coef, gs, f, dz, dqkv);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_apply<scalar_t, acc_t, true>(gyp, gx.mutable_data_ptr<scalar_t>(), gate, coef, x.numel(), C, HW, cl,
                                        stream);
    constexpr int threads = 256;
    const int64_t outputs = 3 * N * C + 3 * N + C * N + C;
    cubs_channel_weight_grad_kernel<scalar_t, acc_t><<<grid_for(outputs * kWarp, threads), threads, 0, stream>>>(
        gs, f, dz, dqkv, B, C, N, g[0].mutable_data_ptr<scalar_t>(), g[2].mutable_data_ptr<scalar_t>(),
        g[4].mutable_data_ptr<scalar_t>(), g[1].mutable_data_ptr<scalar_t>(), g[3].mutable_data_ptr<scalar_t>(),
        g[5].mutable_data_ptr<scalar_t>(), g[6].mutable_data_ptr<scalar_t>(), g[7].mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]};
}

}  // namespace

TORCH_LIBRARY_IMPL(recogfast, CUDA, m) {
  m.impl("cubs_channel", &cubs_channel_cuda);
  m.impl("cubs_channel_backward", &cubs_channel_backward_cuda);
}

}  // namespace recogfast
