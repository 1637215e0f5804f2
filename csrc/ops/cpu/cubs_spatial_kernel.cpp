// CUBS Block 2 on the CPU, forward and backward, NCHW and NHWC, fp32 (fp64 for double) accumulation,
// without the [B, HW, HW] similarity matrix: O(B·HW) scratch.
//
// Forward:  q, k, v per pixel (1×1 projections) -> per row i one pass over j (rank_one_attention.h)
//           -> gate_i = sigmoid(f_i) -> y = x * gate. The training forward (_cubs_spatial_forward_train) forms
//           the row pass's gradient moments too (sum e k, sum e k v, about the sample's mean of v) and saves
//           per row stats = {f_i, 1 / l_i, row_cov_i = sum_j A_ij k_j (v_j - f_i)} ([3, B·HW]).
// Backward: q, k, v and d_i = sum_c grad_y x per pixel -> from the saved stats df_i = d_i g_i (1 - g_i) and
//           dq_i = df_i row_cov_i (no second row pass) -> column pass over i gives
//           dv_j = sum_i A_ij df_i and dk_j = v_j sum_i A_ij df_i q_i - sum_i A_ij df_i q_i f_i
//           -> grad_x = grad_y gate + wq dq + wk dk + wv dv and the weight sums over pixels.
//           Forward and backward make two B·HW² passes (row, column); _cubs_spatial_backward, which has no
//           stats, recomputes them with the row pass first (three).
// Work is split into (sample, pixel chunk) tasks for the per-pixel passes and into rows / columns for
// the two B·HW² passes, so B = 1 uses every thread too. The weights are read into acc_t copies from w_t (x's
// type, or float for a mixed 16-bit x); their gradients are written as w_t.

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/cubs_spatial_pixels.h"
#include "ops/cpu/rank_one_attention.h"
#include "ops/cubs_spatial.h"

namespace recogfast {
namespace {

template <typename scalar_t>
struct CubsSpatialCPU : CubsSpatialPixels<scalar_t> {
  using Base = CubsSpatialPixels<scalar_t>;
  using typename Base::acc_t;
  using Base::apply;
  using Base::B;
  using Base::C;
  using Base::channels_last;
  using Base::chunks;
  using Base::for_chunks;
  using Base::key_ranges;
  using Base::P;
  using Base::project;
  using Base::x;

  // The training forward's per-row statistics: stats[0][r] = f_r, stats[1][r] = 1 / l_r, stats[2][r] = row_cov_r
  // with the moments of row_cov about the sample's mean of v (rank_one_attention.h; issue 25: about v* the
  // cancellation of skv - sv sk / l put 4x64x7x7 fp32 grad bq at up to 84x the reference's error). With gate, also
  // sigmoid(f). l and sv are formed as in the inference forward, so y is the same.
  void row_stats(const acc_t* qkv, acc_t* stats, acc_t* gate) const {
    const int64_t BP = B * P;
    const acc_t* q = qkv;
    const acc_t* k = q + BP;
    const acc_t* v = k + BP;
    const auto kr = key_ranges(k, v);
    std::vector<acc_t> vmean(B);
    for (int64_t b = 0; b < B; ++b) {
      double s = 0;
      for (int64_t p = 0; p < P; ++p) s += double(v[b * P + p]);
      vmean[b] = acc_t(s / double(P));
    }
    parallel_for(0, BP, cpu::grain_for(P), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / P;
        acc_t ks, vs;
        cpu::dominant(q[r], kr[b], &ks, &vs);
        const cpu::RowSums s = cpu::row_sums<true>(q[r], k + b * P, v + b * P, P, ks, vs, vmean[b]);
        const double f = cpu::row_value(s, vs);
        stats[r] = acc_t(f);
        stats[BP + r] = acc_t(1.0 / s.l);
        stats[2 * BP + r] = acc_t(cpu::row_cov(s));
        if (gate) gate[r] = acc_t(1.0 / (1.0 + std::exp(-f)));
      }
    });
  }

  // y = x * sigmoid(f); with stats (the training forward) also the saved statistics (row_stats).
  void forward(scalar_t* y, acc_t* stats) const {
    std::vector<acc_t> qkv(3 * B * P), gate(B * P);
    project(nullptr, qkv.data(), nullptr);
    if (stats) {
      row_stats(qkv.data(), stats, gate.data());
      apply(x, y, gate.data(), nullptr);
      return;
    }
    const acc_t* q = qkv.data();
    const acc_t* k = q + B * P;
    const acc_t* v = k + B * P;
    const auto kr = key_ranges(k, v);
    parallel_for(0, B * P, cpu::grain_for(P), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / P;
        acc_t ks, vs;
        cpu::dominant(q[r], kr[b], &ks, &vs);
        const cpu::RowSums s = cpu::row_sums<false>(q[r], k + b * P, v + b * P, P, ks, vs);
        const double f = cpu::row_value(s, vs);
        gate[r] = acc_t(1.0 / (1.0 + std::exp(-f)));
      }
    });
    apply(x, y, gate.data(), nullptr);
  }

  // The backward from the saved statistics (row_stats; nullptr: recomputed here, a third B·HW² pass).
  template <typename w_t>
  void backward(const scalar_t* gy, scalar_t* gx, w_t* gw_out[3], w_t* gb_out[3], const acc_t* saved) const {
    const int64_t BP = B * P;
    std::vector<acc_t> qkv(3 * BP), d(BP), gate(BP), own;
    // Per-row factors of the column pass (q scaled by exp_scale, the dominant key, the rows' outputs f),
    // then the projection gradients.
    std::vector<acc_t> qs(BP), kst(BP), fa(BP), fb(BP), fr(BP), dqkv(3 * BP);
    project(gy, qkv.data(), d.data());
    if (!saved) {
      own.resize(3 * BP);
      row_stats(qkv.data(), own.data(), nullptr);
      saved = own.data();
    }
    const acc_t* q = qkv.data();
    const acc_t* k = q + BP;
    const acc_t* v = k + BP;
    acc_t* dq = dqkv.data();
    acc_t* dk = dq + BP;
    acc_t* dv = dk + BP;
    const auto kr = key_ranges(k, v);
    parallel_for(0, BP, cpu::grain_for(64), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / P;
        acc_t ks, vs;
        cpu::dominant(q[r], kr[b], &ks, &vs);
        const double f = double(saved[r]), inv_l = double(saved[BP + r]);
        const double g = 1.0 / (1.0 + std::exp(-f));
        const double df = double(d[r]) * g * (1.0 - g);
        gate[r] = acc_t(g);
        dq[r] = acc_t(df * double(saved[2 * BP + r]));
        qs[r] = q[r] * cpu::exp_scale<acc_t>();
        kst[r] = ks;
        fa[r] = acc_t(df * inv_l);
        fb[r] = acc_t(df * double(q[r]) * inv_l);
        fr[r] = saved[r];
      }
    });
    parallel_for(0, BP, cpu::grain_for(P), [&](int64_t begin, int64_t end) {
      double out[2];
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / P, o = b * P;
        cpu::col_sums(k[r], v[r], qs.data() + o, kst.data() + o, fa.data() + o, fb.data() + o, fr.data() + o, P,
                      out);
        dv[r] = acc_t(out[0]);
        dk[r] = acc_t(out[1]);
      }
    });
    apply(gy, gx, gate.data(), dqkv.data());
    // Weight gradients: per (sample, chunk) partial sums, then a fixed-order sum over tasks; the bias
    // gradients (sums of dq, dk, dv over the pixels, which cancel: sum |dq| was 470 |grad bq| in one 4x64x7x7 draw) in double.
    const int64_t tasks = B * chunks(), stride = 3 * C + 3;
    std::vector<acc_t> part(tasks * stride, acc_t(0));
    std::vector<double> bpart(tasks * 3, 0.0);
    for_chunks([&](int64_t b, int64_t p0, int64_t p1, int64_t t) {
      acc_t* out = part.data() + t * stride;
      const scalar_t* xb = x + b * C * P;
      const acc_t* g[3] = {dq + b * P, dk + b * P, dv + b * P};
      for (int i = 0; i < 3; ++i) {
        double s = 0;
        for (int64_t p = p0; p < p1; ++p) s += double(g[i][p]);
        bpart[t * 3 + i] = s;
      }
      if (!channels_last) {
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* xr = xb + c * P;
          acc_t s0 = 0, s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s0, s1, s2)
          for (int64_t p = p0; p < p1; ++p) {
            const acc_t xv = acc_t(xr[p]);
            s0 += g[0][p] * xv;
            s1 += g[1][p] * xv;
            s2 += g[2][p] * xv;
          }
          out[c] = s0;
          out[C + c] = s1;
          out[2 * C + c] = s2;
        }
        return;
      }
      for (int64_t p = p0; p < p1; ++p) {
        const scalar_t* xr = xb + p * C;
        const acc_t a = g[0][p], e = g[1][p], f = g[2][p];
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const acc_t xv = acc_t(xr[c]);
          out[c] += a * xv;
          out[C + c] += e * xv;
          out[2 * C + c] += f * xv;
        }
      }
    });
    for (int i = 0; i < 3; ++i) {
      for (int64_t c = 0; c <= C; ++c) {
        // c == C is the bias slot
        const int64_t idx = c < C ? i * C + c : 3 * C + i;
        if (c < C) {
          acc_t s = 0;
          for (int64_t t = 0; t < tasks; ++t) s += part[t * stride + idx];
          gw_out[i][c] = w_t(s);
        } else {
          double s = 0;
          for (int64_t t = 0; t < tasks; ++t) s += bpart[t * 3 + i];
          gb_out[i][0] = w_t(s);
        }
      }
    }
  }
};

template <typename scalar_t, typename w_t>
CubsSpatialCPU<scalar_t> make_kernel(const Tensor& x, const Tensor* wb, bool cl) {
  using acc_t = opmath_t<scalar_t>;
  CubsSpatialCPU<scalar_t> k{{x.const_data_ptr<scalar_t>(), x.size(0), x.size(1), x.size(2) * x.size(3), cl, {}, {}}};
  const int64_t C = x.size(1);
  k.w.resize(3 * C);
  for (int i = 0; i < 3; ++i) {
    const Tensor wi = as_contiguous(wb[2 * i]), bi = wb[2 * i + 1];
    const w_t* wp = wi.const_data_ptr<w_t>();
    for (int64_t c = 0; c < C; ++c) k.w[i * C + c] = acc_t(wp[c]);
    k.bias[i] = acc_t(bi.const_data_ptr<w_t>()[0]);
  }
  return k;
}

Tensor cubs_spatial_cpu(const Tensor& x_, const Tensor& wq, const Tensor& bq, const Tensor& wk,
                            const Tensor& bk, const Tensor& wv, const Tensor& bv) {
  detail::check_cubs_spatial_args(x_, wq, bq, wk, bk, wv, bv);
  const auto act = checks::activation("recogfast::cubs_spatial", x_);
  const Tensor& x = act.x;
  const bool cl = act.channels_last;
  Tensor y = empty_like(x, checks::layout_of(cl));
  if (x.numel() == 0) return y;
  const Tensor wb[6] = {wq, bq, wk, bk, wv, bv};
  RF_DISPATCH_GATE(x.scalar_type(), wq.scalar_type(), "cubs_spatial_cpu", [&] {
    make_kernel<scalar_t, w_t>(x, wb, cl).forward(y.mutable_data_ptr<scalar_t>(), nullptr);
  });
  return y;
}

CubsSpatialTrain cubs_spatial_forward_train_cpu(const Tensor& x_, const Tensor& wq, const Tensor& bq,
                                                const Tensor& wk, const Tensor& bk, const Tensor& wv,
                                                const Tensor& bv) {
  detail::check_cubs_spatial_args(x_, wq, bq, wk, bk, wv, bv);
  const auto act = checks::activation("recogfast::_cubs_spatial_forward_train", x_);
  const Tensor& x = act.x;
  const bool cl = act.channels_last;
  Tensor y = empty_like(x, checks::layout_of(cl));
  const ScalarType st = detail::cubs_spatial_stats_dtype(x);
  if (x.numel() == 0) return {y, zeros_as(x, {3, x.size(0), x.size(2) * x.size(3)}, st)};
  Tensor stats = empty_as(x, {3, x.size(0), x.size(2) * x.size(3)}, st);
  const Tensor wb[6] = {wq, bq, wk, bk, wv, bv};
  RF_DISPATCH_GATE(x.scalar_type(), wq.scalar_type(), "cubs_spatial_forward_train_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    make_kernel<scalar_t, w_t>(x, wb, cl).forward(y.mutable_data_ptr<scalar_t>(), stats.mutable_data_ptr<acc_t>());
  });
  return {y, stats};
}

// saved: the training forward's stats, or nullptr (recomputed).
CubsSpatialGrads spatial_backward_cpu(const char* op, const Tensor& grad_y_, const Tensor& x_, const Tensor* saved,
                                      const Tensor& wq, const Tensor& bq, const Tensor& wk, const Tensor& bk,
                                      const Tensor& wv, const Tensor& bv) {
  detail::check_cubs_spatial_args(x_, wq, bq, wk, bk, wv, bv);
  const auto act = checks::activation(op, x_, grad_y_);
  if (saved) detail::check_cubs_spatial_stats(x_, *saved);
  const Tensor &x = act.x, &gy = act.grad_y;
  const bool cl = act.channels_last;
  Tensor gx = empty_like(x, checks::layout_of(cl));
  const auto g = checks::param_grads({wq, bq, wk, bk, wv, bv}, x.numel() == 0);
  if (x.numel() == 0) {
    return {gx, g[0], g[1], g[2], g[3], g[4], g[5]};
  }
  const Tensor wb[6] = {wq, bq, wk, bk, wv, bv};
  RF_DISPATCH_GATE(x.scalar_type(), wq.scalar_type(), "cubs_spatial_backward_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    w_t* gw[3] = {g[0].mutable_data_ptr<w_t>(), g[2].mutable_data_ptr<w_t>(), g[4].mutable_data_ptr<w_t>()};
    w_t* gb[3] = {g[1].mutable_data_ptr<w_t>(), g[3].mutable_data_ptr<w_t>(), g[5].mutable_data_ptr<w_t>()};
    make_kernel<scalar_t, w_t>(x, wb, cl).backward(gy.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(), gw,
                                                   gb, saved ? saved->const_data_ptr<acc_t>() : nullptr);
  });
  return {gx, g[0], g[1], g[2], g[3], g[4], g[5]};
}

CubsSpatialGrads cubs_spatial_backward_cpu(const Tensor& grad_y, const Tensor& x, const Tensor& wq, const Tensor& bq,
                                           const Tensor& wk, const Tensor& bk, const Tensor& wv, const Tensor& bv) {
  return spatial_backward_cpu("recogfast::_cubs_spatial_backward", grad_y, x, nullptr, wq, bq, wk, bk, wv, bv);
}

CubsSpatialGrads cubs_spatial_backward_saved_cpu(const Tensor& grad_y, const Tensor& x, const Tensor& stats,
                                                 const Tensor& wq, const Tensor& bq, const Tensor& wk,
                                                 const Tensor& bk, const Tensor& wv, const Tensor& bv) {
  return spatial_backward_cpu("recogfast::_cubs_spatial_backward_saved", grad_y, x, &stats, wq, bq, wk, bk, wv, bv);
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(recogfast, CPU, m) {
  m.impl("cubs_spatial", TORCH_BOX(&cubs_spatial_cpu));
  m.impl("_cubs_spatial_backward", TORCH_BOX(&cubs_spatial_backward_cpu));
  m.impl("_cubs_spatial_forward_train", TORCH_BOX(&cubs_spatial_forward_train_cpu));
  m.impl("_cubs_spatial_backward_saved", TORCH_BOX(&cubs_spatial_backward_saved_cpu));
}

}  // namespace recogfast
