// Device helpers shared by the CUBS CUDA kernels (header-only, internal linkage).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace recogfast {
namespace cubs_cuda {

constexpr int kWarp = 32;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// 2^t. float: exp2f, which --use_fast_math (setup.py) compiles to one MUFU.EX2 (ex2.approx.ftz.f32);
// the softmax exponent is pre-scaled by log2(e), so exp(s) costs one FFMA and one MUFU op.
__device__ __forceinline__ float ex2(float t) { return exp2f(t); }
__device__ __forceinline__ double ex2(double t) { return exp2(t); }

template <typename T>
__device__ __forceinline__ T log2e() {
  return T(1.4426950408889634);
}

template <typename T>
__device__ __forceinline__ T sigmoid(T z) {
  return T(1) / (T(1) + exp(-z));
}

// Row maximum of the rank-one S: q_i * max k (q_i >= 0) or q_i * min k.
template <typename T>
__device__ __forceinline__ T row_max(T q, T kmin, T kmax) {
  return q >= T(0) ? q * kmax : q * kmin;
}

template <typename T>
struct alignas(2 * sizeof(T)) Pair {
  T a, b;
};

template <typename T>
struct alignas(4 * sizeof(T)) Quad {
  T a, b, c, d;
};

// Block-wide sum; every thread gets the result. `red` holds blockDim.x / kWarp values.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* red) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, warps = blockDim.x / kWarp;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  T s = 0;
  for (int w = 0; w < warps; ++w) s += red[w];
  return s;
}

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace cubs_cuda
}  // namespace recogfast
