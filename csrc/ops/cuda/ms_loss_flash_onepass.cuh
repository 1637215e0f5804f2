// Flash MS-loss forward with one dense pass ("ms" and "all" mining; issue 26). The two-pass forward
// (ms_loss_flash.cuh) forms every S tile twice: pass 1 for each anchor's min positive and max negative, pass 2 for
// the mined sums, which need both. But an anchor's positives are only the candidates of its class, a few of the M
// (Cars196 at B = 16384: 98 classes, ~170 of 16384), and the negatives' sum needs only the min positive as its
// threshold, while its shift, the max negative, can be carried online (as FlashAttention carries its row max). So,
// as the CPU kernel does (csrc/ops/cpu/ms_loss_kernel.cpp: P1, F, P2):
//   pass 3 (gathered): per anchor, the min positive similarity, over its class only;
//   pass 4 (dense, ms_flash_fwd_kernel<4>): the max negative with its first index, and the mined negative sum
//            zn = sum exp(beta (s - mx)) over s + eps > min positive, rescaled by exp(beta (mx_old - mx_new)) when a
//            lane's running max grows and merged across the row's 4 lanes the same way (fixed order);
//   pass 5 (gathered): the mined positive sum with pass 4's max negative, then the logs and the per-anchor loss.
// The gathered passes run the same tiles over the anchors sorted by label (rows: perm_b, a stable sort of the B
// labels) against the candidates sorted by label (columns: perm_a, M labels), each CTA of BM sorted anchors only
// over the window [lo of its first row, hi of its last) of candidates that can share a label with them (segment
// bounds by binary search, ms_flash_segments_kernel): about B (BM + class size) D products instead of B M D. A
// stable sort keeps each class's candidates in index order, so "first index on ties" is pass 1's rule.
// Same bits: S_ij depends on the operands and on the sequence of k-steps only (an element's mma arithmetic does not
// depend on where the pair sits in a tile), so pass 3's min positive, pass 4's max negative and their indices equal
// pass 1's bit for bit (the emulation checks it); the sums differ from pass 2's by rounding (the online rescaling,
// another order of the terms).
// When classes are large the gathered passes cost about as much as the dense pass they save (one class: each is a
// full pass). "auto" lets the device decide from the work the segments kernel counts: the one-pass forward where
// 2 BM sum(window) <= B M / 2, else the two-pass forward — both forwards' kernels are launched and each returns at
// once unless its forward was chosen (FlashFwdGate: no host sync). "hardest" keeps pass 1 alone (it needs no sums).
// Extra memory: the two sorts and the segment bounds, 6 int64 per candidate at most (B = M = 16384: 0.8 MB).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "ops/cuda/ms_loss_flash.cuh"

namespace recogfast {
namespace {

// First index of v[0, n) (ascending) whose value is >= key (kUpper: > key).
template <bool kUpper>
__device__ __forceinline__ int64_t label_bound(const int64_t* __restrict__ v, int64_t n, int64_t key) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (kUpper ? v[mid] <= key : v[mid] < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Per sorted anchor q: its class's candidates are sorted positions [lo[q], hi[q]) of va (the M sorted labels; vb:
// the B sorted anchor labels). work += the window of each BM-row block of the gathered passes (integer adds:
// deterministic), which the "auto" gate compares with its limit.
__global__ void ms_flash_segments_kernel(const int64_t* __restrict__ vb, const int64_t* __restrict__ va, int64_t B,
                                         int64_t M, int BM, int64_t* __restrict__ lo, int64_t* __restrict__ hi,
                                         unsigned long long* __restrict__ work) {
  for (int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; q < B; q += int64_t(gridDim.x) * blockDim.x) {
    const int64_t l = label_bound<false>(va, M, vb[q]);
    lo[q] = l;
    hi[q] = label_bound<true>(va, M, vb[q]);
    if (q % BM == 0) {
      const int64_t last = (q + BM < B ? q + BM : B) - 1;
      atomicAdd(work, static_cast<unsigned long long>(label_bound<true>(va, M, vb[last]) - l));
    }
  }
}

// Gathered pass kPass (3: min positive; 5: positive sum and the row's loss) over the anchors in label order: CTA b
// owns sorted anchors [b BM, b BM + BM) (candidates perm_b[q]) and runs over the candidate window of their classes
// (sorted positions of perm_a), every pair not of the anchor's class (at the window's edges) or the anchor itself
// skipped. Writes stats[i, 2] (pass 3) or stats[i, 0..1] and per_anchor[i] (pass 5, from pass 4's stats[i, 1] =
// the raw negative sum and stats[i, 3] = the max negative).
template <class Cfg, MmaKind K, typename scalar_t, int kPass>
__global__ void __launch_bounds__(Cfg::kThreads)
    ms_flash_gather_kernel(FlashArgs<scalar_t> a, Params p, float* __restrict__ stats, float* __restrict__ per_anchor,
                           const int64_t* __restrict__ perm_b, const int64_t* __restrict__ perm_a,
                           const int64_t* __restrict__ lo, const int64_t* __restrict__ hi, FlashFwdGate gate) {
  static_assert(kPass == 3 || kPass == 5, "gathered forward passes");
  static_assert(Cfg::MW == 1, "one m-tile a warp");
  if (!one_pass_forward(gate)) return;  // the two-pass forward was chosen (uniform: before any barrier)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  using elem_t = flash_elem_t<K>;
  constexpr int ld = Cfg::BK + kPad<K>;
  elem_t* As = reinterpret_cast<elem_t*>(smem_raw);
  elem_t* Bs = As + Cfg::BM * ld;
  const int lane = threadIdx.x % kWarp, wrow = threadIdx.x / kWarp * 16, g = lane / 4, t = lane % 4;
  const int64_t q0 = int64_t(blockIdx.x) * Cfg::BM, qlast = (q0 + Cfg::BM < a.B ? q0 + Cfg::BM : a.B) - 1;
  const int64_t c_lo = lo[q0], c_hi = hi[qlast];
  const bool wide = a.flags[2] != 0, ms = p.mining == int(Mining::kMS);
  const float inf = INFINITY, alpha = float(p.alpha), base = float(p.base), eps = float(p.eps);
  int64_t row[2], an[2];
  float si[2], mn[2], mx[2], zp[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t q = q0 + wrow + g + 8 * h;
    row[h] = q < a.B ? perm_b[q] : -1;
    si[h] = row[h] >= 0 ? a.inv2[row[h]] : 0.f;
    mn[h] = kPass == 5 && row[h] >= 0 ? stats[row[h] * 4 + 2] : inf;
    mx[h] = kPass == 5 && row[h] >= 0 ? stats[row[h] * 4 + 3] : -inf;
    an[h] = -1;
    zp[h] = 0.f;
  }
  float acc1[1][Cfg::NT][4];
  for (int64_t j0 = c_lo; j0 < c_hi; j0 += Cfg::BN) {
    similarity_tile<Cfg, K>(acc1, As, Bs, a, q0, a.B, j0, c_hi, wrow, g, t, PermIdx{perm_b}, PermIdx{perm_a});
#pragma unroll
    for (int nt = 0; nt < Cfg::NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e / 2;
        const int64_t jp = j0 + nt * 8 + 2 * t + (e & 1), i = row[h];
        if (i < 0 || jp >= c_hi) continue;
        const int64_t k = perm_a[jp];
        if (k == i || !same_label(a, wide, i, k)) continue;
        const float s = acc1[0][nt][e] * (si[h] * a.inv2[k]);
        if constexpr (kPass == 3) {  // a lane's columns of one class arrive in index order: strict < keeps the first
          if (an[h] < 0 || s < mn[h]) mn[h] = s, an[h] = k;
        } else if (s - eps < (ms ? mx[h] : inf)) {
          zp[h] += exp_of<kFastExp<K>>(-alpha * (s - mn[h]));
        }
      }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
#pragma unroll
    for (int o = 1; o < 4; o <<= 1) {  // the row's 4 lanes, fixed order
      if constexpr (kPass == 3) {
        const float v1 = __shfl_xor_sync(0xffffffffu, mn[h], o);
        const int64_t i1 = __shfl_xor_sync(0xffffffffu, an[h], o);
        arg_merge<true>(mn[h], an[h], v1, i1);
      } else {
        zp[h] += __shfl_xor_sync(0xffffffffu, zp[h], o);
      }
    }
    const int64_t i = row[h];
    if (t != 0 || i < 0) continue;
    float* st = stats + i * 4;
    if constexpr (kPass == 3) {
      st[2] = an[h] < 0 ? inf : mn[h];
    } else {
      const float zn = st[1], beta = float(p.beta);
      const float lzp = zp[h] > 0 ? softplus(-alpha * (mn[h] - base) + log(zp[h])) : 0.f;
      const float lzn = zn > 0 ? softplus(beta * (mx[h] - base) + log(zn)) : 0.f;
      st[0] = lzp;
      st[1] = lzn;
      per_anchor[i] = lzp / alpha + lzn / beta;
    }
  }
}

}  // namespace
}  // namespace recogfast
