// CUBS Block 1 in one launch a sample (RECOGFAST_CUBS_CHANNEL_VARIANT=fused; issue 25): one CTA holds sample b in
// shared memory, as SE's one-CTA variant (se_gate_fused.cuh), with Block 1's head (cubs_channel_head.cuh) between
// the two streaming halves (sample_stage.cuh):
//   forward:  read x[b] once into shared memory while summing each channel (in double), the head, then y[b] =
//             staged x * gate: 2|x| of DRAM traffic, one launch (split path: pool, head, apply: 3 launches, 3|x|);
//   backward: read x[b] and grad_y[b] once, staging grad_y, sums of x and grad_y * x, the head forward and backward,
//             grad_x[b] = staged grad_y * gate + coef, and the per-sample vectors g, dz [C], f [N], dqkv [3N] that
//             cubs_channel_weight_grad_kernel sums over the batch: 3|x|, two launches (split: 4 launches, 4|x|).
// The head's arithmetic is the split path's (head_sample, the same code); only the channel sums differ in order
// (a thread's pixels, then its lanes, then the CTA's pixel groups, all in double, then one rounding of the mean),
// so the two paths agree to the sums' rounding (tools/cuda_emulation/channel_fused.h checks both against the CPU
// kernel). Fits where C*HW elements of x plus the sum buffer (doubles, NHWC with several pixel phases) and the
// head's 2 C + 11 N accumulators plus gate and coef [C] are within the device's opt-in shared memory (227 KiB on
// sm_90), forward and backward alike (the sum buffer serves the x sums, then the grad_y * x sums): bf16, N = C / 2,
// NCHW / NHWC: 7x7x512 68 / 100 KiB, 14x14x256 108 / 140 KiB, 28x28x128 201 / 217 KiB; 56x56x64 (392 KiB of x
// alone) runs as a cluster of 2 CTAs a sample (sample_stage.cuh cluster_sums; 199 / 207 KiB each), compute capability
// 9.0+; a sample that cannot be read in 16-byte vectors (sample_stage::vectorizable: NCHW 14x14 and 7x7 in bf16) or
// that no cluster of up to 8 holds keeps the split path. 512 threads a CTA (fp64: 256, its head takes
// 155 registers a thread).
// Variant (read on every call, sample_stage::one_cta_wanted): "auto" (default: the tuned table's
// cubs_channel_variant for the device and dtype, else the split path: these kernels have run only under the host
// emulation, never on a GPU), "fused" or "split". RECOGFAST_CUBS_CHANNEL_THREADS sizes the split path's head
// kernel only.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "ops/cuda/cubs_channel_head.cuh"
#include "ops/cuda/sample_stage.cuh"

#ifndef RECOGFAST_CUBS_FUSED_THREADS
#ifdef RECOGFAST_CUDA_EMULATION
#define RECOGFAST_CUBS_FUSED_THREADS 64  // 2 warps: channel loops, rows and NHWC pixel phases wrap on small inputs
#else
#define RECOGFAST_CUBS_FUSED_THREADS 512
#endif
#endif

namespace recogfast {
namespace cubs_channel_fused {

using cubs_cuda::Params;
using sample_stage::round16;

template <typename scalar_t>
constexpr int kVec = 16 / sizeof(scalar_t);  // elements a 16-byte vector: the one width the kernel is built for

template <typename acc_t>  // threads a CTA (fp64 at most 256: its head's registers)
constexpr int kThreads = std::is_same_v<acc_t, double> ? std::min(256, RECOGFAST_CUBS_FUSED_THREADS)
                                                       : RECOGFAST_CUBS_FUSED_THREADS;

inline bool fused_wanted(ScalarType dtype) {
  return sample_stage::one_cta_wanted("recogfast::cubs_channel", "RECOGFAST_CUBS_CHANNEL_VARIANT",
                                      "cubs_channel_variant", dtype);
}

// Dynamic shared memory with K CTAs a sample: the staged part (HW / K pixels), the double sum buffer, (K > 1) the
// part's double sums [2][C], the head's accumulators, gate and coef [C].
inline int64_t smem_bytes(int64_t C, int64_t HW, int64_t N, size_t elem, size_t acc, int V, bool cl, int threads,
                          int K) {
  return round16(C * (HW / K) * int64_t(elem)) +
         (sample_stage::red_elems(C, V, threads, cl) + (K > 1 ? 2 * C : 0)) * int64_t(sizeof(double)) +
         (cubs_cuda::head_smem_elems(C, N) + 2 * C) * int64_t(acc);
}

// K CTAs a sample (1, or a cluster of K: sample_stage.cuh cluster_sums; blockIdx.x = b K + rank, every CTA runs
// the head, CTA 0 writes the sample's vectors); V = kVec elements a vector (V divides HW for NCHW, C for NHWC).
// out: y, or grad_x with kBackward.
// Registers (ptxas -v, nvcc 13.0, sm_90, 16-bit x): the forward fits two CTAs an SM in 54-64 a thread, no spill; the
// backward takes 93-119 and one CTA an SM (asked for: ptxas's own target of 64 spilled 40-48 bytes in the NCHW and
// fp32 NHWC backwards), which is the occupancy the staged sample allows from 14x14x256 on anyway.
template <typename scalar_t, typename w_t, typename acc_t, int V, bool kCL, bool kBackward>
__global__ void __launch_bounds__(kThreads<acc_t>, kBackward ? 1 : 2)
    cubs_channel_fused_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gy,
                              scalar_t* __restrict__ out, const Params<w_t> prm, int C, int HW, int N, int K,
                              acc_t* __restrict__ g_out, acc_t* __restrict__ f_out, acc_t* __restrict__ dz_out,
                              acc_t* __restrict__ dqkv_out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  using Vec = gpu::VecT<scalar_t, V>;
  const sample_stage::Part p = sample_stage::part_of<kCL>(C, HW, K);
  Vec* stage = reinterpret_cast<Vec*>(smem_raw);
  double* red = reinterpret_cast<double*>(smem_raw + round16(int64_t(C) * p.HW * sizeof(scalar_t)));
  double* part = red + sample_stage::red_elems(C, V, blockDim.x, kCL);  // [2][C], K > 1
  acc_t* head = reinterpret_cast<acc_t*>(part + (K > 1 ? 2 * C : 0));
  acc_t* gate = head + cubs_cuda::head_smem_elems(C, N);
  acc_t* coef = gate + C;
  // 1. The one read of x (and grad_y) into the stage and the head's g = mean x, dz = sum grad_y x (K > 1: this
  //    CTA's part, then the cluster's totals).
  sample_stage::sample_sums<scalar_t, acc_t, double, V, kCL, kBackward>(
      x, gy, p, stage, red, part, C, HW, K, [&](int c, double s) { head[c] = acc_t(s / double(HW)); },
      [&](int c, double s) { head[C + c] = acc_t(s); });
  __syncthreads();
  // 2. The head (the split path's code), gate and coef into shared memory; the sample's vectors from CTA 0.
  const bool first = p.rank == 0;
  cubs_cuda::head_sample<w_t, acc_t, kBackward>(head, prm, p.b, C, N, HW, gate, coef, first ? g_out : nullptr,
                                                first ? f_out : nullptr, first ? dz_out : nullptr,
                                                first ? dqkv_out : nullptr);
  __syncthreads();
  // 3. out = staged * gate (+ coef), this CTA's part.
  sample_stage::apply_staged<scalar_t, acc_t, V, kCL, kBackward>(stage, reinterpret_cast<Vec*>(out + p.x0), gate,
                                                                  coef, C, p.HW, HW / V);
}

#ifdef RECOGFAST_CUDA_EMULATION
inline int emu_launches = 0;  // fused launches so far: the emulation checks that its fused cases took this path
inline int emu_clusters = 0;  // of them, launches of clusters (K > 1 CTAs a sample)
#endif

// The launch where the variant is wanted, the sample can be read in 16-byte vectors (sample_stage::vectorizable)
// and one CTA or a cluster of K holds it (sample_stage::cluster_size): {K, bytes a CTA}; K = 0 otherwise (the caller
// runs the split path). gy: the backward's grad_y (null forward).
struct Plan {
  int K = 0;
  int64_t bytes = 0;
};
template <typename scalar_t, typename acc_t>
Plan plan(const scalar_t* x, const scalar_t* gy, const scalar_t* out, int64_t C, int64_t HW, int64_t N, bool cl,
          ScalarType dtype) {
  if (!fused_wanted(dtype) || !sample_stage::vectorizable<scalar_t>(C, HW, cl, {x, out, gy})) return {};
  auto bytes = [&](int K) {
    return smem_bytes(C, HW, N, sizeof(scalar_t), sizeof(acc_t), kVec<scalar_t>, cl, kThreads<acc_t>, K);
  };
  const bool clusters = sample_stage::has_clusters(
      cubs_channel_fused_kernel<scalar_t, acc_t, acc_t, kVec<scalar_t>, false, false>);  // any instantiation: one build
  const int K = sample_stage::cluster_size(HW, kVec<scalar_t>, cl, sample_stage::smem_optin(), clusters, bytes);
  return K ? Plan{K, bytes(K)} : Plan{};
}

// Launches the fused kernel as plan() says. g, f, dz, dqkv: backward only (null forward).
template <typename scalar_t, typename w_t, typename acc_t, bool kBackward>
void launch(const Plan& p, const scalar_t* x, const scalar_t* gy, scalar_t* out, const Params<w_t>& prm, int64_t B,
            int64_t C, int64_t HW, int64_t N, bool cl, acc_t* g, acc_t* f, acc_t* dz, acc_t* dqkv,
            cudaStream_t stream) {
  sample_stage::with_layout(cl, [&](auto cl_tag) {
    sample_stage::launch_cluster(
        cubs_channel_fused_kernel<scalar_t, w_t, acc_t, kVec<scalar_t>, decltype(cl_tag)::value, kBackward>, B, p.K,
        kThreads<acc_t>, p.bytes, stream, x, gy, out, prm, int(C), int(HW), int(N), p.K, g, f, dz, dqkv);
  });
#ifdef RECOGFAST_CUDA_EMULATION
  ++emu_launches;
  emu_clusters += p.K > 1;
#endif
}

}  // namespace cubs_channel_fused
}  // namespace recogfast
