// Flash Multi-Similarity loss: the tiles its kernels share (ms_loss_flash.cuh, ms_loss_flash_gsmem.cuh,
// ms_loss_flash_onepass.cuh) -- the CTA and warp layout, the staging of scaled candidate rows into shared memory,
// and the S product on tensor cores (ms_loss_mma.cuh).
//
// Tiles (template FlashTile<BM, BN, BK, DC, kPrefetch, MW>): a CTA of BM / (16 MW) warps owns BM rows; warp w owns
// rows 16 MW w .. 16 MW (w + 1) - 1 (MW m-tiles of 16; MW = 1 in the backward) and every column of the step, so each
// row's reductions stay inside one warp (the 4 lanes of a fragment row group, merged by shuffles in a fixed order:
// deterministic). A column step covers BN candidates;
// the product runs over D in BK-wide chunks staged in shared memory (zero-padded past D and past the last
// row / column, so any B, M, D works, D = 1 included). Rows are loaded already scaled: x · p2 with p2 = 2^-e
// (ms_loss_norms_kernel; a power of two: exact) and 0 for zero / NaN rows, so S_ij = (x'_i · x'_j) inv2_i
// inv2_j exactly as the tiles path's scaled copy gives — but no M x D copy is made.
#pragma once

#include <cuda_runtime.h>

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

}  // namespace
}  // namespace recogfast
