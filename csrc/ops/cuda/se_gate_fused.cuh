// SE in one launch a sample (RECOGFAST_SE_VARIANT=fused): one CTA holds sample b in shared memory.
//   forward:  read x[b] once (16-byte vectors) into shared memory while summing each channel, the MLP and the
//             gate in the same CTA, then y[b] = staged x * gate: 2|x| of DRAM traffic, one launch (today's split
//             path: 3 launches and 3|x|, x read twice);
//   backward: read x[b] and grad_y[b] once, staging grad_y (x is needed only for the sums), the MLP forward
//             and backward, grad_x[b] = staged grad_y * gate + coef, and the per-sample vectors dz, g [C] and
//             h, du [R] that se_gate_weight_grad_kernel (se_gate_kernel.cu) sums over the batch in a fixed
//             order: 3|x|, two launches (split: 4 launches, 4|x|). Forward + backward: 5|x|, the DRAM floor of
//             benchmarks/test_se_gate_bench.py (split: 7|x|).
// Runs where the sample reads in 16-byte vectors (sample_stage::vectorizable: HW for NCHW, C for NHWC a multiple of
// 16 bytes' elements) and C*HW elements plus the accumulators (fused_smem_bytes) are within the device's opt-in
// shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin: 227 KB on sm_90, CUDA C++ Programming Guide,
// "Technical Specifications per Compute Capability"). bf16 NHWC with R = C/16 (forward / backward): 7x7x512
// 71 / 75 KB, 14x14x256 119 / 121 KB, 28x28x128 210 / 211 KB fit; 56x56x64 (392 KB of x alone) does not, and runs
// as a cluster of 2 CTAs a sample (sample_stage.cuh cluster_sums: 201 KB of x each; fp32, 4), compute capability
// 9.0+; NCHW 14x14 and 7x7 in bf16 (HW not a multiple of 8) keep the split path. One CTA an SM at 28x28 and 14x14, three at 7x7 (228 KB an SM): the latency of the one read of
// x is hidden by kThreads = 512 threads a CTA, not by more CTAs (unmeasured: the first GPU run times it).
// Variant (read on every call, one getenv): RECOGFAST_SE_VARIANT = "auto" (default: the tuned table's se_variant for
// the device and dtype, recogfast/tuned.py, else the split path -- the fused kernels have run only under the host
// emulation, tools/cuda_emulation, never on a GPU), "fused" (where the sample fits, the split path elsewhere) or
// "split". The streaming half (staging, sums, the write-back) is sample_stage.cuh's, shared with CUBS Block 1.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/sample_stage.cuh"

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

// RECOGFAST_SE_VARIANT (sample_stage::one_cta_wanted): the one-CTA kernels or the split path, per call.
inline bool fused_wanted(ScalarType dtype) {
  return sample_stage::one_cta_wanted("recogfast::se_gate", "RECOGFAST_SE_VARIANT", "se_variant", dtype);
}

// relu that keeps NaN, as torch.relu.
template <typename T>
__device__ __forceinline__ T relu(T u) {
  return u <= T(0) ? T(0) : u;
}

// Dynamic shared memory with K CTAs a sample: the staged part (x forward, grad_y backward; HW / K pixels), then
// acc_t g, gate [C], u [R], and for the backward dz, coef [C], du [R]; then the NHWC sum buffer (sample_stage.cuh,
// red_elems), then (K > 1) the part's sums [2][C].
inline int64_t fused_smem_bytes(int64_t C, int64_t HW, int64_t R, size_t elem, size_t acc, int V, bool cl,
                                bool backward, int K) {
  const int64_t accs = (backward ? 4 * C + 2 * R : 2 * C + R) + sample_stage::red_elems(C, V, kThreads, cl) +
                       (K > 1 ? 2 * C : 0);
  return sample_stage::round16(C * (HW / K) * int64_t(elem)) + accs * int64_t(acc);
}

// K CTAs a sample (1, or a cluster of K: sample_stage.cuh cluster_sums), blockIdx.x = b K + rank; V = 16 / element
// size elements a vector (V divides HW for NCHW, C for NHWC). out: y, or grad_x with kBackward.
template <typename scalar_t, typename w_t, typename acc_t, int V, bool kCL, bool kBackward>
__global__ void __launch_bounds__(kThreads, kBackward ? 1 : 2)
    se_fused_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gy, scalar_t* __restrict__ out,
                    const w_t* __restrict__ w1, const w_t* __restrict__ b1, const w_t* __restrict__ w2,
                    const w_t* __restrict__ b2, int C, int HW, int R, int K, acc_t* __restrict__ dz_out,
                    acc_t* __restrict__ h_out, acc_t* __restrict__ du_out, acc_t* __restrict__ g_out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  using Vec = gpu::VecT<scalar_t, V>;
  const sample_stage::Part p = sample_stage::part_of<kCL>(C, HW, K);
  Vec* stage = reinterpret_cast<Vec*>(smem_raw);
  acc_t* g = reinterpret_cast<acc_t*>(smem_raw + sample_stage::round16(int64_t(C) * p.HW * sizeof(scalar_t)));
  acc_t* gate = g + C;
  acc_t* u = gate + C;
  acc_t* dz = u + R;  // the sums of grad_y * x first, dL/dz after the gate
  acc_t* coef = dz + (kBackward ? C : 0);
  acc_t* du = coef + (kBackward ? C : 0);
  acc_t* red = du + (kBackward ? R : 0);
  acc_t* part = red + sample_stage::red_elems(C, V, blockDim.x, kCL);  // [2][C], K > 1
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int warp = tid / kWarp, lane = tid % kWarp, warps = nthreads / kWarp;
  const acc_t inv_hw = acc_t(1) / acc_t(HW);

  // 1. The one read of x (and grad_y): stage x (forward) or grad_y (backward), sum x and grad_y * x per channel.
  //    K > 1: this CTA's part, then the cluster's totals.
  sample_stage::sample_sums<scalar_t, acc_t, acc_t, V, kCL, kBackward>(
      x, gy, p, stage, red, part, C, HW, K, [&](int c, acc_t s) { g[c] = s * inv_hw; },
      [&](int c, acc_t s) { dz[c] = s; });
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
      if (p.rank == 0) {  // the sample's vectors, once (every CTA of a cluster holds the same)
        dz_out[p.b * C + c] = dz[c];
        g_out[p.b * C + c] = g[c];
      }
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
        if (p.rank == 0) {
          du_out[p.b * R + r] = a;
          h_out[p.b * R + r] = relu(u[r]);
        }
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
  sample_stage::apply_staged<scalar_t, acc_t, V, kCL, kBackward>(stage, reinterpret_cast<Vec*>(out + p.x0), gate,
                                                                  coef, C, p.HW, HW / V);
}

#ifdef RECOGFAST_CUDA_EMULATION
inline int emu_launches = 0;  // fused launches so far: the emulation checks that its fused cases took this path
inline int emu_clusters = 0;  // of them, launches of clusters (K > 1 CTAs a sample)
#endif

// Launches the fused kernel when sample b can be read in 16-byte vectors (sample_stage::vectorizable) and fits in
// shared memory and returns true; false (nothing launched) otherwise, and the caller runs the split path.
// gy, dz, h, du, g: backward only (null forward).
template <typename scalar_t, typename w_t, typename acc_t, bool kBackward>
bool launch(const scalar_t* x, const scalar_t* gy, scalar_t* out, const w_t* w1, const w_t* b1, const w_t* w2,
            const w_t* b2, int64_t B, int64_t C, int64_t HW, int64_t R, bool cl, acc_t* dz, acc_t* h, acc_t* du,
            acc_t* g, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(scalar_t);  // the one vector width the kernel is built for
  if (!sample_stage::vectorizable<scalar_t>(C, HW, cl, {x, out, gy})) return false;
  auto bytes = [&](int K) {
    return fused_smem_bytes(C, HW, R, sizeof(scalar_t), sizeof(acc_t), kVec, cl, kBackward, K);
  };
  const bool clusters = sample_stage::has_clusters(se_fused_kernel<scalar_t, w_t, acc_t, kVec, false, kBackward>);
  const int K = sample_stage::cluster_size(HW, kVec, cl, sample_stage::smem_optin(), clusters, bytes);
  if (K == 0) return false;
  sample_stage::with_layout(cl, [&](auto cl_tag) {
    sample_stage::launch_cluster(se_fused_kernel<scalar_t, w_t, acc_t, kVec, decltype(cl_tag)::value, kBackward>, B, K,
                                 kThreads, bytes(K), stream, x, gy, out, w1, b1, w2, b2, int(C), int(HW), int(R), K,
                                 dz, h, du, g);
  });
#ifdef RECOGFAST_CUDA_EMULATION
  ++emu_launches;
  emu_clusters += K > 1;
#endif
  return true;
}

}  // namespace se_fused
}  // namespace recogfast
