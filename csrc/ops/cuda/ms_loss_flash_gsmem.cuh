// Flash MS-loss backward with G in shared memory: tile variant 3 (RECOGFAST_MS_FLASH_TILE=3; issue 26). The
// register backward of ms_loss_flash.cuh keeps G in registers, one DC-wide feature chunk per CTA, so every row
// block recomputes S_IJ ceil(D / DC) times (D = 512, DC = 128: 4 S products + 1 G product per pair). Here a CTA
// owns BM rows and all D features: G_I lives in shared memory (Gs, fp32), and per column block J the CTA
//   1. computes S_IJ once, over the full D (similarity_tile),
//   2. forms W_IJ once (weight_tile) and keeps it in registers as A fragments (bf16/fp16: packed straight from
//      the accumulator, the FA-2 layout identity; tf32: through this warp's rows of Ws, read back once); a W_IJ
//      that is zero throughout skips step 3 (any_weight: the same bits),
//   3. for each DC-wide feature chunk stages x'_J's chunk (Xs; always prefetched: the first chunk's loads are issued
//      once W is known to be nonzero, before its fragments are formed, and each next chunk's during this chunk's
//      product: one CTA an SM has no other CTA to hide them behind) and runs G_I[:, chunk] += W_IJ · x'_J[:, chunk],
//      the mma accumulating into C fragments loaded from and stored back to Gs, two 8-column n-tiles at a time
//      (bf16/fp16: their B fragments by one ldmatrix.trans of Xs).
// So 1 S product + 1 G product per pair at any D that fits. Each warp owns its 16 rows of Gs (the C fragment's
// rows g, g + 8), so the read-modify-write of G needs no barrier; an element's sum runs over column blocks, then
// k-steps, in increasing order: the register kernel's order at the same BN. Deterministic, no atomics.
// Epilogue: the CTA holds whole G rows, so it applies the normalisation's backward itself (ms_loss_rows.cuh's
// ms_loss_normalize_backward_kernel, the same arithmetic in the same order: one warp a row, lane-strided dot,
// warp_sum) and writes each gradient row once: no G buffer in global memory and no row waves, so one launch
// covers all rows of a part (B = 16384: 256 CTAs, where a wave of the register kernel's 8 MB G buffer would hold
// 64 row blocks at D = 512).
// Gs: [BM][ldg] with ldg = round_up(D, 32) + 8 floats: the C fragment's 8-byte accesses (row g, cols 2t, 2t + 1)
// of a half warp (g = 0..3) fall on banks 8g + 2t, 8g + 2t + 1, all 32 distinct: conflict-free. n-tiles at or
// past D are skipped (warp-uniform), so no column beyond round_up(D, 8) is touched.
// Shared memory (flash_gsmem_smem, ms_loss_flash_host.cuh): BM · ldg · 4 bytes + the register kernel's operand
// tiles; at BM 64, BN 64, BK 32, DC 128, D = 512: 133,120 + 27,648 = 160,768 bytes (157 KB) bf16/fp16,
// 133,120 + 69,632 = 202,752 (198 KB) tf32: opt-in, within sm_80/sm_90's 163/227 KB for bf16, sm_90 only for
// tf32. Where it does not fit the host falls back to the register kernel (variant 0). One CTA of 4 warps per SM
// at D = 512: occupancy is the price, left for tuning on a GPU.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ops/cuda/ms_loss_flash.cuh"

namespace recogfast {
namespace {

// Row stride of Gs, in floats (see the file comment).
__host__ __device__ inline int64_t flash_gsmem_ld(int64_t D) { return (D + 31) / 32 * 32 + 8; }

// Backward, G in shared memory: the gradient out[r - row0, :] of rows r in [row0, row_end) (candidate indices: the
// anchors, or the reference rows) against columns = candidates [0, ncols), all D features; norms [M] the rows'
// norms, grad_loss the loss gradient, nb the batch size (the loss's mean). One CTA per BM rows.
// __launch_bounds__(kThreads, 1): one CTA per SM is what the shared memory allows at D = 512 anyway; without the
// minimum ptxas (nvcc 13.0, sm_90) spilled 8 bytes of the tf32 kernel at 72 registers; with it 97 / 104; with the
// register prefetch of FlashTile3 (one CTA of 4 warps an SM has no other CTA to hide its loads behind) of the S
// product's chunks and of x'_J's chunks, 252 (bf16, fp16) / 254 (tf32) registers and no spills: at the limit, so a
// change here must recheck `-Xptxas -v` (any_weight's vote with the first chunk's loads issued before it, behind
// W's exps, spilled 40 bytes in bf16 / fp16; issued after it: 255 / 253 registers, no spills).
template <class Cfg, MmaKind K, typename scalar_t>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    ms_flash_bwd_gsmem_kernel(FlashArgs<scalar_t> a, Params p, const float* __restrict__ stats,
                              const int64_t* __restrict__ hard_idx, int64_t row0, int64_t row_end, int64_t ncols,
                              const float* __restrict__ norms, const float* __restrict__ grad_loss, int64_t nb,
                              scalar_t* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  using elem_t = flash_elem_t<K>;
  constexpr int ld = Cfg::BK + kPad<K>, ldx = Cfg::DC + kPad<K>, ldw = Cfg::BN + 4;
  constexpr int KS = kTf32Shape<K> ? Cfg::BN / 8 : Cfg::BN / 16;  // k-steps of the G product
  const int D = static_cast<int>(a.D), ldg = static_cast<int>(flash_gsmem_ld(a.D));
  float* Gs = reinterpret_cast<float*>(smem_raw);  // [BM][ldg]; ldg even, so 8-byte aligned C fragment pairs
  elem_t* As = reinterpret_cast<elem_t*>(Gs + Cfg::BM * ldg);
  elem_t* Bs = As + Cfg::BM * ld;
  elem_t* Xs = Bs + Cfg::BN * ld;                                   // [BN][ldx]: the column block's feature chunk
  uint32_t* Ws = reinterpret_cast<uint32_t*>(Xs + Cfg::BN * ldx);  // tf32 / fp32 only: [BM][ldw]
  const int lane = threadIdx.x % kWarp, wrow = threadIdx.x / kWarp * 16, g = lane / 4, t = lane % 4;
  const int64_t r0 = row0 + int64_t(blockIdx.x) * Cfg::BM;
  const bool wide = a.flags[2] != 0;
  static_assert(Cfg::MW == 1, "the backward's warps own one m-tile (the W fragments' layout)");
  int64_t row[2];
  float sc[2];
  fragment_rows<1>(a, r0, wrow, g, row_end, row, sc);
  for (int i = threadIdx.x; i < Cfg::BM * ldg; i += Cfg::kThreads) Gs[i] = 0.f;
  __syncthreads();
  float acc1[1][Cfg::NT][4];
  auto& acc = acc1[0];
  uint32_t wa[KS][4];  // W_IJ as the A fragments of the G product's k-steps
  static_assert(Cfg::kPrefetch, "one CTA an SM has no other CTA to hide its loads behind: variant 3 prefetches");
  StageRegs<scalar_t, Cfg::BN, Cfg::DC, Cfg::kThreads> rx;  // the next x'_J chunk, in flight
  for (int64_t j0 = 0; j0 < ncols; j0 += Cfg::BN) {
    similarity_tile<Cfg, K>(acc1, As, Bs, a, r0, row_end, j0, ncols, wrow, g, t);
    weight_tile<Cfg, K>(acc, a, p, stats, hard_idx, row, sc, j0, row_end, ncols, wide, t);
    if (!any_weight<Cfg>(acc)) continue;  // W_IJ = 0: no G product
    rx.load(a, j0, ncols, 0, threadIdx.x);  // its latency behind forming W's fragments
    if constexpr (kTf32Shape<K>) {  // the tf32 A layout differs from the accumulator's: via this warp's Ws rows
#pragma unroll
      for (int nt = 0; nt < Cfg::NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) Ws[(wrow + g + 8 * (e / 2)) * ldw + nt * 8 + 2 * t + (e & 1)] = to_elem<K>(acc[nt][e]);
      __syncwarp();
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        const uint32_t* w0 = Ws + (wrow + g) * ldw + 8 * ks;
        wa[ks][0] = w0[t], wa[ks][1] = w0[8 * ldw + t], wa[ks][2] = w0[t + 4], wa[ks][3] = w0[8 * ldw + t + 4];
      }
    } else {  // the accumulator of n-tiles 2q, 2q+1 is, element for element, the A fragment of k-step q (FA-2)
#pragma unroll
      for (int q = 0; q < KS; ++q) {
        wa[q][0] = pack2(to_elem<K>(acc[2 * q][0]), to_elem<K>(acc[2 * q][1]));
        wa[q][1] = pack2(to_elem<K>(acc[2 * q][2]), to_elem<K>(acc[2 * q][3]));
        wa[q][2] = pack2(to_elem<K>(acc[2 * q + 1][0]), to_elem<K>(acc[2 * q + 1][1]));
        wa[q][3] = pack2(to_elem<K>(acc[2 * q + 1][2]), to_elem<K>(acc[2 * q + 1][3]));
      }
    }
    for (int dc0 = 0; dc0 < D; dc0 += Cfg::DC) {
      rx.template store<K>(Xs, ldx, threadIdx.x);
      __syncthreads();  // Xs staged
      if (dc0 + Cfg::DC < D) rx.load(a, j0, ncols, dc0 + Cfg::DC, threadIdx.x);  // in flight during this chunk's G product
#pragma unroll
      for (int dn = 0; dn < Cfg::DT; dn += 2) {  // n-tile pairs: dn, and dn + 1 where `two`
        if (dc0 + dn * 8 >= D) continue;  // warp-uniform: the n-tiles past D (zero in Xs) are not computed
        const bool two = dn + 1 < Cfg::DT && dc0 + dn * 8 + 8 < D;
        float c[2][4];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          if (j == 1 && !two) break;
          const float* c0 = Gs + (wrow + g) * ldg + dc0 + (dn + j) * 8 + 2 * t;
          const VecT<float, 2> lo = *reinterpret_cast<const VecT<float, 2>*>(c0),
                               hi = *reinterpret_cast<const VecT<float, 2>*>(c0 + 8 * ldg);
          c[j][0] = lo.v[0], c[j][1] = lo.v[1], c[j][2] = hi.v[0], c[j][3] = hi.v[1];
        }
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
          if constexpr (kTf32Shape<K>) {
            const TfFrag<K, 4> af = tf_frag<K, 4>(wa[ks]);  // kF32: W kept as fp32 (registers), split per use
#pragma unroll
            for (int j = 0; j < 2; ++j) {
              if (j == 1 && !two) break;
              const int n = (dn + j) * 8 + g;
              mma_tf<K>(c[j], af, tf_frag<K, 2>({Xs[(8 * ks + t) * ldx + n], Xs[(8 * ks + t + 4) * ldx + n]}));
            }
          } else {  // both n-tiles' B fragments by one ldmatrix.trans
            uint32_t bv[2][2];
            b_frags_trans(bv, Xs, ldx, 16 * ks, dn * 8, lane, two);
            mma_16816<K>(c[0], wa[ks], bv[0], c[0]);
            if (two) mma_16816<K>(c[1], wa[ks], bv[1], c[1]);
          }
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          if (j == 1 && !two) break;
          float* c0 = Gs + (wrow + g) * ldg + dc0 + (dn + j) * 8 + 2 * t;
          *reinterpret_cast<VecT<float, 2>*>(c0) = VecT<float, 2>{{c[j][0], c[j][1]}};
          *reinterpret_cast<VecT<float, 2>*>(c0 + 8 * ldg) = VecT<float, 2>{{c[j][2], c[j][3]}};
        }
      }
      __syncthreads();  // Xs free for the next chunk (and, after the last, As / Bs for the next column block)
    }
  }
  __syncwarp();  // this warp's Gs rows final (each warp reads back only its own rows)
  // grad_x = (g - c (c·g)) / |x| (or g / eps where |x| <= eps), g = G · grad_loss / nb, c = x / |x|: exactly
  // ms_loss_normalize_backward_kernel's expressions, one warp a row.
  const float scale = grad_loss[0] / float(nb);
  for (int rr = wrow; rr < wrow + 16; ++rr) {
    const int64_t c = r0 + rr;
    if (c >= row_end) break;
    const float* gr = Gs + rr * ldg;
    const scalar_t* xr = c < a.B ? a.xb + c * a.D : a.xr + (c - a.B) * a.D;
    scalar_t* o = out + (c - row0) * a.D;
    const float n = norms[c], inv = 1.f / float(fmax(double(n), kNormEps));
    if (n > float(kNormEps)) {
      float dot = 0;
      for (int d = lane; d < D; d += kWarp) dot += static_cast<float>(xr[d]) * inv * (gr[d] * scale);
      dot = warp_sum(dot);
      for (int d = lane; d < D; d += kWarp)
        o[d] = static_cast<scalar_t>((gr[d] * scale - static_cast<float>(xr[d]) * inv * dot) * inv);
    } else {
      for (int d = lane; d < D; d += kWarp) o[d] = static_cast<scalar_t>(gr[d] * scale / float(kNormEps));
    }
  }
}

}  // namespace
}  // namespace recogfast
