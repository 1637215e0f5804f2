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

// 2^t. float: one MUFU.EX2 (PTX ex2.approx.ftz.f32, asked for explicitly: the extension is built without
// --use_fast_math so that every other function stays IEEE-accurate). PTX ISA: max relative error 2^-22
// (about 2 ulp) over the full range; results below 2^-126 flush to 0, i.e. a softmax term under 1.2e-38 of
// the row maximum vanishes — far below fp32's resolution of the row sum. The softmax exponent is pre-scaled
// by log2(e), so exp(s) costs one FFMA and one MUFU op.
__device__ __forceinline__ float ex2(float t) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(t));
  return r;
#else
  return exp2f(t);  // host compilation passes (tools/cuda_emulation)
#endif
}
__device__ __forceinline__ double ex2(double t) { return exp2(t); }

template <typename T>
__device__ __forceinline__ T log2e() {
  return T(1.4426950408889634);
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
