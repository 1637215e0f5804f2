// CUBS Block 1 on the CPU, forward and backward, NCHW and NHWC, fp32 (fp64 for double) accumulation.
//
// Per sample: channel sums of x (and of grad_y * x) -> g -> q, k, v ([N]) -> rank-one softmax attention
// (rank_one_attention.h; no N×N matrix) -> z = Wo f + bo + g -> gate = sigmoid(z) -> y = x * gate.
// Backward per sample: dz = sum_hw(grad_y x) gate (1 - gate); df = Woᵀ dz; the attention backward
// (dq from the row pass, dk and dv from a column pass); dg = dz + Wqᵀ dq + Wkᵀ dk + Wvᵀ dv;
// grad_x = grad_y gate + dg / HW; then the weight gradients as fixed-order sums over the batch.
// The pooling and scaling passes and their schedule are channel_gate.h's, shared with the SE gate.
// The weights are read into acc_t copies from w_t (x's type, or float for a mixed 16-bit x); their gradients
// are written as w_t.
// Accuracy (issue 25, benchmarks/RESULTS.md "Block 1 fp32 gradients on the CPU"): the head's dense sums
// (q, k, v, z, df, dg) and the weight-gradient sums over the batch accumulate in double: when the softmax rows
// saturate, the exponents q_i (k_j - k*) amplify any rounding of q and k beyond one (fp32 sums of 16 channels
// added in double still left outputs up to 10x the fp32 reference's error at x * 10); f and dq's moments
// take v about the sample's mean (head_forward), and the channel sums of x and grad_y x are chunked (channel_gate.h).

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/channel_gate.h"
#include "ops/cpu/rank_one_attention.h"
#include "ops/cubs_channel.h"

namespace recogfast {
namespace {

// sum_i a[i] b[i] in double (16 double lanes; vectorises).
template <typename T>
inline double dot_d(const T* a, const T* b, int64_t n) {
  return cpu::dot_row<T, T, double>(a, b, n);
}

// out[j] = sum_r M[r * ld + j] d[r] in double, j in [0, n), r in [0, R).
template <typename T>
inline void gemv_t_d(const T* M, int64_t ld, const T* d, int64_t R, int64_t n, double* out) {
  std::fill(out, out + n, 0.0);
  for (int64_t r = 0; r < R; ++r) {
    const T* m = M + r * ld;
    const double dr = double(d[r]);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) out[j] += double(m[j]) * dr;
  }
}

template <typename scalar_t>
struct CubsChannelCPU : cpu::ChannelGate<scalar_t> {
  using Base = cpu::ChannelGate<scalar_t>;
  using typename Base::acc_t;
  using Base::B;
  using Base::C;
  using Base::HW;
  using Base::x;

  int64_t N;
  // Weights in acc_t: W = [wq; wk; wv] ([3N, C]), bias3 [3N], wo [C, N], bo [C].
  std::vector<acc_t> W, bias3, wo, bo;

  // Per-sample state kept for the weight gradients.
  struct Sample {
    acc_t* g;    // [C]
    acc_t* qkv;  // [3N]
    acc_t* f;    // [N]
    acc_t* gate; // [C]
  };

  // g, q, k, v, f and the gate of one sample from its channel sums; with grad, also the attention's row
  // sums l, covariances cov = sum_j a_ij k_j (v_j - f_i) and f about v* for the column pass, fc (each [N];
  // rank_one_attention.h).
  void head_forward(const acc_t* sx, Sample s, acc_t* l, acc_t* cov, acc_t* fc) const {
    for (int64_t c = 0; c < C; ++c) s.g[c] = acc_t(double(sx[c]) / double(HW));  // one rounding, as mean()
    for (int64_t r = 0; r < 3 * N; ++r) {
      s.qkv[r] = acc_t(double(bias3[r]) + dot_d(W.data() + r * C, s.g, C));
    }
    const acc_t* q = s.qkv;
    const acc_t* k = q + N;
    const acc_t* v = k + N;
    const auto kr = cpu::key_range(k, v, N);
    // f (for z and grad Wo) and dq's moments take v about the sample's mean vm (issue 25): about v* the fp32 sums
    // of e (v - v*), of size l |f - v*|, left f an error of eps |v* - f|, far above eps |f| in the unsaturated
    // rows where f ~ mean v (grad Wo up to 5x the reference's error at N = 128), and dq's
    // cov = (skv - sv sk / l) / l cancelled (grad wq / bq up to 24x). The column pass keeps f about v*, fc:
    // its v_j - f_i must be exactly 0 - (f_i - v*) at a saturated row's dominant column (issue 13; about vm,
    // f's few ulps of v* times q_i put grad wk at x * 100 up to 3e4 times the reference's error).
    double vsum = 0;
    for (int64_t j = 0; j < N; ++j) vsum += double(v[j]);
    const acc_t vm = acc_t(vsum / double(N));
    for (int64_t i = 0; i < N; ++i) {
      acc_t ks, vs;
      cpu::dominant(q[i], kr, &ks, &vs);
      if (l) {
        const cpu::RowSums rs = cpu::row_sums<true>(q[i], k, v, N, ks, vs, vm);  // sv about v*, svc about vm
        l[i] = acc_t(rs.l);
        cov[i] = acc_t(cpu::row_cov(rs));
        s.f[i] = acc_t(double(vm) + rs.svc / rs.l);
        fc[i] = acc_t(cpu::row_value(rs, vs));
      } else {
        const cpu::RowSums rs = cpu::row_sums<false>(q[i], k, v, N, ks, vm);
        s.f[i] = acc_t(cpu::row_value(rs, vm));
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      const acc_t z = acc_t(double(bo[c]) + double(s.g[c]) + dot_d(wo.data() + c * N, s.f, N));
      s.gate[c] = acc_t(1) / (acc_t(1) + std::exp(-z));
    }
  }

  // Backward of one sample's head given sgx = sum_hw grad_y x: writes dz [C], dqkv [3N] and coef [C].
  void head_backward(const acc_t* sgx, Sample s, const acc_t* l, const acc_t* cov, const acc_t* fc, acc_t* dz,
                     acc_t* dqkv, acc_t* coef) const {
    for (int64_t c = 0; c < C; ++c) dz[c] = sgx[c] * s.gate[c] * (acc_t(1) - s.gate[c]);
    const acc_t* q = s.qkv;
    const acc_t* k = q + N;
    const acc_t* v = k + N;
    const auto kr = cpu::key_range(k, v, N);
    std::vector<acc_t> qs(N), kst(N), fa(N), fb(N);
    std::vector<double> sums(std::max(N, C));
    gemv_t_d(wo.data(), N, dz, C, N, sums.data());  // df_i = sum_c Wo[c, i] dz_c
    for (int64_t i = 0; i < N; ++i) {
      const acc_t df = acc_t(sums[i]);
      const acc_t inv_l = acc_t(1) / l[i];
      dqkv[i] = df * cov[i];
      qs[i] = q[i] * cpu::exp_scale<acc_t>();
      acc_t vs;
      cpu::dominant(q[i], kr, &kst[i], &vs);
      fa[i] = df * inv_l;
      fb[i] = fa[i] * q[i];
    }
    double out[2];
    for (int64_t j = 0; j < N; ++j) {
      cpu::col_sums(k[j], v[j], qs.data(), kst.data(), fa.data(), fb.data(), fc, N, out);
      dqkv[2 * N + j] = acc_t(out[0]);
      dqkv[N + j] = acc_t(out[1]);
    }
    gemv_t_d(W.data(), C, dqkv, 3 * N, C, sums.data());  // dg_c - dz_c = sum_r W[r, c] dqkv_r
    for (int64_t c = 0; c < C; ++c) coef[c] = acc_t((double(dz[c]) + sums[c]) / double(HW));
  }

  void forward(scalar_t* y) const {
    std::vector<acc_t> sx(B * C), g(B * C), qkv(B * 3 * N), f(B * N), gate(B * C);
    auto sample = [&](int64_t b) { return Sample{&g[b * C], &qkv[b * 3 * N], &f[b * N], &gate[b * C]}; };
    this->schedule([&](int64_t b, int64_t c0, int64_t c1) { this->reduce(nullptr, b, c0, c1, &sx[b * C], nullptr); },
                   [&](int64_t b) { head_forward(&sx[b * C], sample(b), nullptr, nullptr, nullptr); },
                   [&](int64_t b, int64_t c0, int64_t c1) { this->apply(x, y, b, c0, c1, &gate[b * C], nullptr); },
                   4 * N * (N + C));
  }

  // grads: gx, then [wq, bq, wk, bk, wv, bv, wo, bo] (w_t).
  template <typename w_t>
  void backward(const scalar_t* gy, scalar_t* gx, w_t* const* gw) const {
    std::vector<acc_t> sx(B * C), sgx(B * C), g(B * C), qkv(B * 3 * N), f(B * N), gate(B * C);
    std::vector<acc_t> dz(B * C), dqkv(B * 3 * N), coef(B * C);
    auto sample = [&](int64_t b) { return Sample{&g[b * C], &qkv[b * 3 * N], &f[b * N], &gate[b * C]}; };
    this->schedule([&](int64_t b, int64_t c0, int64_t c1) { this->reduce(gy, b, c0, c1, &sx[b * C], &sgx[b * C]); },
             [&](int64_t b) {
               std::vector<acc_t> l(N), cov(N), fc(N);
               head_forward(&sx[b * C], sample(b), l.data(), cov.data(), fc.data());
               head_backward(&sgx[b * C], sample(b), l.data(), cov.data(), fc.data(), &dz[b * C],
                             &dqkv[b * 3 * N], &coef[b * C]);
             },
             [&](int64_t b, int64_t c0, int64_t c1) { this->apply(gy, gx, b, c0, c1, &gate[b * C], &coef[b * C]); },
             8 * N * (N + C));
    // grad W{q,k,v}[r, c] = sum_b dqkv[b, r] g[b, c]; grad b{q,k,v}[r] = sum_b dqkv[b, r] (in double)
    parallel_for(0, 3 * N, cpu::grain_for(B * C), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> d(B);
      std::vector<double> row(C);
      for (int64_t r = begin; r < end; ++r) {
        double bias = 0;
        for (int64_t b = 0; b < B; ++b) {
          d[b] = dqkv[b * 3 * N + r];
          bias += double(d[b]);
        }
        gemv_t_d(g.data(), C, d.data(), B, C, row.data());
        const int64_t which = r / N, n = r % N;
        w_t* wout = gw[2 * which] + n * C;
        for (int64_t c = 0; c < C; ++c) wout[c] = w_t(row[c]);
        gw[2 * which + 1][n] = w_t(bias);
      }
    });
    // grad Wo[c, n] = sum_b dz[b, c] f[b, n]; grad bo[c] = sum_b dz[b, c] (in double)
    parallel_for(0, C, cpu::grain_for(B * N), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> d(B);
      std::vector<double> row(N);
      for (int64_t c = begin; c < end; ++c) {
        double bias = 0;
        for (int64_t b = 0; b < B; ++b) {
          d[b] = dz[b * C + c];
          bias += double(d[b]);
        }
        gemv_t_d(f.data(), N, d.data(), B, N, row.data());
        for (int64_t n = 0; n < N; ++n) gw[6][c * N + n] = w_t(row[n]);
        gw[7][c] = w_t(bias);
      }
    });
  }
};

template <typename scalar_t, typename w_t>
CubsChannelCPU<scalar_t> make_kernel(const Tensor& x, const Tensor* w, int64_t N, bool cl) {
  using acc_t = opmath_t<scalar_t>;
  CubsChannelCPU<scalar_t> k{{x.const_data_ptr<scalar_t>(), x.size(0), x.size(1), x.size(2) * x.size(3), cl},
                             N, {}, {}, {}, {}};
  auto to_acc = [](const Tensor& t, std::vector<acc_t>& out) {
    const Tensor c = as_contiguous(t);
    const w_t* p = c.const_data_ptr<w_t>();
    out.insert(out.end(), p, p + c.numel());
  };
  for (int i = 0; i < 3; ++i) {
    to_acc(w[2 * i], k.W);
    to_acc(w[2 * i + 1], k.bias3);
  }
  to_acc(w[6], k.wo);
  to_acc(w[7], k.bo);
  return k;
}

Tensor cubs_channel_cpu(const Tensor& x_, const Tensor& wq, const Tensor& bq, const Tensor& wk,
                            const Tensor& bk, const Tensor& wv, const Tensor& bv, const Tensor& wo,
                            const Tensor& bo) {
  const int64_t N = detail::check_cubs_channel_args(x_, wq, bq, wk, bk, wv, bv, wo, bo);
  const auto act = checks::activation("recogfast::cubs_channel", x_);
  const Tensor& x = act.x;
  const bool cl = act.channels_last;
  Tensor y = empty_like(x, checks::layout_of(cl));
  if (x.numel() == 0) return y;
  const Tensor w[8] = {wq, bq, wk, bk, wv, bv, wo, bo};
  RF_DISPATCH_GATE(x.scalar_type(), wq.scalar_type(), "cubs_channel_cpu", [&] {
    make_kernel<scalar_t, w_t>(x, w, N, cl).forward(y.mutable_data_ptr<scalar_t>());
  });
  return y;
}

CubsChannelGrads cubs_channel_backward_cpu(const Tensor& grad_y_, const Tensor& x_, const Tensor& wq,
                                           const Tensor& bq, const Tensor& wk, const Tensor& bk,
                                           const Tensor& wv, const Tensor& bv, const Tensor& wo,
                                           const Tensor& bo) {
  const int64_t N = detail::check_cubs_channel_args(x_, wq, bq, wk, bk, wv, bv, wo, bo);
  const auto act = checks::activation("recogfast::_cubs_channel_backward", x_, grad_y_);
  const Tensor &x = act.x, &gy = act.grad_y;
  const bool cl = act.channels_last;
  const Tensor w[8] = {wq, bq, wk, bk, wv, bv, wo, bo};
  Tensor gx = empty_like(x, checks::layout_of(cl));
  const auto g = checks::param_grads({w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]}, x.numel() == 0);
  if (x.numel() == 0) {
    return {gx, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]};
  }
  RF_DISPATCH_GATE(x.scalar_type(), wq.scalar_type(), "cubs_channel_backward_cpu", [&] {
    w_t* gp[8];
    for (int i = 0; i < 8; ++i) gp[i] = g[i].mutable_data_ptr<w_t>();
    make_kernel<scalar_t, w_t>(x, w, N, cl).backward(gy.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(), gp);
  });
  return {gx, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(recogfast, CPU, m) {
  m.impl("cubs_channel", TORCH_BOX(&cubs_channel_cpu));
  m.impl("_cubs_channel_backward", TORCH_BOX(&cubs_channel_backward_cpu));
}

}  // namespace recogfast
