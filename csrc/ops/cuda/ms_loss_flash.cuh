// Flash Multi-Similarity loss, device side (sm_80+; issue 26): the similarity S = c cᵀ is formed tile by tile
// on tensor cores (ms_loss_mma.cuh), consumed in registers and never written to memory. The host side (path
// choice, launches) is ms_loss_flash_host.cuh; the rules each pass applies are ms_loss_rows.cuh's, exactly.
//
// The tile machinery the kernels below share (the CTA and warp layout, the staging of scaled rows, the S
// product) is ms_loss_flash_tile.cuh.
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

#include "ops/cuda/ms_loss_flash_tile.cuh"

namespace recogfast {
namespace {

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
