// CUBS Block 1's head for one sample, by one CTA from shared memory (issue 25): g -> q, k, v -> rank-one softmax
// rows -> z = Wo f + bo + g -> gate, and with kGrad its backward (df = Woᵀ dz, the attention backward with a column
// pass, dg) -> coef = dg / HW. Run by the split path's head kernel (cubs_channel_kernel.cu, after the pool) and by
// the one-CTA variant (cubs_channel_fused.cuh, after staging the sample). No [N, N] buffer: the attention of one
// sample runs from q, k, v and min / max k.
// Accuracy (issue 25, as the CPU kernel): the dense sums of the head (q, k, v, z, df, dg) accumulate in double (in
// saturated rows the exponents q_i (k_j - k*) amplify any rounding of q and k beyond one); f and dq's moments take v
// about the sample's mean, the column pass keeps f about v* (csrc/ops/cpu/cubs_channel_kernel.cpp head_forward).
// Every sum is one thread's or one warp's: the result does not depend on the CTA's size.
#pragma once

#include <cstdint>

#include "ops/cuda/cubs_common.cuh"

namespace recogfast {
namespace cubs_cuda {

template <typename w_t>
struct Params {
  const w_t* w[3];  // wq, wk, wv: [N, C]
  const w_t* b[3];  // bq, bk, bv: [N]
  const w_t* wo;    // [C, N]
  const w_t* bo;    // [C]
};

// Shared memory of the head: (2 C + 11 N) accumulators.
__host__ __device__ inline int64_t head_smem_elems(int64_t C, int64_t N) { return 2 * C + 11 * N; }

// The head of sample b, by the whole CTA, from shared memory `smem` (head_smem_elems), whose first C accumulators
// hold g (the channel means) and the next C, with kGrad, the sums of grad_y * x over the pixels; the CTA has
// synchronised since they were stored. Writes gate[c] (c < C: sample b's, in global or shared memory); with kGrad
// also coef[c] = dg / HW and, for the weight gradients, g_out, dz_out [B, C], f_out [B, N], dqkv_out [B, 3N] at
// sample b (null: not written; the other CTAs of a cluster, which hold the same values). The caller synchronises the CTA before it reads gate or coef.
template <typename w_t, typename acc_t, bool kGrad>
__device__ __forceinline__ void head_sample(acc_t* __restrict__ smem, const Params<w_t>& prm, int64_t b, int64_t C,
                                            int64_t N, int64_t HW, acc_t* __restrict__ gate, acc_t* __restrict__ coef,
                                            acc_t* __restrict__ g_out, acc_t* __restrict__ f_out,
                                            acc_t* __restrict__ dz_out, acc_t* __restrict__ dqkv_out) {
  acc_t* g = smem;             // [C]
  acc_t* dz = g + C;           // [C]
  acc_t* qkv = dz + C;         // [3N]
  acc_t* dqkv = qkv + 3 * N;   // [3N]
  acc_t* f = dqkv + 3 * N;     // [N]
  acc_t* l = f + N;            // [N] row sums, then per-row factors
  acc_t* sk = l + N;
  acc_t* skv = sk + N;
  acc_t* ms = skv + N;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, warps = blockDim.x / kWarp;
  // q, k, v: a warp a row r of [Wq; Wk; Wv], lanes along C.
  for (int64_t r = warp; r < 3 * N; r += warps) {
    const int which = static_cast<int>(r / N);
    const int64_t n = r - which * N;
    const w_t* wr = prm.w[which] + n * C;
    double a = 0;
    for (int64_t c = lane; c < C; c += kWarp) a += double(static_cast<acc_t>(wr[c])) * double(g[c]);
    a = warp_sum(a);
    if (lane == 0) qkv[r] = acc_t(a + double(static_cast<acc_t>(prm.b[which][n])));
  }
  __syncthreads();
  const acc_t* q = qkv;
  const acc_t* k = qkv + N;
  const acc_t* v = qkv + 2 * N;
  int64_t jmin = 0, jmax = 0;  // the dominant columns (first index on ties), as the CPU kernel
  double vsum = v[0];
  for (int64_t j = 1; j < N; ++j) {
    if (k[j] < k[jmin]) jmin = j;
    if (k[j] > k[jmax]) jmax = j;
    vsum += double(v[j]);
  }
  const acc_t kmin = k[jmin], kmax = k[jmax];
  const acc_t vc = acc_t(vsum / double(N));  // the mean of v
  // Softmax rows: a thread a row, sums relative to the dominant column (csrc/ops/cpu/rank_one_attention.h) with
  // v about its mean vc for f and cov (csrc/ops/cpu/cubs_channel_kernel.cpp head_forward; issue 25: about v* the
  // sums of e (v - v*) left f an error of eps |f - v*| and cov cancelled): f = vc + sum e (v - vc) / l,
  // cov = (sum e (k - k*)(v - vc) - sum e (v - vc) sum e (k - k*) / l) / l; with kGrad also f about v* for the
  // column pass, v* + sum e (v - v*) / l (its v_j - f_i exactly 0 - (f_i - v*) at a saturated row's dominant
  // column; issue 13), kept in sk until the df loop.
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    const acc_t qs = q[i] * log2e<acc_t>();
    const acc_t ks = q[i] >= acc_t(0) ? kmax : kmin, vs = q[i] >= acc_t(0) ? v[jmax] : v[jmin];
    // Blocked sums (cubs_common.cuh: kLanes partials a chunk of kChunk terms, compensated chunk totals).
    CompSum<acc_t> tl{0, 0}, tv{0, 0}, tk{0, 0}, tkv{0, 0}, ts{0, 0};
    for (int64_t j0 = 0; j0 < N; j0 += kChunk) {
      const int64_t j1 = min(N, j0 + kChunk);
      acc_t pl[kLanes] = {}, pv[kLanes] = {}, pk[kLanes] = {}, pkv[kLanes] = {}, ps[kLanes] = {};
      auto term = [&](int u, int64_t j) {
        const acc_t dk = k[j] - ks, dv = v[j] - vc;
        const acc_t e = ex2(qs * dk);  // q (k - k*) log2e <= 0: no cancellation of q k against q k*
        pl[u] += e;
        pv[u] += e * dv;
        if constexpr (kGrad) {
          const acc_t ek = e * dk;
          pk[u] += ek;
          pkv[u] += ek * dv;
          ps[u] += e * (v[j] - vs);
        }
      };
      int64_t j = j0;
      for (; j + kLanes <= j1; j += kLanes) {
#pragma unroll
        for (int u = 0; u < kLanes; ++u) term(u, j + u);
      }
#pragma unroll
      for (int u = 0; u < kLanes; ++u)
        if (j + u < j1) term(u, j + u);
      tl.add(lanes_sum(pl));
      tv.add(lanes_sum(pv));
      if constexpr (kGrad) {
        tk.add(lanes_sum(pk));
        tkv.add(lanes_sum(pkv));
        ts.add(lanes_sum(ps));
      }
    }
    // f and cov in double from the compensated sums (hi + lo exact in double), as the CPU kernel (row_value,
    // row_cov of csrc/ops/cpu/rank_one_attention.h): cov cancels when the softmax saturates.
    const double sl = double(tl.hi) + double(tl.lo), sv = double(tv.hi) + double(tv.lo);
    const double s_k = double(tk.hi) + double(tk.lo), s_kv = double(tkv.hi) + double(tkv.lo);
    f[i] = acc_t(double(vc) + sv / sl);
    l[i] = acc_t(sl);
    skv[i] = acc_t((s_kv - sv * s_k / sl) / sl);  // cov: sum_j a_ij k_j (v_j - f_i)
    if constexpr (kGrad) sk[i] = acc_t(double(vs) + (double(ts.hi) + double(ts.lo)) / sl);  // f about v*
    ms[i] = ks;                            // the row's dominant key, for the column pass
  }
  __syncthreads();
  // z = Wo f + bo + g: a warp a channel, lanes along N.
  for (int64_t c = warp; c < C; c += warps) {
    const w_t* wc = prm.wo + c * N;
    double a = 0;
    for (int64_t n = lane; n < N; n += kWarp) a += double(static_cast<acc_t>(wc[n])) * double(f[n]);
    a = warp_sum(a);
    if (lane == 0) {
      const acc_t s = sigmoid(acc_t(a + double(static_cast<acc_t>(prm.bo[c])) + double(g[c])));
      gate[c] = s;
      if constexpr (kGrad) dz[c] = dz[c] * s * (acc_t(1) - s);
    }
  }
  if constexpr (!kGrad) return;
  __syncthreads();
  // df_i = sum_c Wo[c, i] dz_c; dq_i = df_i cov_i; the column pass's factors fa, fb, q log2e (kept in l, sk,
  // skv; ms holds the rows' dominant keys); f goes out (grad Wo) and f about v* takes its place.
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    if (f_out) f_out[b * N + i] = f[i];
    f[i] = sk[i];
    double dfd = 0;
    for (int64_t c = 0; c < C; ++c) dfd += double(static_cast<acc_t>(prm.wo[c * N + i])) * double(dz[c]);
    const acc_t df = acc_t(dfd);
    const acc_t inv_l = acc_t(1) / l[i];
    dqkv[i] = df * skv[i];
    const acc_t fa = df * inv_l, fb = fa * q[i];
    l[i] = fa;
    sk[i] = fb;
    skv[i] = q[i] * log2e<acc_t>();
  }
  __syncthreads();
  // Column pass: dv_j = sum_i e_ij fa_i, dk_j = sum_i e_ij fb_i (v_j - f_i), the difference per pair.
  for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
    const acc_t kj = k[j], vj = v[j];
    CompSum<acc_t> ta{0, 0}, tb{0, 0};  // blocked as the row pass
    for (int64_t i0 = 0; i0 < N; i0 += kChunk) {
      const int64_t i1 = min(N, i0 + kChunk);
      acc_t pa[kLanes] = {}, pb[kLanes] = {};
      auto term = [&](int u, int64_t i) {
        const acc_t e = ex2(skv[i] * (kj - ms[i]));
        pa[u] += e * l[i];
        pb[u] += e * sk[i] * (vj - f[i]);
      };
      int64_t i = i0;
      for (; i + kLanes <= i1; i += kLanes) {
#pragma unroll
        for (int u = 0; u < kLanes; ++u) term(u, i + u);
      }
#pragma unroll
      for (int u = 0; u < kLanes; ++u)
        if (i + u < i1) term(u, i + u);
      ta.add(lanes_sum(pa));
      tb.add(lanes_sum(pb));
    }
    dqkv[2 * N + j] = ta.value();
    dqkv[N + j] = tb.value();
  }
  __syncthreads();
  // dg_c = dz_c + sum_r W[r, c] dqkv_r: a thread a channel (reads of W coalesced across threads).
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    double a = 0;
    for (int64_t r = 0; r < 3 * N; ++r) {
      const int which = static_cast<int>(r / N);
      a += double(static_cast<acc_t>(prm.w[which][(r - which * N) * C + c])) * double(dqkv[r]);
    }
    coef[c] = acc_t((a + double(dz[c])) / double(HW));
    if (g_out) {
      g_out[b * C + c] = g[c];
      dz_out[b * C + c] = dz[c];
    }
  }
  if (dqkv_out)
    for (int64_t r = threadIdx.x; r < 3 * N; r += blockDim.x) dqkv_out[b * 3 * N + r] = dqkv[r];
}

}  // namespace cubs_cuda
}  // namespace recogfast
