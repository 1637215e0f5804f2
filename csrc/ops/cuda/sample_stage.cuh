// One CTA a sample, the streaming half of a channel gate (the one-CTA variants of SE, se_gate_fused.cuh, and of
// CUBS Block 1, cubs_channel_fused.cuh): sample b of x (and of grad_y) is read from DRAM once, in 16-byte vectors
// where they fit, staged in shared memory (whole, or a cluster's part of it: cluster_sums below) while each channel
// is summed, and after the op's head has made the gate from those sums, written back once from the stage:
//   forward:  stage x, sum x per channel; out = x * gate[c]                       (2|x| of DRAM traffic)
//   backward: stage grad_y, sum x and grad_y * x per channel; out = grad_y * gate[c] + coef[c]  (3|x|)
// Sums: products in acc_t (as the split pool, channel_gate.cuh), accumulated in sum_t (SE: acc_t; Block 1: double,
// the accuracy rule of issue 25), each thread serially, then across its lanes by shuffles (fixed xor order), then
// (NHWC) across the CTA's pixel groups through one [groups, C] sum_t buffer in a fixed order: deterministic.
// Vectors: always 16 bytes (V = 16 / element size); a sample that cannot be read so takes the op's split path
// (vectorizable).
// The NHWC layout splits the threads into P pixel phases of C / V vector columns (P = 1 when the columns alone
// fill the CTA); P > 1 needs the buffer (red_elems), used once for the x sums and again for the grad_y * x sums.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "ops/cuda/common.cuh"

#ifndef RECOGFAST_CUDA_EMULATION
#include <cooperative_groups.h>  // this_cluster (sm_90); the host emulation has its own (emu.h)
#endif

namespace recogfast {
namespace sample_stage {

using gpu::kWarp;

__host__ __device__ inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

// NHWC sums: threads split into P pixel phases of C/V vector columns each (P = 1 when the columns alone fill the
// block); P > 1 needs a [groups, C] buffer, summed over the groups in a fixed order. When the columns divide a warp,
// its 32 / cols phases of each column are first added by shuffles, so groups = warps (28x28x128 bf16: 16 x 128
// sums, not 32 x 128).
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
// Elements of the sum buffer a CTA of `threads` needs (0: none).
__host__ __device__ inline int64_t red_elems(int64_t C, int V, int threads, bool channels_last) {
  return channels_last && nhwc_phases(C, V, threads) > 1 ? nhwc_groups(C, V, threads) * C : 0;
}

// Stages sample xv (kBackward: gv, grad_y) of C channels x HW pixels, V elements a vector, into `stage` and hands
// each channel's sum of x to fx(c, sum) and (kBackward) of grad_y * x to fg(c, sum), each channel once, by one
// thread. The caller synchronises the CTA before it reads what fx / fg stored. The pixels may be one CTA's part of a
// sample (a cluster's, below): NHWC, a run of HW whole pixels (xv at its first); NCHW, HW pixels of each channel row,
// rows src_row vectors apart in x (HW / V for a whole sample), staged HW / V apart.
template <typename scalar_t, typename acc_t, typename sum_t, int V, bool kCL, bool kBackward, typename FX, typename FG>
__device__ __forceinline__ void stage_sums(const gpu::VecT<scalar_t, V>* __restrict__ xv,
                                           const gpu::VecT<scalar_t, V>* __restrict__ gv,
                                           gpu::VecT<scalar_t, V>* __restrict__ stage, sum_t* __restrict__ red, int C,
                                           int HW, int src_row, FX fx, FG fg) {
  using Vec = gpu::VecT<scalar_t, V>;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int warp = tid / kWarp, lane = tid % kWarp, warps = nthreads / kWarp;
  // One vector of x (and grad_y) into the stage and the running sums (M = V for NHWC's per-channel sums, 1 for NCHW).
  auto take = [&](int src, int j, auto& sx, auto& sg) {  // source vector src, stage vector j
    const Vec v = xv[src];
    if constexpr (kBackward) {
      const Vec q = gv[src];
      stage[j] = q;
#pragma unroll
      for (int k = 0; k < V; ++k) sg[kCL ? k : 0] += sum_t(static_cast<acc_t>(q.v[k]) * static_cast<acc_t>(v.v[k]));
    } else {
      stage[j] = v;
    }
#pragma unroll
    for (int k = 0; k < V; ++k) sx[kCL ? k : 0] += sum_t(static_cast<acc_t>(v.v[k]));
  };
  if constexpr (!kCL) {
    // NCHW: L lanes a channel (the power of two from HW / V up to 32), 32 / L channels a warp at a time, so that a
    // small sample keeps every lane loading (4x4: 2 vectors a channel, 16 channels a warp); the group's sums by xor
    // shuffles within it. Every lane runs every round (the shuffles take the whole warp); past C it adds nothing.
    const int hv = HW / V;
    int L = 1;
    while (L < hv && L < kWarp) L <<= 1;
    const int per_warp = kWarp / L, sub = lane % L;
    for (int c0 = warp * per_warp; c0 < C; c0 += warps * per_warp) {
      const int c = c0 + lane / L;
      sum_t sx[1] = {0}, sg[1] = {0};
      if (c < C)
        for (int i = sub; i < hv; i += L) take(c * src_row + i, c * hv + i, sx, sg);
      for (int off = L >> 1; off > 0; off >>= 1) {
        sx[0] += __shfl_xor_sync(0xffffffffu, sx[0], off);
        if constexpr (kBackward) sg[0] += __shfl_xor_sync(0xffffffffu, sg[0], off);
      }
      if (sub == 0 && c < C) {
        fx(c, sx[0]);
        if constexpr (kBackward) fg(c, sg[0]);
      }
    }
    return;
  }
  // NHWC: thread (phase ph, column cv) holds V channels and sums pixels ph, ph + P, ... (coalesced across cv).
  const int cols = C / V, P = int(nhwc_phases(C, V, nthreads));
  if (P == 1) {  // the columns fill the CTA: each thread owns whole channels, no buffer
    for (int cv = tid; cv < cols; cv += nthreads) {
      sum_t sx[V], sg[V];
#pragma unroll
      for (int k = 0; k < V; ++k) sx[k] = sg[k] = 0;
      for (int p = 0; p < HW; ++p) take(p * cols + cv, p * cols + cv, sx, sg);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        fx(cv * V + k, sx[k]);
        if constexpr (kBackward) fg(cv * V + k, sg[k]);
      }
    }
    return;
  }
  // P > 1: P * cols <= nthreads, so a thread owns at most one (phase, column).
  const int cv = tid % cols, ph = tid / cols;
  sum_t sx[V], sg[V];
#pragma unroll
  for (int k = 0; k < V; ++k) sx[k] = sg[k] = 0;
  if (ph < P)
    for (int p = ph; p < HW; p += P) take(p * cols + cv, p * cols + cv, sx, sg);
  // warp phases: every thread is active (P * cols == nthreads) and lanes cv, cv + cols, ... of a warp hold one
  // column's phases: add them (fixed xor order); lanes < cols write the warp's sums as group `warp`.
  int grp = ph;
  bool writer = ph < P;
  if (nhwc_warp_phases(C, V, nthreads)) {
    for (int off = cols; off < kWarp; off <<= 1) {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        sx[k] += __shfl_xor_sync(0xffffffffu, sx[k], off);
        if constexpr (kBackward) sg[k] += __shfl_xor_sync(0xffffffffu, sg[k], off);
      }
    }
    grp = warp;
    writer = lane < cols;
  }
  const int groups = int(nhwc_groups(C, V, nthreads));
  // The x sums through the buffer, then (backward) the grad_y * x sums through the same buffer.
#pragma unroll
  for (int pass = 0; pass < (kBackward ? 2 : 1); ++pass) {
    if (pass == 1) __syncthreads();  // every thread has read the x sums
    if (writer) {
#pragma unroll
      for (int k = 0; k < V; ++k) red[grp * C + cv * V + k] = pass == 0 ? sx[k] : sg[k];
    }
    __syncthreads();
    for (int c = tid; c < C; c += nthreads) {
      sum_t s = 0;
      for (int q = 0; q < groups; ++q) s += red[q * C + c];
      if (pass == 0) fx(c, s);
      else fg(c, s);
    }
  }
}

// out = staged * gate[c] (+ coef[c] with kBackward), 16-byte vectors, after the CTA has synchronised on the gate;
// the stage and out laid out as stage_sums's stage and x.
template <typename scalar_t, typename acc_t, int V, bool kCL, bool kBackward>
__device__ __forceinline__ void apply_staged(const gpu::VecT<scalar_t, V>* __restrict__ stage,
                                             gpu::VecT<scalar_t, V>* __restrict__ ov, const acc_t* __restrict__ gate,
                                             const acc_t* __restrict__ coef, int C, int HW, int src_row) {
  using Vec = gpu::VecT<scalar_t, V>;
  const int nv = C * HW / V, hv = HW / V;
  for (int i = threadIdx.x; i < nv; i += blockDim.x) {
    const int e = i * V;
    Vec v = stage[i];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int c = kCL ? e % C + k : e / HW;
      acc_t r = static_cast<acc_t>(v.v[k]) * gate[c];
      if constexpr (kBackward) r += coef[c];
      v.v[k] = static_cast<scalar_t>(r);
    }
    ov[kCL ? i : i / hv * src_row + i % hv] = v;  // NCHW: stage row i / hv, rows src_row apart in out
  }
}

// A sample too large for one CTA's shared memory (56x56x64 bf16: 392 KB) is split over a cluster of K CTAs
// (thread block clusters, compute capability 9.0; CUDA C++ Programming Guide, "Thread Block Clusters" and
// "Distributed Shared Memory"): CTA r of the cluster stages pixels [r HW / K, (r + 1) HW / K) of every channel and
// sums them into part [2][C] of its shared memory; cluster_sums then gives every CTA the same totals, CTA 0's part
// plus CTA 1's ... in rank order, read through distributed shared memory. Each CTA then runs the head itself (the
// same inputs, the same code: the same gate) and writes its own pixels. DRAM traffic stays 2|x| / 3|x|.
template <typename sum_t, typename F>
__device__ __forceinline__ void cluster_sums(const sum_t* part, int n, int K, F fin) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // never reached: has_clusters() is false for this code, and cluster_size() gives K = 1
#else
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every CTA's part is in its shared memory
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    sum_t s = 0;
    for (int q = 0; q < K; ++q) s += cluster.map_shared_rank(part, q)[c];
    fin(c, s);
  }
  cluster.sync();  // no CTA exits (its shared memory gone) while another still reads it
#endif
}

// This CTA's part of its sample when K CTAs take one (blockIdx.x = b K + rank, each HW / K pixels of every channel;
// K = 1: the whole sample): the sample b, the part's first element x0 in x, its pixels HW / K.
struct Part {
  int64_t b, x0;
  int rank, HW;
};
template <bool kCL>
__device__ __forceinline__ Part part_of(int C, int HW, int K) {
  const int rank = blockIdx.x % K, HWk = HW / K;
  const int64_t b = blockIdx.x / K;
  return {b, b * C * HW + int64_t(rank) * HWk * (kCL ? C : 1), rank, HWk};
}

// stage_sums over this CTA's part p (x and grad_y at the sample's part, rows HW / V vectors apart), then, for K > 1,
// the cluster's totals through `part_sums` ([2][C] of this CTA's shared memory, cluster_sums): fx(c, sum) and
// fg(c, sum) get each channel's sums over the whole sample either way. The caller synchronises the CTA after.
template <typename scalar_t, typename acc_t, typename sum_t, int V, bool kCL, bool kBackward, typename FX, typename FG>
__device__ __forceinline__ void sample_sums(const scalar_t* x, const scalar_t* gy, const Part& p,
                                            gpu::VecT<scalar_t, V>* stage, sum_t* red, sum_t* part_sums, int C,
                                            int HW, int K, FX fx, FG fg) {
  using Vec = gpu::VecT<scalar_t, V>;
  stage_sums<scalar_t, acc_t, sum_t, V, kCL, kBackward>(
      reinterpret_cast<const Vec*>(x + p.x0), kBackward ? reinterpret_cast<const Vec*>(gy + p.x0) : nullptr, stage,
      red, C, p.HW, HW / V, [&](int c, sum_t s) { K > 1 ? void(part_sums[c] = s) : fx(c, s); },
      [&](int c, sum_t s) { K > 1 ? void(part_sums[C + c] = s) : fg(c, s); });
  if (K > 1) {
    cluster_sums(part_sums, kBackward ? 2 * C : C, K, [&](int c, sum_t s) {
      if (c < C) fx(c, s);
      else fg(c - C, s);
    });
  }
}

// Whether `kernel` runs its cluster code on the current device: its code was compiled for compute capability 9.0
// or later (ptxVersion; a build for older GPUs only, JIT-compiled for a newer one, has the trap instead). Asked once
// per kernel type (a driver call; every kernel of the extension is built for the same architectures).
template <typename Kernel>
bool has_clusters(Kernel kernel) {
  static const bool ok = [kernel] {
    cudaFuncAttributes a{};
    RF_CUDA_CHECK(cudaFuncGetAttributes(&a, kernel));
    return a.ptxVersion >= 90;
  }();
  return ok;
}

// The CTAs a sample takes: the smallest K of 1, 2, 4, 8 (the portable cluster sizes; K > 1 only where `clusters`,
// has_clusters) that divides HW, keeps each CTA's NCHW row part a whole number of vectors, and whose part fits in
// `optin` bytes (bytes(K): the launch's shared memory with K CTAs a sample); 0 where none does (the split path).
template <typename Bytes>
int cluster_size(int64_t HW, int V, bool channels_last, int64_t optin, bool clusters, Bytes bytes) {
  for (int K = 1; K <= (clusters ? 8 : 1); K *= 2) {
    if (HW % K != 0 || (!channels_last && (HW / K) % V != 0)) continue;
    if (bytes(K) <= optin) return K;
  }
  return 0;
}

// Whether a one-CTA kernel can read the sample in 16-byte vectors: the innermost extent (HW for NCHW, C for NHWC)
// divides into them and every pointer is 16-byte aligned. Only then does it run (else the split path): with scalar
// loads (NCHW 7x7 or 14x14 in bf16, an odd C) its per-channel loops keep too few bytes in flight to stream a sample
// at DRAM speed; V = 16 / element size is the one width the kernels are built for.
template <typename scalar_t>
bool vectorizable(int64_t C, int64_t HW, bool channels_last, std::initializer_list<const void*> ptrs) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  if ((channels_last ? C : HW) % kVec != 0) return false;
  for (const void* p : ptrs)
    if (p && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// Opt-in dynamic shared memory per block of the current device (the emulation re-reads it: EMU_SMEM_OPTIN
// tests the fallback to the split path).
inline int64_t smem_optin() { return gpu::device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(); }

// Whether a one-CTA variant runs (where the sample fits): variable `var` = "fused", or "auto" / unset where the
// tuned table's `knob` (recogfast/tuned.py) says "fused" for the device and x's dtype; "split" or no table entry:
// the split path. Read on every call (one getenv); another value is a one-line error naming the variable.
inline bool one_cta_wanted(const char* op, const char* var, const char* knob, ScalarType dtype) {
  const char* tuned = gpu::tuned_value(knob, dtype);
  const int v = gpu::env_choice(op, var, {"auto", "fused", "split"}, 0, tuned);
  return v == 1 || (v == 0 && tuned && std::strcmp(tuned, "fused") == 0);
}

// Launches a one-CTA kernel: B CTAs of `threads`, `bytes` of dynamic shared memory (opted in above the default
// 48 KiB).
template <typename Kernel, typename... Args>
void launch_one_cta(Kernel kernel, int64_t B, int threads, int64_t bytes, cudaStream_t stream, Args... args) {
  if (bytes > int64_t(gpu::kDefaultSmemBytes))
    RF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  kernel<<<B, threads, bytes, stream>>>(args...);
  RF_CUDA_KERNEL_LAUNCH_CHECK();
}

#ifdef RECOGFAST_CUDA_EMULATION
inline int emu_last_cluster = 0;  // the K of the last launch_cluster (the emulation checks the launchers' choice)
#endif

// Launches a one-CTA kernel split over clusters of K CTAs a sample (grid = B K, each CTA `bytes` of dynamic shared
// memory); K = 1 is launch_one_cta.
template <typename... P, typename... Args>
void launch_cluster(void (*kernel)(P...), int64_t B, int K, int threads, int64_t bytes, cudaStream_t stream,
                    Args... args) {
#ifdef RECOGFAST_CUDA_EMULATION
  emu_last_cluster = K;
#endif
  if (K == 1) return launch_one_cta(kernel, B, threads, bytes, stream, args...);
  RF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
#ifdef RECOGFAST_CUDA_EMULATION
  emu_launch_cluster(kernel, emu_cfg(B * K, threads, bytes, stream), K, args...);
#else
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(B * K));
  cfg.blockDim = dim3(unsigned(threads));
  cfg.dynamicSmemBytes = size_t(bytes);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = unsigned(K);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  RF_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<P>(args)...));
#endif
}

// Runs go(bool_constant<channels_last>) for the layout of a launch: the two instantiations a one-CTA kernel has for
// each dtype (16-byte vectors: V = 16 / element size).
template <typename Go>
void with_layout(bool channels_last, Go go) {
  if (channels_last) go(std::true_type{});
  else go(std::false_type{});
}

}  // namespace sample_stage
}  // namespace recogfast
