// Host emulation of the CUDA features the SE, CUBS and MS-loss kernels use: one std::thread per CUDA thread, blocks run
// one after another (the CTAs of a thread block cluster together, with distributed shared memory), __shared__ = function-static, __syncthreads = block barrier, warp shuffles through a
// per-warp buffer and barrier. Exited threads drop out of the barriers. The tensor-core mma.sync shapes of the
// flash MS loss (csrc/ops/cuda/ms_loss_mma.cuh) and its ldmatrix are emulated warp-wide: every lane's fragment registers are
// gathered, D = A·B + C is computed from the PTX ISA fragment layouts and each lane gets its own D back.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
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

struct EmuCluster;
struct EmuBlock {
  std::unique_ptr<std::barrier<>> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<double> shfl;  // [threads]
  std::vector<uint32_t> mma;  // [threads][10]: a lane's A (4), B (2) and C (4) registers
  std::vector<unsigned char> smem;  // a cluster's CTA: its own dynamic shared memory (else emu_smem)
  EmuCluster* cluster = nullptr;
  unsigned rank = 0;  // in its cluster
  std::atomic<int> vote{0};  // __syncthreads_or
};
// A thread block cluster (emu_launch_cluster): its CTAs run at once, one barrier over all their threads.
struct EmuCluster {
  std::unique_ptr<std::barrier<>> bar;
  std::vector<EmuBlock*> blocks;
};
inline thread_local EmuBlock* emu_blk = nullptr;
inline std::vector<unsigned char> emu_smem(1 << 20);
inline unsigned char* emu_dynamic_smem() {
  return emu_blk && emu_blk->cluster ? emu_blk->smem.data() : emu_smem.data();
}
// cooperative_groups' cluster API as the one-CTA kernels use it (sample_stage.cuh cluster_sums).
namespace cooperative_groups {
struct cluster_group {
  void sync() const { emu_blk->cluster->bar->arrive_and_wait(); }
  unsigned block_rank() const { return emu_blk->rank; }
  unsigned num_blocks() const { return unsigned(emu_blk->cluster->blocks.size()); }
  // The address in CTA `rank`'s shared memory at p's offset in this CTA's.
  template <typename T>
  T* map_shared_rank(T* p, unsigned rank) const {
    const auto off = reinterpret_cast<const unsigned char*>(p) - emu_blk->smem.data();
    return reinterpret_cast<T*>(emu_blk->cluster->blocks[rank]->smem.data() + off);
  }
};
inline cluster_group this_cluster() { return {}; }
}  // namespace cooperative_groups

inline void __syncthreads() { emu_blk->block->arrive_and_wait(); }
// A barrier that returns nonzero iff some thread's pred was nonzero. The vote is cleared between the first two
// barriers (every thread has read the previous vote by then) and read after the third.
inline int __syncthreads_or(int pred) {
  EmuBlock& b = *emu_blk;
  b.block->arrive_and_wait();
  if (threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y == 0) b.vote.store(0);
  b.block->arrive_and_wait();
  if (pred) b.vote.store(1);
  b.block->arrive_and_wait();
  return b.vote.load();
}
inline void __syncwarp(unsigned = 0xffffffffu) {
  emu_blk->warps[(threadIdx.x + threadIdx.y * blockDim.x) / 32]->arrive_and_wait();
}

// atomicAdd on a 64-bit counter (the flash one-pass forward's work count): a real atomic, the block's threads
// being concurrent host threads.
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}

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

// bf16 / fp16 / tf32 bits -> float (exact).
inline float emu_bits_to_float(uint32_t bits) { float f; std::memcpy(&f, &bits, 4); return f; }
inline float __uint_as_float(uint32_t bits) { return emu_bits_to_float(bits); }
inline uint32_t __float_as_uint(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float emu_bf16(uint16_t h) { return emu_bits_to_float(uint32_t(h) << 16); }
inline float emu_f16(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  const float v = e == 0 ? std::ldexp(float(m), -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(float(m | 1024), e - 25);
  return (h & 0x8000) ? -v : v;
}
// cvt.rna.tf32.f32: keep 10 mantissa bits, rounding to nearest with ties away from zero (the tf32 value in an
// fp32 register, low 13 bits zero).
inline uint32_t emu_cvt_rna_tf32(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return u;  // inf / NaN unchanged
  return (u + 0x1000u) & ~0x1fffu;
}
inline bool emu_mma_rz() {
  static const bool rz = [] { const char* v = std::getenv("EMU_MMA_RZ"); return v && v[0] == '1'; }();
  return rz;
}
// One warp-wide mma: each lane stores its registers, waits for the warp, computes its 4 outputs from all 32
// lanes' fragments (products exact in double, summed, then added to C and rounded to fp32 once), waits again.
// kind: 0 bf16 m16n8k16, 1 fp16 m16n8k16, 2 tf32 m16n8k8.
inline void emu_mma(int kind, float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
  const int tid = threadIdx.x + threadIdx.y * blockDim.x, warp = tid / 32, lane = tid % 32;
  auto& bar = *emu_blk->warps[warp];
  uint32_t* mine = &emu_blk->mma[size_t(tid) * 10];
  for (int i = 0; i < 4; ++i) mine[i] = a[i];
  mine[4] = b[0];
  mine[5] = b[1];
  for (int i = 0; i < 4; ++i) std::memcpy(&mine[6 + i], &c[i], 4);
  bar.arrive_and_wait();
  const uint32_t* w = &emu_blk->mma[size_t(warp) * 32 * 10];
  const int K = kind == 2 ? 8 : 16;
  // A[r][k], B[k][n] from the lanes that hold them (ms_loss_mma.cuh's layout table).
  auto half = [&](uint32_t reg, int hi) {
    const uint16_t h = uint16_t(hi ? reg >> 16 : reg & 0xffff);
    return kind == 0 ? emu_bf16(h) : emu_f16(h);
  };
  auto A = [&](int r, int k) -> double {
    if (kind == 2) {
      const int ln = (r % 8) * 4 + (k % 4), reg = (r >= 8) + 2 * (k >= 4);
      return emu_bits_to_float(w[ln * 10 + reg] & ~0x1fffu);
    }
    const int ln = (r % 8) * 4 + (k % 8) / 2, reg = (r >= 8) + 2 * (k >= 8);
    return half(w[ln * 10 + reg], k % 2);
  };
  auto Bm = [&](int k, int n) -> double {
    if (kind == 2) return emu_bits_to_float(w[(n * 4 + k % 4) * 10 + 4 + (k >= 4)] & ~0x1fffu);
    return half(w[(n * 4 + (k % 8) / 2) * 10 + 4 + (k >= 8)], k % 2);
  };
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int r = lane / 4 + 8 * (i / 2), n = 2 * (lane % 4) + (i % 2);
    double s = 0;
    for (int k = 0; k < K; ++k) s += A(r, k) * Bm(k, n);
    const double sum = double(c[i]) + s;
    out[i] = float(sum);
    // EMU_MMA_RZ=1: the sum rounded toward zero instead (tensor cores are reported to truncate their fp32 sums:
    // Fasi et al., "Numerical behavior of NVIDIA tensor cores", PeerJ CS 2021), to see what that does to an error
    if (emu_mma_rz() && double(out[i]) != sum && std::abs(double(out[i])) > std::abs(sum))
      out[i] = std::nextafter(out[i], 0.0f);
  }
  bar.arrive_and_wait();
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}
inline void emu_mma_16816(bool bf16, float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
  emu_mma(bf16 ? 0 : 1, d, a, b, c);
}
inline void emu_mma_tf32_1688(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
  emu_mma(2, d, a, b, c);
}

// ldmatrix.sync.aligned.m8n8.x{n}.trans.shared.b16 (ms_loss_mma.cuh ldsm_trans): lane l's `row` is row l % 8 of
// matrix l / 8 (n = 2: lanes 0-15's only); lane (g = l / 4, t = l % 4) gets r[i] = matrix i's (row 2t, col g) in the
// low half and (row 2t + 1, col g) in the high half. A misaligned row address aborts, as the GPU faults.
inline void emu_ldmatrix_trans(int n, uint32_t* r, const uint16_t* row) {
  const int tid = threadIdx.x + threadIdx.y * blockDim.x, warp = tid / 32, lane = tid % 32;
  auto& bar = *emu_blk->warps[warp];
  std::memcpy(&emu_blk->shfl[tid], &row, sizeof(row));
  bar.arrive_and_wait();
  auto row_of = [&](int i, int j) {  // matrix i's row j: lane 8i + j's address
    const uint16_t* p;
    std::memcpy(&p, &emu_blk->shfl[warp * 32 + 8 * i + j], sizeof(p));
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
      std::fprintf(stderr, "emu_ldmatrix_trans: row address %p not 16-byte aligned\n", static_cast<const void*>(p));
      std::abort();
    }
    return p;
  };
  uint32_t out[4];
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < n; ++i) out[i] = uint32_t(row_of(i, 2 * t)[g]) | (uint32_t(row_of(i, 2 * t + 1)[g]) << 16);
  bar.arrive_and_wait();
  for (int i = 0; i < n; ++i) r[i] = out[i];
}

struct EmuCfg {
  dim3 grid, block;
  size_t smem = 0;  // dynamic shared memory a block
};
inline EmuCfg emu_cfg(dim3 g, dim3 b, size_t smem = 0, cudaStream_t = nullptr) { return {g, b, smem}; }

// Kernel launches so far (every emulated file): the emulation checks the launch counts its launchers document.
inline int emu_launch_count = 0;

template <typename... P, typename... A>
void emu_launch(void (*kernel)(P...), EmuCfg cfg, A&&... args) {
  ++emu_launch_count;
  const int nthreads = cfg.block.x * cfg.block.y * cfg.block.z;
  for (unsigned bz = 0; bz < cfg.grid.z; ++bz)
    for (unsigned by = 0; by < cfg.grid.y; ++by)
      for (unsigned bx = 0; bx < cfg.grid.x; ++bx) {
        EmuBlock blk;
        blk.block = std::make_unique<std::barrier<>>(nthreads);
        for (int w = 0; w < (nthreads + 31) / 32; ++w)
          blk.warps.push_back(std::make_unique<std::barrier<>>(std::min(32, nthreads - 32 * w)));
        blk.shfl.resize(nthreads);
        blk.mma.resize(size_t(nthreads) * 10);
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

// A launch in clusters of K CTAs along x (cudaLaunchKernelEx with cudaLaunchAttributeClusterDimension): the
// clusters one after another, the K CTAs of each at once, each with its own dynamic shared memory.
template <typename... P, typename... A>
void emu_launch_cluster(void (*kernel)(P...), EmuCfg cfg, int K, A&&... args) {
  ++emu_launch_count;
  const int nthreads = cfg.block.x * cfg.block.y * cfg.block.z;
  for (unsigned c0 = 0; c0 < cfg.grid.x; c0 += unsigned(K)) {
    EmuCluster cl;
    cl.bar = std::make_unique<std::barrier<>>(K * nthreads);
    std::vector<std::unique_ptr<EmuBlock>> blks;
    for (int r = 0; r < K; ++r) {
      auto blk = std::make_unique<EmuBlock>();
      blk->block = std::make_unique<std::barrier<>>(nthreads);
      for (int w = 0; w < (nthreads + 31) / 32; ++w)
        blk->warps.push_back(std::make_unique<std::barrier<>>(std::min(32, nthreads - 32 * w)));
      blk->shfl.resize(nthreads);
      blk->mma.resize(size_t(nthreads) * 10);
      blk->smem.assign(cfg.smem, 0xA5);  // garbage, as a GPU's
      blk->cluster = &cl;
      blk->rank = unsigned(r);
      cl.blocks.push_back(blk.get());
      blks.push_back(std::move(blk));
    }
    std::vector<std::thread> ts;
    for (int r = 0; r < K; ++r)
      for (int t = 0; t < nthreads; ++t) {
        ts.emplace_back([&, r, t] {
          EmuBlock& blk = *blks[r];
          emu_blk = &blk;
          threadIdx = dim3(t % cfg.block.x, (t / cfg.block.x) % cfg.block.y, t / (cfg.block.x * cfg.block.y));
          blockIdx = dim3(c0 + unsigned(r), 0, 0);
          blockDim = cfg.block;
          gridDim = cfg.grid;
          kernel(static_cast<P>(args)...);
          blk.warps[t / 32]->arrive_and_drop();
          blk.block->arrive_and_drop();
          cl.bar->arrive_and_drop();
          emu_blk = nullptr;
        });
      }
    for (auto& th : ts) th.join();
  }
}

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
// The CUDA runtime calls the launchers make (common.cuh's RF_CUDA_CHECK), all succeeding.
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "no error"; }
enum { cudaDevAttrMultiProcessorCount, cudaDevAttrComputeCapabilityMajor, cudaDevAttrComputeCapabilityMinor,
       cudaDevAttrMaxSharedMemoryPerBlockOptin, cudaFuncAttributeMaxDynamicSharedMemorySize };
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
// 2 SMs of compute capability 9.0 (the flash MS-loss path needs 8+); opt-in shared memory per block as sm_90's
// 227 KB (232448 bytes; the emulated dynamic shared memory, emu_smem, holds 1 MB), or EMU_SMEM_OPTIN bytes.
inline cudaError_t cudaDeviceGetAttribute(int* n, int attr, int) {
  if (attr == cudaDevAttrMaxSharedMemoryPerBlockOptin) {
    const char* v = getenv("EMU_SMEM_OPTIN");
    *n = v && *v ? atoi(v) : 232448;
    return cudaSuccess;
  }
  *n = attr == cudaDevAttrComputeCapabilityMajor ? 9 : attr == cudaDevAttrComputeCapabilityMinor ? 0 : 2;
  return cudaSuccess;
}
template <typename F>
cudaError_t cudaFuncSetAttribute(F, int, int) { return cudaSuccess; }
// A kernel's attributes: compiled for compute capability 9.0 (sample_stage.cuh has_clusters).
struct cudaFuncAttributes {
  int ptxVersion = 0, binaryVersion = 0;
};
template <typename F>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, F) {
  a->ptxVersion = a->binaryVersion = 90;
  return cudaSuccess;
}
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
