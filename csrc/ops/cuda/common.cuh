// Helpers every recogfast CUDA kernel file shares (header-only): warp reductions, vector types, and
// the launch-shape helpers. Host functions are `inline` so each .cu may include this.
#pragma once

#include <cuda_runtime.h>
#include <torch/csrc/stable/accelerator.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "ops/stable.h"

// A CUDA runtime error as a RuntimeError naming the call (the stable ABI's STD_CUDA_CHECK, without its
// C++ source location in the message).
#define RF_CUDA_CHECK(EXPR)                                                                               \
  do {                                                                                                    \
    const cudaError_t rf_err_ = (EXPR);                                                                   \
    if (rf_err_ != cudaSuccess)                                                                           \
      throw std::runtime_error(::recogfast::str("CUDA error: ", cudaGetErrorString(rf_err_), " (", #EXPR, ")")); \
  } while (0)
#define RF_CUDA_KERNEL_LAUNCH_CHECK() RF_CUDA_CHECK(cudaGetLastError())

namespace recogfast {
namespace gpu {

constexpr int kWarp = 32;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Block-wide sum in a fixed order (deterministic); every thread gets the result. `red` holds one value a
// warp (blockDim.x / kWarp).
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

// Dynamic shared memory a block may use without the opt-in attribute (cudaFuncSetAttribute).
constexpr size_t kDefaultSmemBytes = 48 * 1024;

template <typename T>
__device__ __forceinline__ T sigmoid(T z) {
  return T(1) / (T(1) + exp(-z));
}

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// 2^t. float: one MUFU.EX2 (PTX ex2.approx.ftz.f32, asked for explicitly: the extension is built without
// --use_fast_math so that every other function stays IEEE-accurate). PTX ISA: max relative error 2^-22
// (about 2 ulp) over the full range; results below 2^-126 flush to 0, i.e. a softmax term under 1.2e-38 of
// the row maximum vanishes — far below fp32's resolution of the row sum. The exponent is pre-scaled by log2(e),
// so exp(s) costs one FFMA and one MUFU op (CUBS softmax sums, the flash MS loss's pair terms).
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

// kVec elements moved as one 16-byte (or smaller) load/store.
template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) VecT {
  scalar_t v[kVec];
};

// Attribute kAttr (a cudaDeviceAttr) of the current device, cached per device; the host emulation re-reads it
// (its tests change the opt-in shared memory through EMU_SMEM_OPTIN).
template <auto kAttr>
inline int64_t device_attribute() {
  int dev = 0;
  RF_CUDA_CHECK(cudaGetDevice(&dev));
  static int64_t cache[64] = {};  // the attribute + 1 (0: not read yet; an attribute may be 0, a minor version)
#ifndef RECOGFAST_CUDA_EMULATION
  if (dev < 64 && cache[dev]) return cache[dev] - 1;
#endif
  int n = 0;
  RF_CUDA_CHECK(cudaDeviceGetAttribute(&n, kAttr, dev));
  if (dev < 64) cache[dev] = int64_t{n} + 1;
  return n;
}

// A row of the tuned table (tuned_table.h, written by tools/tuned_table.py from recogfast/tuned.py's TUNED: the
// winners of a GPU sweep): the value `knob` takes on a device of compute capability `cc` (10 major + minor) for
// `dtype` where the knob's environment variable is unset.
struct TunedEntry {
  const char* knob;
  int cc;
  ScalarType dtype;
  const char* value;
};

}  // namespace gpu
}  // namespace recogfast

#include "ops/cuda/tuned_table.h"  // kTuned

namespace recogfast {
namespace gpu {

// The value of `knob` in `table` (ended by an entry without a knob) for `cc` and `dtype`, or nullptr.
inline const char* tuned_in(const TunedEntry* table, const char* knob, int cc, ScalarType dtype) {
  for (; table->knob; ++table)
    if (table->cc == cc && table->dtype == dtype && std::strcmp(table->knob, knob) == 0) return table->value;
  return nullptr;
}

// The tuned table's value of `knob` for the current device and `dtype`, or nullptr (an empty table reads no
// device attribute).
inline const char* tuned_value(const char* knob, ScalarType dtype) {
  if (!kTuned[0].knob) return nullptr;
  const int64_t cc = 10 * device_attribute<cudaDevAttrComputeCapabilityMajor>() +
                     device_attribute<cudaDevAttrComputeCapabilityMinor>();
  return tuned_in(kTuned, knob, int(cc), dtype);
}

// The index in `allowed` of a variable's value `env` (empty: the tuned table's `tuned` where given, else
// allowed[dflt]), for the variables that pick a kernel path or variant; any other value is a one-line error naming
// the op, the variable and the allowed values ("<op>: <name> must be a, b or c, got 'x'").
inline int choice_of(const char* op, const char* name, const std::string& env,
                     std::initializer_list<const char*> allowed, int dflt, const char* tuned) {
  const bool from_table = env.empty() && tuned;
  const std::string s = !env.empty() ? env : from_table ? tuned : allowed.begin()[dflt];
  std::string list;
  int i = 0;
  for (const char* a : allowed) {
    if (s == a) return i;
    list += i == 0 ? "" : i + 1 == int(allowed.size()) ? " or " : ", ";
    list += a;
    ++i;
  }
  throw std::runtime_error(str(op, ": ", name, " must be ", list, ", got '", s, "'",
                               from_table ? " from the tuned table (csrc/ops/cuda/tuned_table.h)" : ""));
}

// env_choice: environment variable `name` read on every call; env_choice_once: read once per process (Tag: one
// type a variable, whose static keeps the first value; the host emulation re-reads it, its tests switching the
// variable between launches). Either resolved against the tuned value per call: it depends on the device and
// dtype.
inline int env_choice(const char* op, const char* name, std::initializer_list<const char*> allowed, int dflt = 0,
                      const char* tuned = nullptr) {
  const char* v = std::getenv(name);
  return choice_of(op, name, v ? v : "", allowed, dflt, tuned);
}

template <class Tag>
int env_choice_once(const char* op, const char* name, std::initializer_list<const char*> allowed, int dflt = 0,
                    const char* tuned = nullptr) {
#ifdef RECOGFAST_CUDA_EMULATION
  return env_choice(op, name, allowed, dflt, tuned);
#else
  static const std::string env = [name] {
    const char* v = std::getenv(name);
    return std::string(v ? v : "");
  }();
  return choice_of(op, name, env, allowed, dflt, tuned);
#endif
}

// Streaming multiprocessors of the current device.
inline int64_t num_sms() { return device_attribute<cudaDevAttrMultiProcessorCount>(); }

// Blocks for a grid-stride loop over `work_items`: enough to fill the GPU, no more than 32 per SM.
inline int64_t grid_for(int64_t work_items, int64_t threads) {
  return std::max<int64_t>(1, std::min<int64_t>(ceil_div(work_items, threads), num_sms() * 32));
}

// True when a grid-stride loop of `grid_threads` threads may use 32-bit indices: every index it forms,
// up to the largest one (`max_index`, exclusive), plus the last stride added before the loop test.
inline bool fits_int32(int64_t max_index, int64_t grid_threads) {
  return max_index + grid_threads < (int64_t{1} << 31);
}

// Accumulator dtype of the per-sample scratch buffers: fp32, or fp64 for double inputs.
inline ScalarType acc_dtype(ScalarType t) { return t == kDouble ? kDouble : kFloat; }

#ifndef RECOGFAST_CUDA_EMULATION
// The current CUDA stream of t's device (torch.cuda.current_stream()), where every kernel is launched.
inline cudaStream_t current_stream(const Tensor& t) {
  void* stream = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream));
  return static_cast<cudaStream_t>(stream);
}

// Makes t's device current for the guard's lifetime (the stable ABI's DeviceGuard, as c10::cuda::CUDAGuard).
struct DeviceGuard {
  explicit DeviceGuard(const Tensor& t) : guard(t.get_device_index()) {}
  torch::stable::accelerator::DeviceGuard guard;
};
#else  // tools/cuda_emulation runs the launchers on CPU tensors
inline cudaStream_t current_stream(const Tensor&) { return nullptr; }
struct DeviceGuard {
  explicit DeviceGuard(const Tensor&) {}
};
#endif

}  // namespace gpu
}  // namespace recogfast
