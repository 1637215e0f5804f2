// SE in one launch a sample (RECOGFAST_SE_VARIANT=fused): one CTA holds sample b in shared memory.
//   forward:  read x[b] once (16-byte vectors) into shared memory while summing each channel, the MLP and the
//             gate in the same CTA, then y[b] = staged x * gate: 2|x| of DRAM traffic, one launch (today's split
//             path: 3 launches and 3|x|, x read twice);
//   backward: read x[b] and grad_y[b] once, staging grad_y (x is needed only for the sums), the MLP forward
//             and backward, grad_x[b] = staged grad_y * gate + coef, and the per-sample vectors dz, g [C] and
//             h, du [R] that se_gate_weight_grad_kernel (se_gate_kernel.cu) sums over the batch in a fixed
//             order: 3|x|, two launches (split: 4 launches, 4|x|). Forward + backward: 5|x|, the DRAM floor of
//             benchmarks/test_se_gate_bench.py (split: 7|x|).
// Fits when C*HW elements plus the accumulators (fused_smem_bytes) are within the device's opt-in shared memory
// per block (cudaDevAttrMaxSharedMemoryPerBlockOptin: 227 KB on sm_90, CUDA C++ Programming Guide, "Technical
// Specifications per Compute Capability"). bf16 with R = C/16 (fused_smem_bytes, forward / backward): 7x7x512
// 69 / 89 KB, 14x14x256 116 / 134 KB, 28x28x128 205 / 214 KB fit; 56x56x64 (392 KB of x alone) does not, and keeps
// the split path. One CTA an SM at 28x28 and 14x14, three at 7x7 (228 KB an SM): the latency of the one read of
// x is hidden by kThreads = 512 threads a CTA, not by more CTAs (unmeasured: the first GPU run times it).
// Variant (read on every call, one getenv): RECOGFAST_SE_VARIANT = "auto" (default), "fused" or "split". "auto"
// is the split path until kFusedByDefault is true -- the fused kernels have run only under the host emulation
// (tools/cuda_emulation), never on a GPU; "fused" takes them where the sample fits, the split path elsewhere.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "ops/cuda/common.cuh"

#ifndef RECOGFAST_SE_FUSED_THREADS
#ifdef RECOGFAST_CUDA_EMULATION
#define RECOGFAST_SE_FUSED_THREADS 64  // 2 warps: channel loops and NHWC pixel phases wrap on small inputs
#else
#define RECOGFAST_SE_FUSED_THREADS 512
#endif
#endif

namespace recogfast {
namespace se_fused {

using gpu::kWarp;
using gpu::sigmoid;
using gpu::warp_sum;

constexpr int kThreads = RECOGFAST_SE_FUSED_THREADS;

enum class SeVariant : int { kAuto = 0, kFused = 1, kSplit = 2 };
constexpr bool kFusedByDefault = false;  // true once a GPU run has cross-checked the fused kernels

inline SeVariant se_variant_env() {
  switch (gpu::env_choice("recogfast::se_gate", "RECOGFAST_SE_VARIANT", {"auto", "fused", "split"})) {
    case 0: return kFusedByDefault ? SeVariant::kFused : SeVariant::kSplit;
    case 1: return SeVariant::kFused;
    default: return SeVariant::kSplit;
  }
}

// relu that keeps NaN, as torch.relu.
template <typename T>
__device__ __forceinline__ T relu(T u) {
  return u <= T(0) ? T(0) : u;
}

__host__ __device__ inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

// NHWC sums: threads split into P pixel phases of C/V vector columns each (P = 1 when the columns alone fill the
// block); P > 1 needs a [groups, C] buffer, summed over the groups in a fixed order. When the columns divide a warp,
// its 32 / cols phases of each column are first added by shuffles, so groups = warps (28x28x128 bf16: 16 x 128
// floats, not 32 x 128; without it the backward's two buffers, 32 KB, would push the sample past 227 KB).
__host__ __device__ inline int64_t nhwc_phases(int64_t C, int V, int threads) {
  const int64_t cols = C / V;
  return cols >= threads ? 1 : threads / cols;
}
__host__ __device__ inline bool nhwc_warp_phases(int64_t C, int V, int threads) {
  return nhwc_phases(C, V, threads) > 1 && kWarp % (C / V) == 0;
}
__host__ __device__ inline int64_t nhwc_groups(int64_t C, int V, int threads) {
  return nhwc_warp_phases(C, V, threads) ? threads / kWarp : nhwc_phases(C, V, threads);
}

// Dynamic shared memory: the staged sample (x forward, grad_y backward), then acc_t g, gate [C], u [R], redx
// [P*C or 0], and for the backward dz, coef [C], du [R], redg [P*C or 0].
inline int64_t fused_smem_bytes(int64_t C, int64_t HW, int64_t R, size_t elem, size_t acc, int V, bool cl,
                                bool backward) {
  const int64_t red = cl && nhwc_phases(C, V, kThreads) > 1 ? nhwc_groups(C, V, kThreads) * C : 0;
  const int64_t accs = backward ? 4 * C + 2 * R + 2 * red : 2 * C + R + red;
  return round16(C * HW * int64_t(elem)) + accs * int64_t(acc);
}

// One CTA a sample; V elements a vector (V divides HW for NCHW, C for NHWC). out: y, or grad_x with kBackward.
template <typename scalar_t, typename w_t, typename acc_t, int V, bool kCL, bool kBackward>
__global__ void __launch_bounds__(kThreads)
    se_fused_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gy, scalar_t* __restrict__ out,
                    const w_t* __restrict__ w1, const w_t* __restrict__ b1, const w_t* __restrict__ w2,
                    const w_t* __restrict__ b2, int C, int HW, int R, acc_t* __restrict__ dz_out,
                    acc_t* __restrict__ h_out, acc_t* __restrict__ du_out, acc_t* __restrict__ g_out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  using Vec = gpu::VecT<scalar_t, V>;
  const int n = C * HW, nv = n / V;
  const int P = kCL ? int(nhwc_phases(C, V, blockDim.x)) : 1;
  const bool warp_phases = kCL && nhwc_warp_phases(C, V, blockDim.x);
  const int groups = kCL ? int(nhwc_groups(C, V, blockDim.x)) : 1, red_n = P > 1 ? groups * C : 0;
  Vec* stage = reinterpret_cast<Vec*>(smem_raw);
  acc_t* g = reinterpret_cast<acc_t*>(smem_raw + round16(int64_t(n) * sizeof(scalar_t)));
  acc_t* gate = g + C;
  acc_t* u = gate + C;
  acc_t* redx = u + R;
  acc_t* dz = redx + red_n;  // the sums of grad_y * x first, dL/dz after the gate
  acc_t* coef = dz + C;
  acc_t* du = coef + C;
  acc_t* redg = du + R;
  const int64_t b = blockIdx.x;
  const Vec* xv = reinterpret_cast<const Vec*>(x + b * n);
  const Vec* gv = kBackward ? reinterpret_cast<const Vec*>(gy + b * n) : nullptr;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int warp = tid / kWarp, lane = tid % kWarp, warps = nthreads / kWarp;
  const acc_t inv_hw = acc_t(1) / acc_t(HW);

  // 1. The one read of x (and grad_y): stage x (forward) or grad_y (backward), sum x and grad_y * x per channel.
  if constexpr (!kCL) {  // a warp per channel, lanes along its HW / V contiguous vectors
    const int hv = HW / V;
    for (int c = warp; c < C; c += warps) {
      acc_t sx = 0, sg = 0;
      for (int i = lane; i < hv; i += kWarp) {
        const int j = c * hv + i;
        const Vec v = xv[j];
        if constexpr (kBackward) {
          const Vec q = gv[j];
          stage[j] = q;
#pragma unroll
          for (int k = 0; k < V; ++k) sg += static_cast<acc_t>(q.v[k]) * static_cast<acc_t>(v.v[k]);
        } else {
          stage[j] = v;
        }
#pragma unroll
        for (int k = 0; k < V; ++k) sx += static_cast<acc_t>(v.v[k]);
      }
      sx = warp_sum(sx);
      if constexpr (kBackward) sg = warp_sum(sg);
      if (lane == 0) {
        g[c] = sx * inv_hw;
        if constexpr (kBackward) dz[c] = sg;
      }
    }
  } else {  // thread (phase ph, column cv): V channels, pixels ph, ph + P, ... (coalesced across cv)
    const int cols = C / V;
    for (int t = tid; t < P * cols; t += nthreads) {
      const int cv = t % cols, ph = t / cols;
      acc_t sx[V], sg[V];
#pragma unroll
      for (int k = 0; k < V; ++k) sx[k] = sg[k] = 0;
      for (int p = ph; p < HW; p += P) {
        const int j = p * cols + cv;
        const Vec v = xv[j];
        if constexpr (kBackward) {
          const Vec q = gv[j];
          stage[j] = q;
#pragma unroll
          for (int k = 0; k < V; ++k) sg[k] += static_cast<acc_t>(q.v[k]) * static_cast<acc_t>(v.v[k]);
        } else {
          stage[j] = v;
        }
#pragma unroll
        for (int k = 0; k < V; ++k) sx[k] += static_cast<acc_t>(v.v[k]);
      }
      // warp_phases: every thread is active (P * cols == blockDim.x) and lanes cv, cv + cols, ... of a warp hold
      // one column's phases: add them (fixed xor order), lanes < cols write the warp's sums as group `warp`.
      int grp = ph;
      if (warp_phases) {
        for (int off = cols; off < kWarp; off <<= 1) {
#pragma unroll
          for (int k = 0; k < V; ++k) {
            sx[k] += __shfl_xor_sync(0xffffffffu, sx[k], off);
            if constexpr (kBackward) sg[k] += __shfl_xor_sync(0xffffffffu, sg[k], off);
          }
        }
        grp = warp;
        if (lane >= cols) continue;
      }
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int c = cv * V + k;
        if (P == 1) {
          g[c] = sx[k] * inv_hw;
          if constexpr (kBackward) dz[c] = sg[k];
        } else {
          redx[grp * C + c] = sx[k];
          if constexpr (kBackward) redg[grp * C + c] = sg[k];
        }
      }
    }
    if (P > 1) {
      __syncthreads();
      for (int c = tid; c < C; c += nthreads) {
        acc_t sx = 0, sg = 0;
        for (int q = 0; q < groups; ++q) {
          sx += redx[q * C + c];
          if constexpr (kBackward) sg += redg[q * C + c];
        }
        g[c] = sx * inv_hw;
        if constexpr (kBackward) dz[c] = sg;
      }
    }
  }
  __syncthreads();

  // 2. The MLP (se_gate_mlp_kernel's arithmetic, from shared memory). u[r] = b1[r] + W1[r, :] . g, a warp a row.
  for (int r = warp; r < R; r += warps) {
    acc_t a = 0;
    for (int c = lane; c < C; c += kWarp) a += static_cast<acc_t>(w1[int64_t(r) * C + c]) * g[c];
    a = warp_sum(a);
    if (lane == 0) u[r] = a + static_cast<acc_t>(b1[r]);
  }
  __syncthreads();
  for (int c = tid; c < C; c += nthreads) {
    acc_t z = static_cast<acc_t>(b2[c]);
    for (int r = 0; r < R; ++r) z += static_cast<acc_t>(w2[int64_t(c) * R + r]) * relu(u[r]);
    const acc_t s = sigmoid(z);
    gate[c] = s;
    if constexpr (kBackward) {
      dz[c] = dz[c] * s * (acc_t(1) - s);  // dL/ds[c] = sum_hw grad_y x, times the sigmoid's derivative
      dz_out[b * C + c] = dz[c];
      g_out[b * C + c] = g[c];
    }
  }
  if constexpr (kBackward) {
    __syncthreads();
    // du[r] = [u[r] > 0] * W2[:, r] . dz (NaN u passes, as torch's threshold_backward)
    for (int r = warp; r < R; r += warps) {
      acc_t a = 0;
      if (!(u[r] <= acc_t(0))) {
        for (int c = lane; c < C; c += kWarp) a += static_cast<acc_t>(w2[int64_t(c) * R + r]) * dz[c];
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
    for (int c = tid; c < C; c += nthreads) {
      acc_t a = 0;
      for (int r = 0; r < R; ++r) a += static_cast<acc_t>(w1[int64_t(r) * C + c]) * du[r];
      coef[c] = a * inv_hw;
    }
  }
  __syncthreads();

  // 3. out[b] = staged * gate[c] (+ coef[c]), 16-byte vectors.
  Vec* ov = reinterpret_cast<Vec*>(out + b * n);
  for (int i = tid; i < nv; i += nthreads) {
    const int e = i * V;
    Vec v = stage[i];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int c = kCL ? e % C + k : e / HW;
      acc_t r = static_cast<acc_t>(v.v[k]) * gate[c];
      if constexpr (kBackward) r += coef[c];
      v.v[k] = static_cast<scalar_t>(r);
    }
    ov[i] = v;
  }
}

#ifdef RECOGFAST_CUDA_EMULATION
inline int emu_launches = 0;  // fused launches so far: the emulation checks that its fused cases took this path
#endif

// Opt-in dynamic shared memory per block of the current device (the emulation re-reads it: EMU_SMEM_OPTIN
// tests the fallback).
inline int64_t smem_optin() { return gpu::device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(); }

// Launches the fused kernel when sample b fits in shared memory and returns true; false (nothing launched) when
// it does not, and the caller runs the split path. gy, dz, h, du, g: backward only (null forward).
template <typename scalar_t, typename w_t, typename acc_t, bool kBackward>
bool launch(const scalar_t* x, const scalar_t* gy, scalar_t* out, const w_t* w1, const w_t* b1, const w_t* w2,
            const w_t* b2, int64_t B, int64_t C, int64_t HW, int64_t R, bool cl, acc_t* dz, acc_t* h, acc_t* du,
            acc_t* g, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  const int64_t inner = cl ? C : HW;
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vec = inner % kVec == 0 && aligned(x) && aligned(out) && (!kBackward || aligned(gy));
  const int V = vec ? kVec : 1;
  const int64_t bytes = fused_smem_bytes(C, HW, R, sizeof(scalar_t), sizeof(acc_t), V, cl, kBackward);
  if (bytes > smem_optin()) return false;
  auto go = [&](auto vec_tag, auto cl_tag) {
    constexpr int kV = decltype(vec_tag)::value;
    constexpr bool kCL = decltype(cl_tag)::value;
    auto kernel = se_fused_kernel<scalar_t, w_t, acc_t, kV, kCL, kBackward>;
    if (bytes > int64_t(gpu::kDefaultSmemBytes))
      RF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
    kernel<<<B, kThreads, bytes, stream>>>(x, gy, out, w1, b1, w2, b2, int(C), int(HW), int(R), dz, h, du, g);
    RF_CUDA_KERNEL_LAUNCH_CHECK();
  };
  using T = std::true_type;
  using F = std::false_type;
  if (vec && cl) go(std::integral_constant<int, kVec>{}, T{});
  else if (vec) go(std::integral_constant<int, kVec>{}, F{});
  else if (cl) go(std::integral_constant<int, 1>{}, T{});
  else go(std::integral_constant<int, 1>{}, F{});
#ifdef RECOGFAST_CUDA_EMULATION
  ++emu_launches;
#endif
  return true;
}

}  // namespace se_fused
}  // namespace recogfast
