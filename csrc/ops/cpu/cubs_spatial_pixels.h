// The per-pixel passes of CUBS Block 2 on the CPU (cubs_spatial_kernel.cpp, its only includer, holds the
// two B·HW² passes and the ops): the 1×1 projections q, k, v (and d = sum_c grad_y x), the samples' key
// ranges and the gating y = x * gate (grad_x = grad_y * gate + w dq + ...), NCHW and NHWC, over
// (sample, pixel chunk) tasks. Internal linkage.
#pragma once

#include <algorithm>
#include <vector>

#include "ops/cpu/rank_one_attention.h"
#include "ops/cubs_spatial.h"

namespace recogfast {
namespace {

template <typename scalar_t>
struct CubsSpatialPixels {
  using acc_t = opmath_t<scalar_t>;
  static constexpr int64_t kPixelChunk = 512;
  static constexpr int64_t kChannelBlock = 16;  // project(): fp32 sums of 16 channels, added in double

  const scalar_t* x;
  int64_t B, C, P;
  bool channels_last;
  std::vector<acc_t> w;  // [3, C]: wq, wk, wv
  acc_t bias[3];

  int64_t chunks() const { return (P + kPixelChunk - 1) / kPixelChunk; }

  // fn(b, p0, p1, task) over every (sample, pixel chunk).
  template <typename Fn>
  void for_chunks(const Fn& fn) const {
    const int64_t nc = chunks();
    parallel_for(0, B * nc, cpu::grain_for(4 * C * kPixelChunk), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / nc, p0 = (t % nc) * kPixelChunk;
        fn(b, p0, std::min(P, p0 + kPixelChunk), t);
      }
    });
  }

  // qkv[0..2][b * P + p] = w{q,k,v} . x[b, :, p] + b{q,k,v}; with gy also d[b * P + p] = sum_c gy x.
  // Each sum: fp32 partial sums of kChannelBlock channels added in double (issue 25: one serial fp32 sum
  // over C = 64-512 channels put the rounding of q, k, v and d, and so of dq, at several times the fp32
  // reference's, whose einsum sums in blocks; 2x128x28x28 grad bq 4.9e-5 against 2.1e-6).
  void project(const scalar_t* gy, acc_t* qkv, acc_t* d) const {
    for_chunks([&](int64_t b, int64_t p0, int64_t p1, int64_t) {
      acc_t* q = qkv + b * P;
      acc_t* k = q + B * P;
      acc_t* v = k + B * P;
      const scalar_t* xb = x + b * C * P;
      const scalar_t* gb = gy ? gy + b * C * P : nullptr;
      const acc_t* wq = w.data();
      const acc_t* wk = wq + C;
      const acc_t* wv = wk + C;
      if (!channels_last) {
        const int64_t n = p1 - p0;
        double aq[kPixelChunk], ak[kPixelChunk], av[kPixelChunk], ad[kPixelChunk];
        acc_t tq[kPixelChunk], tk[kPixelChunk], tv[kPixelChunk], td[kPixelChunk];
        for (int64_t p = 0; p < n; ++p) aq[p] = ak[p] = av[p] = ad[p] = 0;
        for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
          for (int64_t p = 0; p < n; ++p) tq[p] = tk[p] = tv[p] = td[p] = 0;
          for (int64_t c = c0; c < std::min(C, c0 + kChannelBlock); ++c) {
            const scalar_t* xr = xb + c * P + p0;
            const acc_t a = wq[c], e = wk[c], f = wv[c];
#pragma omp simd
            for (int64_t p = 0; p < n; ++p) {
              const acc_t xv = acc_t(xr[p]);
              tq[p] += a * xv;
              tk[p] += e * xv;
              tv[p] += f * xv;
            }
            if (d) {
              const scalar_t* gr = gb + c * P + p0;
#pragma omp simd
              for (int64_t p = 0; p < n; ++p) td[p] += acc_t(gr[p]) * acc_t(xr[p]);
            }
          }
#pragma omp simd
          for (int64_t p = 0; p < n; ++p) {
            aq[p] += double(tq[p]);
            ak[p] += double(tk[p]);
            av[p] += double(tv[p]);
            ad[p] += double(td[p]);
          }
        }
        for (int64_t p = 0; p < n; ++p) {
          q[p0 + p] = acc_t(aq[p] + double(bias[0]));
          k[p0 + p] = acc_t(ak[p] + double(bias[1]));
          v[p0 + p] = acc_t(av[p] + double(bias[2]));
          if (d) d[b * P + p0 + p] = acc_t(ad[p]);
        }
        return;
      }
      for (int64_t p = p0; p < p1; ++p) {
        const scalar_t* xr = xb + p * C;
        const scalar_t* gr = gb ? gb + p * C : nullptr;
        double sq = 0, sk = 0, sv = 0, sd = 0;
        for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
          const int64_t c1 = std::min(C, c0 + kChannelBlock);
          acc_t tq = 0, tk = 0, tv = 0;
#pragma omp simd reduction(+ : tq, tk, tv)
          for (int64_t c = c0; c < c1; ++c) {
            const acc_t xv = acc_t(xr[c]);
            tq += wq[c] * xv;
            tk += wk[c] * xv;
            tv += wv[c] * xv;
          }
          sq += double(tq);
          sk += double(tk);
          sv += double(tv);
          if (d) {
            acc_t td = 0;
#pragma omp simd reduction(+ : td)
            for (int64_t c = c0; c < c1; ++c) td += acc_t(gr[c]) * acc_t(xr[c]);
            sd += double(td);
          }
        }
        q[p] = acc_t(sq + double(bias[0]));
        k[p] = acc_t(sk + double(bias[1]));
        v[p] = acc_t(sv + double(bias[2]));
        if (d) d[b * P + p] = acc_t(sd);
      }
    });
  }

  // Per sample: min and max of k and v at those pixels (rank_one_attention.h, the rows' dominant columns).
  std::vector<cpu::KeyRange<acc_t>> key_ranges(const acc_t* k, const acc_t* v) const {
    std::vector<cpu::KeyRange<acc_t>> r(B);
    for (int64_t b = 0; b < B; ++b) r[b] = cpu::key_range(k + b * P, v + b * P, P);
    return r;
  }

  // out[b, :, p] = in[b, :, p] * gate[b * P + p] (+ the projection gradients when dqkv is given).
  void apply(const scalar_t* in, scalar_t* out, const acc_t* gate, const acc_t* dqkv) const {
    for_chunks([&](int64_t b, int64_t p0, int64_t p1, int64_t) {
      const scalar_t* ib = in + b * C * P;
      scalar_t* ob = out + b * C * P;
      const acc_t* g = gate + b * P;
      const acc_t* dq = dqkv ? dqkv + b * P : nullptr;
      const acc_t* dk = dqkv ? dq + B * P : nullptr;
      const acc_t* dv = dqkv ? dk + B * P : nullptr;
      const acc_t* wq = w.data();
      const acc_t* wk = wq + C;
      const acc_t* wv = wk + C;
      if (!channels_last) {
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* ir = ib + c * P;
          scalar_t* orow = ob + c * P;
          if (dqkv) {
            const acc_t a = wq[c], e = wk[c], f = wv[c];
#pragma omp simd
            for (int64_t p = p0; p < p1; ++p)
              orow[p] = scalar_t(acc_t(ir[p]) * g[p] + a * dq[p] + e * dk[p] + f * dv[p]);
          } else {
#pragma omp simd
            for (int64_t p = p0; p < p1; ++p) orow[p] = scalar_t(acc_t(ir[p]) * g[p]);
          }
        }
        return;
      }
      for (int64_t p = p0; p < p1; ++p) {
        const scalar_t* ir = ib + p * C;
        scalar_t* orow = ob + p * C;
        const acc_t gp = g[p];
        if (dqkv) {
          const acc_t a = dq[p], e = dk[p], f = dv[p];
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) orow[c] = scalar_t(acc_t(ir[c]) * gp + wq[c] * a + wk[c] * e + wv[c] * f);
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) orow[c] = scalar_t(acc_t(ir[c]) * gp);
        }
      }
    });
  }
};

}  // namespace
}  // namespace recogfast
