// Host side of the flash MS loss (kernels: ms_loss_flash.cuh): which path a call takes, the tile variants and
// the launches. Included by ms_loss_kernel.cu only (it registers the op; this header registers nothing).
//
// Path (mirrored by recogfast.dispatch.ms_loss_path): RECOGFAST_MS_LOSS_PATH = "auto" (default), "flash" or
// "tiles", read on every call (one getenv) so that a test or a benchmark can switch it. The flash kernels run
// on sm_80+ for bf16/fp16 and fp32 embeddings: fp32 with TF32 m16n8k8 products where torch allows TF32 for matmuls
// (the op's allow_tf32 argument, which the Python wrapper fills from recogfast.dispatch.tf32_matmul_allowed: the
// stable ABI has no call that reads torch's setting), else with three of them per product (MmaKind::kF32,
// "3xTF32", ms_loss_mma.cuh mma_tf: fp32-level error; only variant 4's tiles and variant 3's backward are built
// for it: its forward takes variant 4's tiles, its backward variant 3's wherever that fits; build time). fp64
// keeps the tiles path, whose aten::mm follows torch's setting itself. "auto" takes flash wherever it can run
// once kFlashByDefault is true (or the tuned table names it: not for fp32 without TF32, whose flash rows the TF32
// sweep does not time), "tiles" never; "flash" where it cannot run (before sm_80, fp64) is a one-line error.
// kFlashByDefault is false until a GPU run of tools/gpu_check.sh has cross-checked the flash kernels against the
// CPU kernel (they have run only under the host emulation, whose mma follows the PTX ISA's fragment tables as
// this code reads them): until then "auto" keeps the tiles path, proven on an H200, and "flash" opts in.
// Labels: any integer dtype (see ms_loss_flash.cuh: int32, int64 compare on overflow).
// Forward form ("ms" / "all"; flash_fwd_mode): RECOGFAST_MS_FLASH_FWD = "auto" (default), "one" or "two": the
// one-pass forward (ms_loss_flash_onepass.cuh: each similarity formed once, the positives gathered by class) or
// the two dense passes; "auto" launches both forms' kernels from RECOGFAST_MS_FLASH_ONE_PASS_MIN_PAIRS pairs on and
// the device keeps one by the class windows' size (below that, two passes).
// Tile variant: RECOGFAST_MS_FLASH_TILE = 0 (default) BM 64 x BN 64, BK 32, DC 128 (4 warps); 1 = 128 x 64,
// DC 128 (8 warps: half the column-tile loads per row); 2 = 64 x 64, DC 256 (half the S recomputes at D = 512,
// twice the G registers); 3 = G in shared memory (ms_loss_flash_gsmem.cuh): the backward's CTA of BM 64 rows
// (BN 64, BK 32, DC 128; 4 warps) keeps G for its rows x all D features in shared memory, so S_IJ is computed
// once per pair instead of once per DC-wide chunk, and writes the gradient rows itself (the normalisation's
// backward fused: no G buffer, one launch for all rows), with the register prefetch (below); its forward is variant
// 4's; 4 = variant 0 with similarity_tile's register prefetch (FlashTile::kPrefetch: the next feature chunk's
// global loads in flight during this chunk's mma; 30-65 more registers a thread: fewer CTAs per SM, each hiding
// its own load latency — which wins is the GPU's to say); 5 = a forward of 128-row CTAs whose 4 warps own 32 rows
// (2 m-tiles, FlashTile::MW: each B fragment read from shared memory feeds 2 mma, 1.5 shared loads per mma instead of
// 2.5), with the prefetch, and variant 4's backward. Read once per process (each launch of the emulation
// re-reads it). Unmeasured: the first GPU run sweeps them (tools/gpu_check.sh).
// Products per pair (pair = anchor row x candidate column block, D = 512) in the backward: variants 0, 1 and 4,
// ceil(D / 128) = 4 S + 1 G; variant 2, 2 S + 1 G; variant 3, 1 S + 1 G (the forward: 1 S per pass, all variants).
// Variant 3's shared memory (flash_gsmem_smem): BM (round_up(D, 32) + 8) 4 bytes of G + the operand tiles:
// 157 KB bf16/fp16, 198 KB tf32 at D = 512 (opt-in; sm_90 allows 227 KB, sm_80 163 KB); where it exceeds the
// device's opt-in limit (cudaDevAttrMaxSharedMemoryPerBlockOptin: D > 768 bf16, D > 608 tf32 on sm_90) the call
// takes variant 4's register backward instead, decided per call on the host. Variants 0, 3 and 4 have the same
// BM, BN, BK (the register prefetch changes no value), variant 3 another DC,
// so the same W, the same mma sequence per G element and the same normalisation arithmetic: the emulation finds
// their gradients bitwise equal (on a GPU, up to nvcc's FMA contraction of the epilogue).
// Extra memory: labels int32 M·4 bytes; the backward G buffer of a wave of T rows, T·D·4 bytes with
// T·D·4 <= kFlashGBytes (8 MB); plus the O(M) norms/scales of Candidates (4 fp32 [M]) and per-anchor loss
// [B]: at B = 16384, D = 512 about 8 MB + 0.4 MB; no M x D copy, no S tile, no W tile. Variant 3's backward
// (where it fits) has no G buffer: 0.4 MB.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <optional>
#include <string>
#include <type_traits>

#include "ops/cuda/ms_loss_flash.cuh"
#include "ops/cuda/ms_loss_flash_gsmem.cuh"
#include "ops/cuda/ms_loss_flash_onepass.cuh"

#ifndef RECOGFAST_MS_FLASH_G_BYTES
#define RECOGFAST_MS_FLASH_G_BYTES (int64_t(8) << 20)
#endif
// "auto" tries the one-pass forward (ms_loss_flash_onepass.cuh) from B x M pairs on (below, the sort and the
// segment launches would cost more than a dense pass saves); the emulation sets 0.
#ifndef RECOGFAST_MS_FLASH_ONE_PASS_MIN_PAIRS
#define RECOGFAST_MS_FLASH_ONE_PASS_MIN_PAIRS (int64_t(1) << 22)
#endif
// The device keeps the one-pass forward where the gathered passes' windows sum to at most B M / this (4 BM: their
// 2 BM sum(window) pairs at most half the dense pass's B M); the emulation's few-dozen-row inputs need a looser one.
#ifndef RECOGFAST_MS_FLASH_ONE_PASS_DIV
#define RECOGFAST_MS_FLASH_ONE_PASS_DIV (4 * FlashTileG::BM)
#endif

namespace recogfast {
namespace {

constexpr int64_t kFlashGBytes = RECOGFAST_MS_FLASH_G_BYTES;
#ifdef RECOGFAST_CUDA_EMULATION
inline int emu_gsmem_backwards = 0;  // backward calls that took variant 3's kernel (the emulation checks it)
inline int emu_one_pass_forwards = 0;  // forward calls whose one-pass kernels ran (decided on the "device")
#endif
#ifndef RECOGFAST_CUDA_EMULATION
using FlashTile0 = FlashTile<64, 64, 32, 128>;
using FlashTile1 = FlashTile<128, 64, 32, 128>;
using FlashTile2 = FlashTile<64, 64, 32, 256>;
using FlashTile3 = FlashTile<64, 64, 32, 128, true>;  // G in shared memory (backward only)
using FlashTile4 = FlashTile<64, 64, 32, 128, true>;  // variant 0 with the register prefetch
using FlashTile5 = FlashTile<128, 64, 32, 8, true, 2>;  // forward only: 4 warps of 2 m-tiles (32 rows) each
using FlashTileG = FlashTile<64, 64, 32, 8, true>;      // the one-pass forward's gathered passes 3 and 5
#else  // small tiles: several row / column blocks, feature chunks and waves out of a few dozen rows
using FlashTile0 = FlashTile<32, 16, 16, 16>;
using FlashTile1 = FlashTile<16, 32, 32, 8>;
using FlashTile2 = FlashTile<48, 16, 16, 24>;
using FlashTile3 = FlashTile<32, 16, 16, 24, true>;  // D = 130: 6 chunks, the last of 10 features
using FlashTile4 = FlashTile<48, 32, 16, 16, true>;  // prefetch groups with tails (fp32 B: 128 over 96 threads)
using FlashTile5 = FlashTile<64, 16, 16, 8, true, 2>;  // 2 warps of 32 rows: B = 70 leaves a partial m-tile
using FlashTileG = FlashTile<32, 16, 16, 8, true>;
#endif

enum class MsPath : int { kAuto = 0, kFlash = 1, kTiles = 2 };
constexpr bool kFlashByDefault = false;  // recogfast.dispatch.MS_FLASH_BY_DEFAULT mirrors it

inline MsPath ms_path_env() {  // the order of MsPath
  return MsPath(gpu::env_choice("recogfast::ms_loss", "RECOGFAST_MS_LOSS_PATH", {"auto", "flash", "tiles"}));
}

// The tile variant for embeddings of `dtype`: RECOGFAST_MS_FLASH_TILE, else the tuned table's, else 0.
struct FlashTileEnv {};
inline int flash_tile_variant(ScalarType dtype) {
  return gpu::env_choice_once<FlashTileEnv>("recogfast::ms_loss", "RECOGFAST_MS_FLASH_TILE", {"0", "1", "2", "3", "4", "5"},
                                            0,
                                            gpu::tuned_value("ms_flash_tile", dtype));
}

// The forward for "ms" / "all" mining: RECOGFAST_MS_FLASH_FWD = "auto" (default: the one-pass forward where the
// device finds it cheaper, from RECOGFAST_MS_FLASH_ONE_PASS_MIN_PAIRS pairs on), "one" (always) or "two" (the two
// dense passes), else the tuned table's. Read once per process.
struct FlashFwdEnv {};
inline int flash_fwd_mode(ScalarType dtype) {
  return gpu::env_choice_once<FlashFwdEnv>("recogfast::ms_loss", "RECOGFAST_MS_FLASH_FWD", {"auto", "one", "two"}, 0,
                                           gpu::tuned_value("ms_flash_fwd", dtype));
}

// Compute capability major of the current device.
inline int sm_major() { return int(gpu::device_attribute<cudaDevAttrComputeCapabilityMajor>()); }

// Whether this call takes the flash kernels (see the file comment); "flash" where they cannot run throws.
inline bool use_flash(ScalarType dtype, bool allow_tf32) {
  const MsPath path = ms_path_env();
  if (path == MsPath::kTiles) return false;
  const int major = sm_major();
  const bool can = major >= 8 && (dtype == kBFloat16 || dtype == kHalf || dtype == kFloat);
  if (path == MsPath::kFlash && !can)
    throw std::runtime_error(str("recogfast::ms_loss: RECOGFAST_MS_LOSS_PATH=flash needs an sm_80+ GPU and bf16, fp16 or "
                                 "fp32 embeddings, got sm_", major, "x, ", dtype_str(dtype)));
  if (path == MsPath::kFlash) return can;
  // auto: flash where it can run once kFlashByDefault is set or the tuned table names it for this device and dtype
  // (a GPU sweep cross-checked and timed it: recogfast/tuned.py, knob ms_loss_path; its fp32 rows are TF32's)
  if (!can) return false;
  const char* tuned = dtype == kFloat && !allow_tf32 ? nullptr : gpu::tuned_value("ms_loss_path", dtype);
  return kFlashByDefault || (tuned && std::strcmp(tuned, "flash") == 0);
}

// Calls f(std::integral_constant<MmaKind, K>{}) with the operand kind of scalar_t's embeddings: fp32 takes TF32
// products where allowed, else 3xTF32 (kF32).
template <typename scalar_t, typename F>
void with_mma_kind(bool allow_tf32, F&& f) {
  if constexpr (std::is_same_v<scalar_t, BFloat16>) f(std::integral_constant<MmaKind, MmaKind::kBF16>{});
  else if constexpr (std::is_same_v<scalar_t, Half>) f(std::integral_constant<MmaKind, MmaKind::kF16>{});
  else if (allow_tf32) f(std::integral_constant<MmaKind, MmaKind::kTF32>{});
  else f(std::integral_constant<MmaKind, MmaKind::kF32>{});
}

template <class Cfg, MmaKind K>
constexpr size_t flash_smem(bool backward) {
  const size_t e = sizeof(flash_elem_t<K>);
  size_t n = size_t(Cfg::BM + Cfg::BN) * (Cfg::BK + kPad<K>) * e;
  if (backward) n += size_t(Cfg::BN) * (Cfg::DC + kPad<K>) * e + (kTf32Shape<K> ? size_t(Cfg::BM) * (Cfg::BN + 4) * 4 : 0);
  return n;
}

// Variant 3's backward (ms_loss_flash_gsmem.cuh): G [BM][flash_gsmem_ld(D)] fp32, then the operand tiles.
template <class Cfg, MmaKind K>
size_t flash_gsmem_smem(int64_t D) {
  return size_t(Cfg::BM) * size_t(flash_gsmem_ld(D)) * 4 + flash_smem<Cfg, K>(true);
}

template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  if (bytes > kDefaultSmemBytes)
    RF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

// Calls f(Cfg{}) with the forward's (kBackward false) or the backward's tiles of variant `variant`
// (flash_tile_variant; 3: variant 4's tiles, its forward and the fallback of its backward; 5: FlashTile5's forward,
// variant 4's backward). kF32 builds variant 4's tiles only (three products an mma step: the other variants' extra
// registers or warps would not pay for their build time before a GPU run says so).
template <bool kBackward, MmaKind K, typename F>
void with_flash_tile(int variant, F&& f) {
  if constexpr (K == MmaKind::kF32) {
    return f(FlashTile4{});
  } else {
    switch (variant) {
      case 1: return f(FlashTile1{});
      case 2: return f(FlashTile2{});
      case 3:
      case 4: return f(FlashTile4{});
      case 5:
        if constexpr (kBackward) return f(FlashTile4{});
        else return f(FlashTile5{});
      default: return f(FlashTile0{});
    }
  }
}

// The kernels' view of the candidates; lab32 is filled here (and flags[2] raised where a label overflows).
template <typename scalar_t, class CD>
FlashArgs<scalar_t> flash_args(const CD& cd, Tensor& lab32, cudaStream_t stream) {
  lab32 = empty_as(cd.x[0], {cd.M}, kInt);
  ms_flash_labels_kernel<<<grid_for(cd.M, kThreads), kThreads, 0, stream>>>(
      cd.lab.template const_data_ptr<int64_t>(), lab32.mutable_data_ptr<int>(), cd.flags.template mutable_data_ptr<int>(),
      cd.M);
  RF_CUDA_KERNEL_LAUNCH_CHECK();
  FlashArgs<scalar_t> a{};
  a.xb = cd.x[0].template const_data_ptr<scalar_t>();
  a.xr = cd.R > 0 ? cd.x[1].template const_data_ptr<scalar_t>() : nullptr;
  a.p2 = cd.p2.template const_data_ptr<float>();
  a.inv2 = cd.inv2.template const_data_ptr<float>();
  a.lab32 = lab32.const_data_ptr<int>();
  a.lab64 = cd.lab.template const_data_ptr<int64_t>();
  a.flags = cd.flags.template const_data_ptr<int>();
  a.B = cd.B;
  a.M = cd.M;
  a.D = cd.D;
  return a;
}

// Forward: stats, hard_idx (hardest) and the per-anchor loss of the B anchors: the two-pass forward (passes 1 and
// 2 of ms_flash_fwd_kernel; "hardest": pass 1 alone) or the one-pass forward (ms_loss_flash_onepass.cuh: gathered
// pass 3, dense pass 4, gathered pass 5); in "auto" both forwards' kernels are launched and the device keeps one.
template <typename scalar_t, MmaKind K, class CD>
void flash_forward(const CD& cd, const Params& p, Tensor& stats, Tensor& hard_idx, Tensor& per_anchor,
                   cudaStream_t stream) {
  Tensor lab32;
  const FlashArgs<scalar_t> a = flash_args<scalar_t>(cd, lab32, stream);
  const int64_t B = cd.B, M = cd.M;
  const int mode = flash_fwd_mode(scalar_type_of<scalar_t>());  // 0 auto, 1 one, 2 two
  const bool one = p.mining != int(Mining::kHardest) &&
                   (mode == 1 || (mode == 0 && B * M >= RECOGFAST_MS_FLASH_ONE_PASS_MIN_PAIRS));
  FlashFwdGate gate{nullptr, 0};  // the two-pass forward
  Tensor perm_b, perm_a, lo, hi, work;
  auto gathered = [&](auto pass) {
    using G = FlashTileG;
    constexpr int kPass = decltype(pass)::value;
    const size_t smem = flash_smem<G, K>(false);
    allow_smem(ms_flash_gather_kernel<G, K, scalar_t, kPass>, smem);
    ms_flash_gather_kernel<G, K, scalar_t, kPass><<<static_cast<unsigned>(ceil_div(B, G::BM)), G::kThreads, smem, stream>>>(
        a, p, stats.mutable_data_ptr<float>(), per_anchor.mutable_data_ptr<float>(), perm_b.const_data_ptr<int64_t>(),
        perm_a.const_data_ptr<int64_t>(), lo.const_data_ptr<int64_t>(), hi.const_data_ptr<int64_t>(), gate);
    RF_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (one) {  // label order (stable sorts), each sorted anchor's class segment, the gathered work
    auto sorted = [](const Tensor& lab) {
      return call_op_n<2>("aten::sort", "stable", lab, std::optional<bool>(true), int64_t(0), false);
    };
    const std::array<Tensor, 2> sb = sorted(narrow(cd.lab, 0, 0, B));
    const std::array<Tensor, 2> sa = cd.R > 0 ? sorted(cd.lab) : sb;
    perm_b = sb[1];
    perm_a = sa[1];
    lo = empty_as(cd.x[0], {B}, kLong);
    hi = empty_as(cd.x[0], {B}, kLong);
    work = zeros_as(cd.x[0], {1}, kLong);
    auto* w = reinterpret_cast<unsigned long long*>(work.mutable_data_ptr<int64_t>());
    ms_flash_segments_kernel<<<grid_for(B, kThreads), kThreads, 0, stream>>>(
        sb[0].const_data_ptr<int64_t>(), sa[0].const_data_ptr<int64_t>(), B, M, FlashTileG::BM,
        lo.mutable_data_ptr<int64_t>(), hi.mutable_data_ptr<int64_t>(), w);
    RF_CUDA_KERNEL_LAUNCH_CHECK();
    // auto: one pass where the two gathered passes' pairs, 2 BM sum(window), are at most half the B M pairs of the
    // dense pass they save
    gate = mode == 1 ? FlashFwdGate{nullptr, 1}
                     : FlashFwdGate{w, static_cast<long long>(B * M / (RECOGFAST_MS_FLASH_ONE_PASS_DIV))};
#ifdef RECOGFAST_CUDA_EMULATION
    emu_one_pass_forwards += one_pass_forward(gate);  // the kernels' own test (the "device" has run the segments)
#endif
    gathered(std::integral_constant<int, 3>{});
  }
  const bool two = !one || gate.work != nullptr;  // the two-pass kernels are launched (auto: the device picks)
  with_flash_tile<false, K>(flash_tile_variant(scalar_type_of<scalar_t>()), [&](auto cfg) {
    using C = decltype(cfg);
    using Cfg = FlashTile<C::BM, C::BN, C::BK, 8, C::kPrefetch, C::MW>;  // DC: backward only
    const size_t smem = flash_smem<Cfg, K>(false);
    const unsigned grid = static_cast<unsigned>(ceil_div(B, Cfg::BM));
    auto dense = [&](auto pass) {
      constexpr int kPass = decltype(pass)::value;
      allow_smem(ms_flash_fwd_kernel<Cfg, K, scalar_t, kPass>, smem);
      ms_flash_fwd_kernel<Cfg, K, scalar_t, kPass><<<grid, Cfg::kThreads, smem, stream>>>(
          a, p, stats.mutable_data_ptr<float>(), hard_idx.mutable_data_ptr<int64_t>(), per_anchor.mutable_data_ptr<float>(),
          gate);
      RF_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (two) dense(std::integral_constant<int, 1>{});
    if (one) dense(std::integral_constant<int, 4>{});
    if (two && p.mining != int(Mining::kHardest)) dense(std::integral_constant<int, 2>{});
  });
  if (one) gathered(std::integral_constant<int, 5>{});
}

// Backward: grad_e (and grad_r when given) from the saved stats; rows in waves whose G buffer stays within
// kFlashGBytes, each wave normalised into the gradient (ms_loss_normalize_backward_kernel).
template <typename scalar_t, MmaKind K, class CD>
void flash_backward(const CD& cd, const Params& p, const Tensor& stats, const Tensor& hard_idx, const Tensor& g,
                    Tensor& grad_e, Tensor* grad_r, cudaStream_t stream) {
  Tensor lab32;
  const FlashArgs<scalar_t> a = flash_args<scalar_t>(cd, lab32, stream);
  const int64_t B = cd.B, R = cd.R, D = cd.D;
  // The row waves of a backward kernel of BM-row CTAs: launch(rows, first row, row end, ncols, G) per wave.
  auto waves = [&](int64_t BM, auto&& launch) {
    const int64_t most = std::max<int64_t>(B, grad_r ? R : 0);
    int64_t T = std::max<int64_t>(BM, kFlashGBytes / (D * 4) / BM * BM);
    T = std::min(T, ceil_div(most, BM) * BM);
    Tensor G = empty_as(cd.x[0], {T, D}, kFloat);
    constexpr int rows_per_block = kThreads / kWarp;
    // part 0: the anchors against all M candidates; part 1: the reference rows against the B anchors.
    for (int part = 0; part < (grad_r && R > 0 ? 2 : 1); ++part) {
      const int64_t n = part == 0 ? B : R, off = part == 0 ? 0 : B, ncols = part == 0 ? cd.M : B;
      Tensor& out = part == 0 ? grad_e : *grad_r;
      for (int64_t w0 = 0; w0 < n; w0 += T) {
        const int64_t rows = std::min(T, n - w0);
        launch(rows, off + w0, off + w0 + rows, ncols, G.mutable_data_ptr<float>());
        RF_CUDA_KERNEL_LAUNCH_CHECK();
        ms_loss_normalize_backward_kernel<scalar_t, float><<<ceil_div(rows, rows_per_block), kThreads, 0, stream>>>(
            G.const_data_ptr<float>(), nullptr, cd.x[part].template const_data_ptr<scalar_t>() + w0 * D,
            cd.norms.template const_data_ptr<float>() + off + w0, g.const_data_ptr<float>(), B,
            out.mutable_data_ptr<scalar_t>() + w0 * D, rows, D);
        RF_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  };
  // variant 3: G in shared memory where it fits the device's opt-in limit, else variant 4's register backward.
  // 3xTF32 takes it whatever the variant: mma-bound (three products a step), its 1 S + 1 G products per pair beat
  // the register backward's 4 S + 1 G at D = 512, which also spills there (255 registers).
  const int variant = flash_tile_variant(scalar_type_of<scalar_t>());
  if (variant == 3 || K == MmaKind::kF32) {
    using Cfg = FlashTile3;
    const size_t smem = flash_gsmem_smem<Cfg, K>(D);
    if (smem <= size_t(gpu::device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>())) {
      allow_smem(ms_flash_bwd_gsmem_kernel<Cfg, K, scalar_t>, smem);
#ifdef RECOGFAST_CUDA_EMULATION
      ++emu_gsmem_backwards;
#endif
      // One launch a part, the normalisation's backward fused (no G buffer, no waves).
      for (int part = 0; part < (grad_r && R > 0 ? 2 : 1); ++part) {
        const int64_t n = part == 0 ? B : R, off = part == 0 ? 0 : B, ncols = part == 0 ? cd.M : B;
        if (n == 0) continue;
        ms_flash_bwd_gsmem_kernel<Cfg, K, scalar_t><<<static_cast<unsigned>(ceil_div(n, Cfg::BM)), Cfg::kThreads, smem,
                                                      stream>>>(
            a, p, stats.const_data_ptr<float>(), hard_idx.const_data_ptr<int64_t>(), off, off + n, ncols,
            cd.norms.template const_data_ptr<float>(), g.const_data_ptr<float>(), B,
            (part == 0 ? grad_e : *grad_r).template mutable_data_ptr<scalar_t>());
        RF_CUDA_KERNEL_LAUNCH_CHECK();
      }
      return;
    }
  }
  with_flash_tile<true, K>(variant, [&](auto cfg) {
    using Cfg = decltype(cfg);
    const size_t smem = flash_smem<Cfg, K>(true);
    allow_smem(ms_flash_bwd_kernel<Cfg, K, scalar_t>, smem);
    waves(Cfg::BM, [&](int64_t rows, int64_t r0, int64_t r1, int64_t ncols, float* G) {
      const dim3 grid(static_cast<unsigned>(ceil_div(rows, Cfg::BM)), static_cast<unsigned>(ceil_div(D, Cfg::DC)));
      ms_flash_bwd_kernel<Cfg, K, scalar_t><<<grid, Cfg::kThreads, smem, stream>>>(
          a, p, stats.const_data_ptr<float>(), hard_idx.const_data_ptr<int64_t>(), r0, r1, ncols, G);
    });
  });
}

}  // namespace
}  // namespace recogfast
