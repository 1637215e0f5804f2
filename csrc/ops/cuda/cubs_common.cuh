// Device helpers shared by the CUBS CUDA kernels (header-only, internal linkage).
#pragma once

#include <cstdint>

#include "ops/cuda/common.cuh"

namespace recogfast {
namespace cubs_cuda {

using gpu::acc_dtype;
using gpu::block_sum;
using gpu::ceil_div;
using gpu::fits_int32;
using gpu::grid_for;
using gpu::kWarp;
using gpu::num_sms;
using gpu::sigmoid;
using gpu::warp_sum;
using gpu::ex2;
using gpu::log2e;

// Summation of the softmax sums (row and column passes of both CUBS kernels). One serial fp32 accumulator a
// sum over the whole row (or a 512-term tile) left the fp32 results 3.5-24x less accurate than the CPU kernel's
// (8 SIMD lanes of 32 terms a 256-term chunk, chunk sums added in double; H200 run of a1039d0). Here: kLanes
// independent partial sums, term t of a chunk going to lane t % kLanes (kLanes * 32 = kChunk terms a chunk: 32
// a lane, as the CPU's), combined pairwise at the end of each chunk and added to a compensated total (TwoSum:
// hi + lo carries the chunk sums to about one rounding of the result, without fp64 on the device). The order
// is fixed (results are deterministic); the lanes add independent FADD chains (ILP), and the combine and the
// compensation cost about 9 FADDs a sum a chunk (< 0.1 a term). nvcc does not reassociate or contract adds
// without --use_fast_math, which the extension is not built with.
constexpr int kLanes = 4;
constexpr int kChunk = 128;

template <typename T>
struct CompSum {
  T hi, lo;
  __device__ __forceinline__ void add(T x) {  // TwoSum (Knuth): s + err == hi + x exactly
    const T s = hi + x, bp = s - hi;
    lo += (hi - (s - bp)) + (x - bp);
    hi = s;
  }
  __device__ __forceinline__ T value() const { return hi + lo; }
};

// The pairwise combination of kLanes partial sums.
template <typename T>
__device__ __forceinline__ T lanes_sum(const T* p) {
  static_assert(kLanes == 4, "lanes_sum pairs four lanes");
  return (p[0] + p[1]) + (p[2] + p[3]);
}

template <typename T>
struct alignas(2 * sizeof(T)) Pair {
  T a, b;
};

template <typename T>
struct alignas(4 * sizeof(T)) Quad {
  T a, b, c, d;
};

}  // namespace cubs_cuda
}  // namespace recogfast
