// Host emulation of the CUDA features the SE, CUBS and MS-loss kernels use: one std::thread per CUDA thread, blocks run
// one after another, __shared__ = function-static, __syncthreads = block barrier, warp shuffles through a
// per-warp buffer and barrier. Exited threads drop out of the barriers.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#include <algorithm>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(int64_t a, int64_t b = 1, int64_t c = 1) : x(unsigned(a)), y(unsigned(b)), z(unsigned(c)) {}
};
typedef void* cudaStream_t;
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

struct EmuBlock {
  std::unique_ptr<std::barrier<>> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<double> shfl;  // [threads]
};
inline thread_local EmuBlock* emu_blk = nullptr;
inline std::vector<unsigned char> emu_smem(1 << 20);
inline unsigned char* emu_dynamic_smem() { return emu_smem.data(); }

inline void __syncthreads() { emu_blk->block->arrive_and_wait(); }

template <typename T>
T __shfl_xor_sync(unsigned, T v, int offset) {
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  const int warp = tid / 32, lane = tid % 32;
  auto& bar = *emu_blk->warps[warp];
  std::memcpy(&emu_blk->shfl[tid], &v, sizeof(T));
  bar.arrive_and_wait();
  T out;
  std::memcpy(&out, &emu_blk->shfl[warp * 32 + (lane ^ offset)], sizeof(T));
  bar.arrive_and_wait();
  return out;
}

struct EmuCfg {
  dim3 grid, block;
};
inline EmuCfg emu_cfg(dim3 g, dim3 b, size_t = 0, cudaStream_t = nullptr) { return {g, b}; }

template <typename... P, typename... A>
void emu_launch(void (*kernel)(P...), EmuCfg cfg, A&&... args) {
  const int nthreads = cfg.block.x * cfg.block.y * cfg.block.z;
  for (unsigned bz = 0; bz < cfg.grid.z; ++bz)
    for (unsigned by = 0; by < cfg.grid.y; ++by)
      for (unsigned bx = 0; bx < cfg.grid.x; ++bx) {
        EmuBlock blk;
        blk.block = std::make_unique<std::barrier<>>(nthreads);
        for (int w = 0; w < (nthreads + 31) / 32; ++w)
          blk.warps.push_back(std::make_unique<std::barrier<>>(std::min(32, nthreads - 32 * w)));
        blk.shfl.resize(nthreads);
        std::vector<std::thread> ts;
        for (int t = 0; t < nthreads; ++t) {
          ts.emplace_back([&, t] {
            emu_blk = &blk;
            threadIdx = dim3(t % cfg.block.x, (t / cfg.block.x) % cfg.block.y, t / (cfg.block.x * cfg.block.y));
            blockIdx = dim3(bx, by, bz);
            blockDim = cfg.block;
            gridDim = cfg.grid;
            kernel(static_cast<P>(args)...);
            blk.warps[t / 32]->arrive_and_drop();
            blk.block->arrive_and_drop();
          });
        }
        for (auto& th : ts) th.join();
      }
}

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static
// The CUDA runtime calls the launchers make (common.cuh's RF_CUDA_CHECK), all succeeding.
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "no error"; }
enum { cudaDevAttrMultiProcessorCount };
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* n, int, int) { *n = 2; return cudaSuccess; }
using std::min;
using std::max;
using std::exp;
using std::exp2;
using std::fabs;
using std::fmax;
using std::frexp;
using std::ldexp;
using std::isfinite;
using std::log;
using std::log1p;
using std::sqrt;
