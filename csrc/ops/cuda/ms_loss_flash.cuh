// Flash Multi-Similarity loss, device side (sm_80+; issue 26): the similarity S = c cᵀ is formed tile by tile
// on tensor cores (ms_loss_mma.cuh), consumed in registers and never written to memory. The host side (path
// choice, launches) is ms_loss_flash_host.cuh; the rules each pass applies are ms_loss_rows.cuh's, exactly.
//
// Tiles (template FlashTile<BM, BN, BK, DC, kPrefetch, MW>): a CTA of BM / (16 MW) warps owns BM rows; warp w owns
// rows 16 MW w .. 16 MW (w + 1) - 1 (MW m-tiles of 16; MW = 1 in the backward) and every column of the step, so each
// row's reductions stay inside one warp (the 4 lanes of a fragment row group, merged by shuffles in a fixed order:
// deterministic). A column step covers BN candidates;
// the product runs over D in BK-wide chunks staged in shared memory (zero-padded past D and past the last
// row / column, so any B, M, D works, D = 1 included). Rows are loaded already scaled: x · p2 with p2 = 2^-e
// (ms_loss_norms_kernel; a power of two: exact) and 0 for zero / NaN rows, so S_ij = (x'_i · x'_j) inv2_i
// inv2_j exactly as the tiles path's scaled copy gives — but no M x D copy is made.
// Forward pass 1 (kPass = 1): per anchor, min positive / max negative similarity with the first index on ties,
//   excluding the anchor (ms_loss_rows_kernel sweep 1); "hardest" finishes here (stats, hard_idx, loss).
// Forward pass 2 (kPass = 2, "ms" / "all"): the mined sums with pass 1's shifts (sweep 2's predicates, ε = 0,
//   lone classes and empty sets included), then stats [B, 4] and the per-anchor loss.
// The one-pass forward ("ms" / "all", ms_loss_flash_onepass.cuh) replaces passes 1 and 2 by a gathered pass over
//   each anchor's class, the dense pass 4 (kPass = 4: negatives only, the sum rescaled online to the running max)
//   and a second gathered pass; the tiles take candidates through an index map (DirectIdx, PermIdx) for it.
// Backward (one fused pass, FlashAttention-2 style): a CTA owns rows I (candidates row0 + ...) and a chunk of
//   DC features; for each column block J it recomputes S_IJ, forms W_IJ = [row is anchor] w(row, col) +
//   [col is anchor] w(col, row) (pair_weight, from both rows' saved stats) times the column scale inv2_col,
//   turns it into A fragments (bf16/fp16: straight from the accumulator registers, the FA-2 layout identity;
//   tf32: through a per-warp shared-memory row, whose A layout differs from the accumulator's) and
//   accumulates G_I += W_IJ · x'_J (bf16/fp16: x'_J's B fragments by ldmatrix.trans, two n-tiles a load), skipped
//   where W_IJ is zero throughout (any_weight). Every G row is written once by one warp: no atomics.
// Where G lives: registers, one DC-wide chunk of features per CTA (DC / 2 fp32 registers a lane; a full
//   512-wide row would need 256). D > DC takes ceil(D / DC) CTAs per row block, each recomputing S_IJ: for
//   D = 512, DC = 128 that is 4 S products + 1 G product per pair instead of 2 — the price of registers-only
//   accumulation; tile variant 3 (ms_loss_flash_gsmem.cuh) keeps the CTA's G rows in shared memory instead
//   (BM x D x 4 bytes, 128 KB at BM = 64, D = 512): 1 S + 1 G product per pair. Shared memory: (BM + BN)(BK + pad) + BN (DC + pad) operand
//   elements (+ BM (BN + 4) fp32 for tf32): 27 KB for bf16 at the default tile, 69 KB tf32 (opt-in).
// Exponentials (pass 2's sums, the backward's pair weights): one MUFU.EX2 each (exp_of<true>, ms_loss_rows.cuh),
// whose 2^-22 is far inside the bf16 / fp16 / TF32 operands' own rounding; 3xTF32 and the tiles path keep exp.
// Labels: int32 (a narrowing copy); where a label does not fit int32 (flag set on the device by the copy)
// the kernels compare the int64 labels instead — decided per CTA on the device, no host sync.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "ops/cuda/ms_loss_mma.cuh"
#include "ops/cuda/ms_loss_rows.cuh"

namespace recogfast {
namespace {

// MW: m-tiles (16 rows each) a warp owns (forward only; the backward's W fragments need MW = 1): each B fragment
// loaded from shared memory feeds MW mma, so the S product's shared-memory reads per mma fall from 2.5 (MW = 1,
// BN = 64: 4 A + 16 B 32-bit loads per 8 mma) to 1.5 (MW = 2), for MW x the accumulator registers.
template <int BM_, int BN_, int BK_, int DC_, bool kPrefetch_ = false, int MW_ = 1>
struct FlashTile {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, DC = DC_, MW = MW_;
  static constexpr bool kPrefetch = kPrefetch_;  // similarity_tile's register prefetch of the next feature chunk
  static constexpr int kWarps = BM / (16 * MW), kThreads = kWarps * kWarp, NT = BN / 8, DT = DC / 8;
  static_assert(BM % (16 * MW) == 0 && BN % 16 == 0 && BK % 16 == 0 && DC % 8 == 0, "flash tile shape");
};

// Everything the flash kernels read about the candidates (batch rows then reference rows).
template <typename scalar_t>
struct FlashArgs {
  const scalar_t* xb;        // [B, D] batch rows
  const scalar_t* xr;        // [R, D] reference rows
  const float* p2;           // [M] power-of-two row scale (exact)
  const float* inv2;         // [M] 1 / |x p2| (0 for zero / non-finite rows)
  const int* lab32;          // [M] labels narrowed to int32
  const int64_t* lab64;      // [M] labels (used when flags[2]: some label does not fit int32)
  const int* flags;          // [3] device flags (ms_loss_norms_kernel, the narrowing copy)
  int64_t B, M, D;
};

// Shared-memory element of an operand: raw bf16/fp16 bits, tf32 bits, or fp32 bits (kF32: split into tf32 pairs at
// fragment load, tf_frag).
template <MmaKind K>
using flash_elem_t = std::conditional_t<kTf32Shape<K>, uint32_t, uint16_t>;

template <MmaKind K>
__device__ __forceinline__ flash_elem_t<K> to_elem(float v) {
  if constexpr (K == MmaKind::kBF16) return BFloat16(v).x;
  else if constexpr (K == MmaKind::kF16) return Half(v).x;
  else if constexpr (K == MmaKind::kTF32) return to_tf32(v);
  else return __float_as_uint(v);
}

template <MmaKind K>
constexpr int kPad = kTf32Shape<K> ? 4 : 8;  // row padding of the staged tiles, in elements

// The exponentials' form (exp_of, ms_loss_rows.cuh): ex2 where the operands' rounding dwarfs its 2^-22 + |x| 2^-24
// (bf16, fp16, TF32); exp for 3xTF32, whose similarities carry fp32's own error (with ex2 the emulation found the
// gradient's error against float64 at 2.8x the fp32 CPU kernel's).
template <MmaKind K>
inline constexpr bool kFastExp = K != MmaKind::kF32;

// The candidate at position pos of a staged operand: pos itself (DirectIdx), or perm[pos] (PermIdx: the one-pass
// forward's gathered passes, whose rows and columns run in label order; ms_loss_flash_onepass.cuh).
struct DirectIdx {
  __device__ __forceinline__ int64_t operator()(int64_t pos) const { return pos; }
};
struct PermIdx {
  const int64_t* perm;
  __device__ __forceinline__ int64_t operator()(int64_t pos) const { return perm[pos]; }
};

// One staging group: features [d, d + V) of the candidate c = map(pos) at operand position pos (V = 16 /
// sizeof(scalar_t)), loaded raw into v, and its row's scale q = p2[c], or 0 (v untouched) for padding (pos >= pos_end,
// d >= D) and for rows with inv2 = 0 (a zero / NaN row). One 16-byte load where the row segment is whole and 16-byte aligned, else V scalar loads (D not a
// multiple of V, an offset view, the tail; features past D read as 0).
template <typename scalar_t, int V, class Map = DirectIdx>
__device__ __forceinline__ float load_group(VecT<scalar_t, V>& v, const FlashArgs<scalar_t>& a, int64_t pos,
                                            int64_t pos_end, int64_t d, Map map = {}) {
  if (pos >= pos_end || d >= a.D) return 0.f;
  const int64_t c = map(pos);
  const float q = a.p2[c] * (a.inv2[c] != 0.f);
  if (q != 0.f) {
    const scalar_t* x = (c < a.B ? a.xb + c * a.D : a.xr + (c - a.B) * a.D) + d;
    if (d + V <= a.D && reinterpret_cast<uintptr_t>(x) % 16 == 0) {
      v = *reinterpret_cast<const VecT<scalar_t, V>*>(x);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) v.v[j] = d + j < a.D ? x[j] : static_cast<scalar_t>(0.f);
    }
  }
  return q;
}

// A group's V operand elements x · q (exact: q is a power of two) at s, or V zeros where q = 0: one 16-byte store
// (V operand elements are 16 bytes for every kind: 8 bf16/fp16, 4 tf32; s is 16-byte aligned, since the staged
// tiles' leading dimensions BK + kPad, DC + kPad are multiples of 16 bytes and groups start at multiples of V).
template <MmaKind K, typename scalar_t, int V>
__device__ __forceinline__ void store_group(flash_elem_t<K>* s, const VecT<scalar_t, V>& v, float q) {
  static_assert(V * sizeof(flash_elem_t<K>) == 16, "a staging group is one 16-byte store");
  VecT<flash_elem_t<K>, V> o;
#pragma unroll
  for (int j = 0; j < V; ++j) o.v[j] = to_elem<K>(q != 0.f ? static_cast<float>(v.v[j]) * q : 0.f);
  *reinterpret_cast<VecT<flash_elem_t<K>, V>*>(s) = o;
}

// Stages rows [c0, c0 + rows) (candidate indices, valid below c_end) x features [k0, k0 + cols) into s
// (leading dimension ld), each row scaled by its p2, one group (load_group) after another.
template <MmaKind K, typename scalar_t, class Map = DirectIdx>
__device__ __forceinline__ void stage(flash_elem_t<K>* s, int ld, const FlashArgs<scalar_t>& a, int64_t c0,
                                      int64_t c_end, int rows, int64_t k0, int cols, int tid, int nthreads,
                                      Map map = {}) {
  constexpr int V = 16 / sizeof(scalar_t);  // cols (BK, DC) are multiples of 8, so of V
  const int groups = cols / V;
  for (int e = tid; e < rows * groups; e += nthreads) {
    const int r = e / groups, k = e % groups * V;
    VecT<scalar_t, V> v;
    const float q = load_group(v, a, c0 + r, c_end, k0 + k, map);
    store_group<K>(s + r * ld + k, v, q);
  }
}

// A thread's groups of one kRows x kCols staging held in registers between load and store (similarity_tile's
// prefetch): group i is element tid + i · kThreads of the rows x (kCols / V) groups.
template <typename scalar_t, int kRows, int kCols, int kThreads>
struct StageRegs {
  static constexpr int V = 16 / sizeof(scalar_t), kGroups = kRows * (kCols / V);
  static constexpr int N = (kGroups + kThreads - 1) / kThreads;
  VecT<scalar_t, V> v[N];
  float q[N];

  template <class Map = DirectIdx>
  __device__ __forceinline__ void load(const FlashArgs<scalar_t>& a, int64_t c0, int64_t c_end, int64_t k0, int tid,
                                       Map map = {}) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const int e = tid + i * kThreads;
      q[i] = e < kGroups ? load_group(v[i], a, c0 + e / (kCols / V), c_end, k0 + e % (kCols / V) * V, map) : 0.f;
    }
  }
  template <MmaKind K>
  __device__ __forceinline__ void store(flash_elem_t<K>* s, int ld, int tid) const {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const int e = tid + i * kThreads;
      if (e < kGroups) store_group<K>(s + e / (kCols / V) * ld + e % (kCols / V) * V, v[i], q[i]);
    }
  }
};

// acc[m][nt] += A (m-tile m of this warp's 16 MW rows of As, from wrow) · B (the BN rows of Bs)ᵀ over BK staged
// features; each B fragment serves the MW m-tiles.
template <class Cfg, MmaKind K>
__device__ __forceinline__ void tile_product(float (&acc)[Cfg::MW][Cfg::NT][4], const flash_elem_t<K>* As,
                                             const flash_elem_t<K>* Bs, int ld, int wrow, int g, int t) {
  if constexpr (kTf32Shape<K>) {
#pragma unroll
    for (int kk = 0; kk < Cfg::BK; kk += 8) {
      TfFrag<K, 4> av[Cfg::MW];  // split once (kF32), used for the NT n-tiles
#pragma unroll
      for (int m = 0; m < Cfg::MW; ++m) {
        const uint32_t* a0 = As + (wrow + 16 * m + g) * ld + kk;
        av[m] = tf_frag<K, 4>({a0[t], a0[8 * ld + t], a0[t + 4], a0[8 * ld + t + 4]});
      }
#pragma unroll
      for (int nt = 0; nt < Cfg::NT; ++nt) {
        const uint32_t* b0 = Bs + (nt * 8 + g) * ld + kk;
        const TfFrag<K, 2> bv = tf_frag<K, 2>({b0[t], b0[t + 4]});
#pragma unroll
        for (int m = 0; m < Cfg::MW; ++m) mma_tf<K>(acc[m][nt], av[m], bv);
      }
    }
  } else {
#pragma unroll
    for (int kk = 0; kk < Cfg::BK; kk += 16) {
      uint32_t av[Cfg::MW][4];
#pragma unroll
      for (int m = 0; m < Cfg::MW; ++m) {
        const uint16_t* a0 = As + (wrow + 16 * m + g) * ld + kk + 2 * t;
        av[m][0] = pack2(a0[0], a0[1]), av[m][1] = pack2(a0[8 * ld], a0[8 * ld + 1]);
        av[m][2] = pack2(a0[8], a0[9]), av[m][3] = pack2(a0[8 * ld + 8], a0[8 * ld + 9]);
      }
#pragma unroll
      for (int nt = 0; nt < Cfg::NT; ++nt) {
        const uint16_t* b0 = Bs + (nt * 8 + g) * ld + kk + 2 * t;
        const uint32_t bv[2] = {pack2(b0[0], b0[1]), pack2(b0[8], b0[9])};
#pragma unroll
        for (int m = 0; m < Cfg::MW; ++m) mma_16816<K>(acc[m][nt], av[m], bv, acc[m][nt]);
      }
    }
  }
}

// The m16n8k16 B fragments of k-rows [k0, k0 + 16) and of the n-tiles at columns n0 (bv[0]) and, where `both`,
// n0 + 8 (bv[1]) of the row-major [k][ld] 16-bit tile s: one ldmatrix.trans (x4, or x2 for one n-tile) instead of
// four 16-bit loads per fragment register (the backward's G product: B = x'_J's chunk, k = the column candidates).
// Needs 16-byte aligned rows: ld and n0 multiples of 8 elements (kPad and DC keep them so).
__device__ __forceinline__ void b_frags_trans(uint32_t (&bv)[2][2], const uint16_t* s, int ld, int k0, int n0, int lane,
                                              bool both) {
  const uint16_t* row = s + (k0 + (lane >> 3 & 1) * 8 + (lane & 7)) * ld + n0 + (lane >> 4) * 8;
  if (both) {
    uint32_t r[4];
    ldsm_trans<4>(r, row);
    bv[0][0] = r[0], bv[0][1] = r[1], bv[1][0] = r[2], bv[1][1] = r[3];
  } else {
    uint32_t r[2];
    ldsm_trans<2>(r, row);
    bv[0][0] = r[0], bv[0][1] = r[1];
  }
}

// S of rows [r0, r0 + BM) (positions, valid below r_end; candidate rmap(pos)) against columns [j0, j0 + BN) (valid
// below j_end; candidate cmap(pos)), unscaled (x' · x'), in the accumulator fragments of each warp (acc[m]: its m-tile m). With Cfg::kPrefetch the loop is software-pipelined
// through registers: the global loads of feature chunk k0 + BK are issued before chunk k0's product and stored to
// shared memory after it, so their latency hides behind the mma rather than behind other CTAs (the same shared
// memory and barriers, about 30-65 more registers a thread on sm_90; the same values and mma order, so the same
// bits). Ends with a barrier: the staging buffers are free again.
template <class Cfg, MmaKind K, typename scalar_t, class RowMap = DirectIdx, class ColMap = DirectIdx>
__device__ __forceinline__ void similarity_tile(float (&acc)[Cfg::MW][Cfg::NT][4], flash_elem_t<K>* As,
                                                flash_elem_t<K>* Bs, const FlashArgs<scalar_t>& a, int64_t r0,
                                                int64_t r_end, int64_t j0, int64_t j_end, int wrow, int g, int t,
                                                RowMap rmap = {}, ColMap cmap = {}) {
  constexpr int ld = Cfg::BK + kPad<K>;
  const int tid = threadIdx.x;
#pragma unroll
  for (int m = 0; m < Cfg::MW; ++m)
#pragma unroll
    for (int nt = 0; nt < Cfg::NT; ++nt) acc[m][nt][0] = acc[m][nt][1] = acc[m][nt][2] = acc[m][nt][3] = 0.f;
  if constexpr (Cfg::kPrefetch) {
    StageRegs<scalar_t, Cfg::BM, Cfg::BK, Cfg::kThreads> ra;
    StageRegs<scalar_t, Cfg::BN, Cfg::BK, Cfg::kThreads> rb;
    ra.load(a, r0, r_end, 0, tid, rmap);
    rb.load(a, j0, j_end, 0, tid, cmap);
    for (int64_t k0 = 0; k0 < a.D; k0 += Cfg::BK) {
      ra.template store<K>(As, ld, tid);
      rb.template store<K>(Bs, ld, tid);
      __syncthreads();
      if (k0 + Cfg::BK < a.D) {  // the next chunk's loads, in flight during this chunk's product
        ra.load(a, r0, r_end, k0 + Cfg::BK, tid, rmap);
        rb.load(a, j0, j_end, k0 + Cfg::BK, tid, cmap);
      }
      tile_product<Cfg, K>(acc, As, Bs, ld, wrow, g, t);
      __syncthreads();
    }
  } else {
    for (int64_t k0 = 0; k0 < a.D; k0 += Cfg::BK) {
      stage<K>(As, ld, a, r0, r_end, Cfg::BM, k0, Cfg::BK, tid, Cfg::kThreads, rmap);
      stage<K>(Bs, ld, a, j0, j_end, Cfg::BN, k0, Cfg::BK, tid, Cfg::kThreads, cmap);
      __syncthreads();
      tile_product<Cfg, K>(acc, As, Bs, ld, wrow, g, t);
      __syncthreads();
    }
  }
}

// The 2 MW accumulator rows this thread holds in a CTA's row block at r0 (its warp's MW m-tiles of 16 rows from
// wrow; m-tile m's fragment rows g and g + 8 are row[2m], row[2m + 1]) and their scales inv2 (0 past row_end:
// padding rows add nothing). Every flash kernel starts with it.
template <int MW, typename scalar_t>
__device__ __forceinline__ void fragment_rows(const FlashArgs<scalar_t>& a, int64_t r0, int wrow, int g,
                                              int64_t row_end, int64_t (&row)[2 * MW], float (&scale)[2 * MW]) {
#pragma unroll
  for (int h = 0; h < 2 * MW; ++h) {
    row[h] = r0 + wrow + 16 * (h / 2) + g + 8 * (h % 2);
    scale[h] = row[h] < row_end ? a.inv2[row[h]] : 0.f;
  }
}

template <typename scalar_t>
__device__ __forceinline__ bool same_label(const FlashArgs<scalar_t>& a, bool wide, int64_t i, int64_t k) {
  return wide ? a.lab64[i] == a.lab64[k] : a.lab32[i] == a.lab32[k];
}

// Which forward a launch belongs to: the two-pass forward (passes 1, 2) or the one-pass forward (passes 3, 4, 5:
// ms_loss_flash_onepass.cuh). With work set ("auto") the device decides, from the gathered passes' work counted by
// ms_flash_segments_kernel: one pass where *work <= limit; without it, one pass iff limit != 0. A kernel of the
// other forward returns at once (no host sync: both forwards' kernels are launched, each checks).
struct FlashFwdGate {
  const unsigned long long* work;
  long long limit;
};
__device__ __forceinline__ bool one_pass_forward(const FlashFwdGate& gate) {
  return gate.work ? *gate.work <= static_cast<unsigned long long>(gate.limit) : gate.limit != 0;
}

// Forward pass kPass over the B anchors; one CTA per BM anchors, all M columns: 1 or 2 (see the file comment), or
// the one-pass forward's dense pass 4 (negatives only: the running max negative with its first index and the mined
// negative sum rescaled online to it, with pass 3's min positive as its threshold; ms_loss_flash_onepass.cuh).
template <class Cfg, MmaKind K, typename scalar_t, int kPass>
__global__ void __launch_bounds__(Cfg::kThreads)
    ms_flash_fwd_kernel(FlashArgs<scalar_t> a, Params p, float* __restrict__ stats, int64_t* __restrict__ hard_idx,
                        float* __restrict__ per_anchor, FlashFwdGate gate) {
  static_assert(kPass == 1 || kPass == 2 || kPass == 4, "dense forward passes");
  if (one_pass_forward(gate) != (kPass == 4)) return;  // the other forward's launch (uniform: before any barrier)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  using elem_t = flash_elem_t<K>;
  constexpr int ld = Cfg::BK + kPad<K>;
  elem_t* As = reinterpret_cast<elem_t*>(smem_raw);
  elem_t* Bs = As + Cfg::BM * ld;
  constexpr int MW = Cfg::MW, H = 2 * MW;  // the H rows this thread holds (fragment_rows)
  const int lane = threadIdx.x % kWarp, wrow = threadIdx.x / kWarp * 16 * MW, g = lane / 4, t = lane % 4;
  const int64_t r0 = int64_t(blockIdx.x) * Cfg::BM;
  const bool wide = a.flags[2] != 0;
  const float inf = INFINITY, alpha = float(p.alpha), beta = float(p.beta), base = float(p.base), eps = float(p.eps);
  int64_t row[H], an[H], ax[H];
  float si[H], mn[H], mx[H], zp[H], zn[H];
  fragment_rows<MW>(a, r0, wrow, g, a.B, row, si);
#pragma unroll
  for (int h = 0; h < H; ++h) {
    const bool ok = row[h] < a.B;
    mn[h] = kPass != 1 && ok ? stats[row[h] * 4 + 2] : inf;
    mx[h] = kPass == 2 && ok ? stats[row[h] * 4 + 3] : -inf;
    an[h] = ax[h] = -1;
    zp[h] = zn[h] = 0.f;
  }
  const bool ms = p.mining == int(Mining::kMS);
  float acc[MW][Cfg::NT][4];
  for (int64_t j0 = 0; j0 < a.M; j0 += Cfg::BN) {
    similarity_tile<Cfg, K>(acc, As, Bs, a, r0, a.B, j0, a.M, wrow, g, t);
#pragma unroll
    for (int m = 0; m < MW; ++m)
#pragma unroll
      for (int nt = 0; nt < Cfg::NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int h = 2 * m + e / 2;
          const int64_t k = j0 + nt * 8 + 2 * t + (e & 1), i = row[h];
          if (i >= a.B || k >= a.M || k == i) continue;
          const float s = acc[m][nt][e] * (si[h] * a.inv2[k]);
          const bool pos = same_label(a, wide, i, k);
          if constexpr (kPass == 1) {  // columns arrive in increasing order: strict < / > keeps the first index
            if (pos) {
              if (an[h] < 0 || s < mn[h]) mn[h] = s, an[h] = k;
            } else if (ax[h] < 0 || s > mx[h]) {
              mx[h] = s, ax[h] = k;
            }
          } else if constexpr (kPass == 4) {  // negatives; zn is relative to this lane's running max mx
            if (pos) continue;
            if (ax[h] < 0 || s > mx[h]) {
              if (ax[h] >= 0) zn[h] *= exp_of<kFastExp<K>>(beta * (mx[h] - s));
              mx[h] = s, ax[h] = k;
            }
            if (s + eps > (ms ? mn[h] : -inf)) zn[h] += exp_of<kFastExp<K>>(beta * (s - mx[h]));
          } else if (pos) {  // exp_of: ex2 but for 3xTF32 (kFastExp)
            if (s - eps < (ms ? mx[h] : inf)) zp[h] += exp_of<kFastExp<K>>(-alpha * (s - mn[h]));
          } else if (s + eps > (ms ? mn[h] : -inf)) {
            zn[h] += exp_of<kFastExp<K>>(beta * (s - mx[h]));
          }
        }
  }
  // The 4 lanes of a row group hold the row's columns: merge them (fixed order).
#pragma unroll
  for (int h = 0; h < H; ++h) {
#pragma unroll
    for (int o = 1; o < 4; o <<= 1) {
      if constexpr (kPass == 1) {
        const float v1 = __shfl_xor_sync(0xffffffffu, mn[h], o), v2 = __shfl_xor_sync(0xffffffffu, mx[h], o);
        const int64_t i1 = __shfl_xor_sync(0xffffffffu, an[h], o), i2 = __shfl_xor_sync(0xffffffffu, ax[h], o);
        arg_merge<true>(mn[h], an[h], v1, i1);
        arg_merge<false>(mx[h], ax[h], v2, i2);
      } else if constexpr (kPass == 4) {  // both lanes of a pair compute the same sum (+ commutes): same bits
        const float m2 = __shfl_xor_sync(0xffffffffu, mx[h], o), z2 = __shfl_xor_sync(0xffffffffu, zn[h], o);
        const int64_t a2 = __shfl_xor_sync(0xffffffffu, ax[h], o);
        float m = mx[h];
        int64_t am = ax[h];
        arg_merge<false>(m, am, m2, a2);
        float z = 0.f;
        if (ax[h] >= 0) z += zn[h] * exp_of<kFastExp<K>>(beta * (mx[h] - m));
        if (a2 >= 0) z += z2 * exp_of<kFastExp<K>>(beta * (m2 - m));
        mx[h] = m, ax[h] = am, zn[h] = z;
      } else {
        zp[h] += __shfl_xor_sync(0xffffffffu, zp[h], o);
        zn[h] += __shfl_xor_sync(0xffffffffu, zn[h], o);
      }
    }
    const int64_t i = row[h];
    if (t != 0 || i >= a.B) continue;
    float* st = stats + i * 4;
    float lzp = 0, lzn = 0;
    if constexpr (kPass == 4) {  // pass 5 finishes the row (its positive sum, the logs and the loss)
      st[3] = ax[h] < 0 ? -inf : mx[h];
      st[1] = zn[h];
      continue;
    } else if constexpr (kPass == 1) {
      if (an[h] < 0) mn[h] = inf;
      if (ax[h] < 0) mx[h] = -inf;
      st[2] = mn[h];
      st[3] = mx[h];
      if (p.mining != int(Mining::kHardest)) continue;  // pass 2 writes the rest
      if (an[h] >= 0 && ax[h] >= 0) {
        lzp = softplus(-alpha * (mn[h] - base));
        lzn = softplus(beta * (mx[h] - base));
      } else {
        an[h] = ax[h] = -1;
      }
      hard_idx[i * 2] = an[h];
      hard_idx[i * 2 + 1] = ax[h];
    } else {
      if (zp[h] > 0) lzp = softplus(-alpha * (mn[h] - base) + log(zp[h]));
      if (zn[h] > 0) lzn = softplus(beta * (mx[h] - base) + log(zn[h]));
    }
    st[0] = lzp;
    st[1] = lzn;
    per_anchor[i] = lzp / alpha + lzn / beta;
  }
}

// W (times the column scale) in place of S in the accumulator fragments of column block j0 (the backward's
// pair weights, see the file comment), for this warp's rows row[2] (scales sc[2]); 0 outside the block.
template <class Cfg, MmaKind K, typename scalar_t>
__device__ __forceinline__ void weight_tile(float (&acc)[Cfg::NT][4], const FlashArgs<scalar_t>& a, const Params& p,
                                            const float* __restrict__ stats, const int64_t* __restrict__ hard_idx,
                                            const int64_t (&row)[2], const float (&sc)[2], int64_t j0, int64_t row_end,
                                            int64_t ncols, bool wide, int t) {
#pragma unroll
  for (int nt = 0; nt < Cfg::NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int h = e / 2;
      const int64_t k = j0 + nt * 8 + 2 * t + (e & 1), c = row[h];
      float w = 0;
      if (c < row_end && k < ncols && k != c) {
        const float sk = a.inv2[k], s = acc[nt][e] * (sc[h] * sk);
        const bool pos = same_label(a, wide, c, k);
        if (c < p.B) w += pair_weight<float, kFastExp<K>>(stats, hard_idx, c, k, s, pos, p);
        if (k < p.B) w += pair_weight<float, kFastExp<K>>(stats, hard_idx, k, c, s, pos, p);
        w *= sk;
      }
      acc[nt][e] = w;
    }
}

#ifdef RECOGFAST_CUDA_EMULATION
inline std::atomic<int> emu_zero_w_skips{0};  // column blocks whose G product a backward CTA skipped (any_weight)
#endif

// Whether any pair weight of the CTA's W_IJ tile (acc, after weight_tile) is nonzero: a barrier (every thread of the
// CTA calls it). Where none is, the G product of the column block adds exact zeros (zero A fragments; x'_J finite,
// zero / NaN rows staged as 0), so the backward kernels skip it, its x'_J staging included, and keep the same bits.
// Mined pairs are few once embeddings separate ("ms": negatives above the anchor's min positive minus epsilon, and
// positives below its max negative plus epsilon; "hardest": two a row), so most column blocks skip then.
template <class Cfg>
__device__ __forceinline__ bool any_weight(const float (&acc)[Cfg::NT][4]) {
  int nz = 0;
#pragma unroll
  for (int nt = 0; nt < Cfg::NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) nz |= acc[nt][e] != 0.f;
  const bool any = __syncthreads_or(nz) != 0;
#ifdef RECOGFAST_CUDA_EMULATION
  if (!any && threadIdx.x == 0) ++emu_zero_w_skips;
#endif
  return any;
}

// Backward: G[r - row_off_g, d] for rows r in [row0, row_end) (candidate indices; a wave of them) and columns
// = candidates [0, ncols), features d of chunk blockIdx.y. G is fp32 [row_end - row0, D].
template <class Cfg, MmaKind K, typename scalar_t>
__global__ void __launch_bounds__(Cfg::kThreads)
    ms_flash_bwd_kernel(FlashArgs<scalar_t> a, Params p, const float* __restrict__ stats,
                        const int64_t* __restrict__ hard_idx, int64_t row0, int64_t row_end, int64_t ncols,
                        float* __restrict__ G) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  using elem_t = flash_elem_t<K>;
  constexpr int ld = Cfg::BK + kPad<K>, ldx = Cfg::DC + kPad<K>, ldw = Cfg::BN + 4;
  elem_t* As = reinterpret_cast<elem_t*>(smem_raw);
  elem_t* Bs = As + Cfg::BM * ld;
  elem_t* Xs = Bs + Cfg::BN * ld;   // [BN][ldx]: the column block's features of this chunk
  uint32_t* Ws = reinterpret_cast<uint32_t*>(Xs + Cfg::BN * ldx);  // tf32 / fp32 only: [BM][ldw]
  const int lane = threadIdx.x % kWarp, wrow = threadIdx.x / kWarp * 16, g = lane / 4, t = lane % 4;
  const int64_t r0 = row0 + int64_t(blockIdx.x) * Cfg::BM, dc0 = int64_t(blockIdx.y) * Cfg::DC;
  const bool wide = a.flags[2] != 0;
  static_assert(Cfg::MW == 1, "the backward's warps own one m-tile (the W fragments' layout)");
  int64_t row[2];
  float sc[2];
  fragment_rows<1>(a, r0, wrow, g, row_end, row, sc);
  float acc1[1][Cfg::NT][4], gacc[Cfg::DT][4];
  auto& acc = acc1[0];
#pragma unroll
  for (int dn = 0; dn < Cfg::DT; ++dn) gacc[dn][0] = gacc[dn][1] = gacc[dn][2] = gacc[dn][3] = 0.f;
  // x'_J's chunk is staged once W_IJ is known to be nonzero somewhere (no register prefetch here: holding it across
  // weight_tile took variant 4's kernel to 255 registers and 134-184 bytes of spills on sm_90; variant 3's backward
  // does prefetch it).
  for (int64_t j0 = 0; j0 < ncols; j0 += Cfg::BN) {
    similarity_tile<Cfg, K>(acc1, As, Bs, a, r0, row_end, j0, ncols, wrow, g, t);
    weight_tile<Cfg, K>(acc, a, p, stats, hard_idx, row, sc, j0, row_end, ncols, wide, t);
    if (!any_weight<Cfg>(acc)) continue;  // W_IJ = 0: its G product would add exact zeros (the same bits)
    stage<K>(Xs, ldx, a, j0, ncols, Cfg::BN, dc0, Cfg::DC, threadIdx.x, Cfg::kThreads);
    if constexpr (kTf32Shape<K>) {
#pragma unroll
      for (int nt = 0; nt < Cfg::NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) Ws[(wrow + g + 8 * (e / 2)) * ldw + nt * 8 + 2 * t + (e & 1)] = to_elem<K>(acc[nt][e]);
    }
    __syncthreads();  // Xs staged (and this warp's Ws rows written)
    if constexpr (kTf32Shape<K>) {
#pragma unroll
      for (int ks = 0; ks < Cfg::BN; ks += 8) {
        const uint32_t* w0 = Ws + (wrow + g) * ldw + ks;
        const TfFrag<K, 4> av = tf_frag<K, 4>({w0[t], w0[8 * ldw + t], w0[t + 4], w0[8 * ldw + t + 4]});
#pragma unroll
        for (int dn = 0; dn < Cfg::DT; ++dn)
          mma_tf<K>(gacc[dn], av, tf_frag<K, 2>({Xs[(ks + t) * ldx + dn * 8 + g], Xs[(ks + t + 4) * ldx + dn * 8 + g]}));
      }
    } else {
      // The accumulator of n-tiles 2q, 2q+1 is, element for element, the A fragment of k-step q (FA-2); the B
      // fragments of two n-tiles come from one ldmatrix.trans of Xs.
#pragma unroll
      for (int q = 0; q < Cfg::NT / 2; ++q) {
        const uint32_t av[4] = {pack2(to_elem<K>(acc[2 * q][0]), to_elem<K>(acc[2 * q][1])),
                                pack2(to_elem<K>(acc[2 * q][2]), to_elem<K>(acc[2 * q][3])),
                                pack2(to_elem<K>(acc[2 * q + 1][0]), to_elem<K>(acc[2 * q + 1][1])),
                                pack2(to_elem<K>(acc[2 * q + 1][2]), to_elem<K>(acc[2 * q + 1][3]))};
#pragma unroll
        for (int dn = 0; dn < Cfg::DT; dn += 2) {
          uint32_t bv[2][2];
          b_frags_trans(bv, Xs, ldx, 16 * q, dn * 8, lane, dn + 1 < Cfg::DT);
          mma_16816<K>(gacc[dn], av, bv[0], gacc[dn]);
          if (dn + 1 < Cfg::DT) mma_16816<K>(gacc[dn + 1], av, bv[1], gacc[dn + 1]);
        }
      }
    }
    __syncthreads();  // Xs / Ws free for the next column block
  }
#pragma unroll
  for (int dn = 0; dn < Cfg::DT; ++dn)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t c = row[e / 2], d = dc0 + dn * 8 + 2 * t + (e & 1);
      if (c < row_end && d < a.D) G[(c - row0) * a.D + d] = gacc[dn][e];
    }
}

// lab32 = int32(lab); flags[2] = 1 where a label does not fit (the kernels then compare lab64).
__global__ void ms_flash_labels_kernel(const int64_t* __restrict__ lab, int* __restrict__ lab32, int* __restrict__ flags,
                                       int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = lab[i];
    lab32[i] = static_cast<int>(v);
    if (v != static_cast<int64_t>(static_cast<int>(v))) flags[2] = 1;  // every writer stores 1: no atomics
  }
}

}  // namespace
}  // namespace recogfast
