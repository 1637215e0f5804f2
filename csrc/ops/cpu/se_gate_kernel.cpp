// SE gate on the CPU: pooling, the two-layer MLP and the channel scaling in one op, forward and
// backward, with fp32 (fp64 for double) accumulation. The weights are w_t: x's type, or float for a 16-bit x
// (mixed: fp32 parameters under autocast, read without a cast; their gradients are written as float). The pooling and scaling passes and their
// schedule are channel_gate.h's (shared with CUBS Block 1); this file holds the MLP.

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/channel_gate.h"
#include "ops/se_gate.h"

namespace recogfast {
namespace {

template <typename scalar_t, typename w_t>
struct SEGateCPU : cpu::ChannelGate<scalar_t> {
  using Base = cpu::ChannelGate<scalar_t>;
  using typename Base::acc_t;
  using Base::B;
  using Base::C;
  using Base::HW;
  using Base::x;

  const w_t* w1;  // [R, C]
  const w_t* b1;  // [R]
  const w_t* w2;  // [C, R]
  const w_t* b2;  // [C]
  int64_t R;

  // From the channel sums of one sample: u = W1 g + b1 (pre-activation, [R]), h = relu(u) and
  // s = sigmoid(W2 h + b2). Every inner loop runs along contiguous memory with independent lanes or
  // split accumulators.
  void mlp_forward(const acc_t* sx, acc_t* g, acc_t* u, acc_t* h, acc_t* s) const {
    const acc_t inv_hw = acc_t(1) / acc_t(HW);
    for (int64_t c = 0; c < C; ++c) g[c] = sx[c] * inv_hw;
    for (int64_t r = 0; r < R; ++r) {
      u[r] = cpu::dot_row<w_t, acc_t, acc_t>(w1 + r * C, g, C) + acc_t(b1[r]);
      h[r] = u[r] <= acc_t(0) ? acc_t(0) : u[r];  // relu that keeps NaN, as torch.relu
    }
    for (int64_t c = 0; c < C; ++c) {
      const acc_t z = cpu::dot_row<w_t, acc_t, acc_t>(w2 + c * R, h, R) + acc_t(b2[c]);
      s[c] = acc_t(1) / (acc_t(1) + std::exp(-z));
    }
  }

  // Backward through the MLP of one sample, given ds[c] = sum_hw gy * x. Writes dz [C], du [R], and
  // coef[c] = (dL/dg[c]) / HW, the term every pixel of channel c gets in grad_x.
  void mlp_backward(const acc_t* ds, const acc_t* u, const acc_t* s, acc_t* dz, acc_t* du, acc_t* coef) const {
    for (int64_t c = 0; c < C; ++c) dz[c] = ds[c] * s[c] * (acc_t(1) - s[c]);
    std::fill(du, du + R, acc_t(0));
    for (int64_t c = 0; c < C; ++c) {  // du = W2^T dz, row by row of W2
      const w_t* wc = w2 + c * R;
      const acc_t d = dz[c];
#pragma omp simd
      for (int64_t r = 0; r < R; ++r) du[r] += acc_t(wc[r]) * d;
    }
    // The relu mask as torch's threshold_backward: u <= 0 gives 0, anything else (NaN included) passes.
    for (int64_t r = 0; r < R; ++r) du[r] = u[r] <= acc_t(0) ? acc_t(0) : du[r];
    std::fill(coef, coef + C, acc_t(0));
    for (int64_t r = 0; r < R; ++r) {  // dg = W1^T du, row by row of W1
      const w_t* wr = w1 + r * C;
      const acc_t d = du[r];
      if (d == acc_t(0)) continue;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) coef[c] += acc_t(wr[c]) * d;
    }
    const acc_t inv_hw = acc_t(1) / acc_t(HW);
    for (int64_t c = 0; c < C; ++c) coef[c] *= inv_hw;
  }

  void forward(scalar_t* y) const {
    std::vector<acc_t> sx(B * C), gate(B * C);
    this->schedule([&](int64_t b, int64_t c0, int64_t c1) { this->reduce(nullptr, b, c0, c1, &sx[b * C], nullptr); },
                   [&](int64_t b) {
                     std::vector<acc_t> g(C), u(R), h(R);
                     mlp_forward(&sx[b * C], g.data(), u.data(), h.data(), &gate[b * C]);
                   },
                   [&](int64_t b, int64_t c0, int64_t c1) { this->apply(x, y, b, c0, c1, &gate[b * C], nullptr); },
                   2 * C * R);
  }

  void backward(const scalar_t* gy, scalar_t* gx, w_t* gw1, w_t* gb1, w_t* gw2, w_t* gb2) const {
    // Per-sample quantities kept for the weight gradients, which sum over the batch.
    std::vector<acc_t> sx(B * C), ds(B * C), g(B * C), gate(B * C), dz(B * C), coef(B * C), h(B * R), du(B * R);
    this->schedule([&](int64_t b, int64_t c0, int64_t c1) { this->reduce(gy, b, c0, c1, &sx[b * C], &ds[b * C]); },
                   [&](int64_t b) {
                     std::vector<acc_t> u(R);
                     mlp_forward(&sx[b * C], &g[b * C], u.data(), &h[b * R], &gate[b * C]);
                     mlp_backward(&ds[b * C], u.data(), &gate[b * C], &dz[b * C], &du[b * R], &coef[b * C]);
                   },
                   [&](int64_t b, int64_t c0, int64_t c1) { this->apply(gy, gx, b, c0, c1, &gate[b * C], &coef[b * C]); },
                   4 * C * R);
    // grad_w2[c, r] = sum_b dz[b, c] h[b, r]; grad_b2[c] = sum_b dz[b, c]
    parallel_for(0, C, 16, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> row(R);
      for (int64_t c = begin; c < end; ++c) {
        std::fill(row.begin(), row.end(), acc_t(0));
        acc_t bias = 0;
        for (int64_t b = 0; b < B; ++b) {
          const acc_t d = dz[b * C + c];
          bias += d;
          for (int64_t r = 0; r < R; ++r) row[r] += d * h[b * R + r];
        }
        for (int64_t r = 0; r < R; ++r) gw2[c * R + r] = w_t(row[r]);
        gb2[c] = w_t(bias);
      }
    });
    // grad_w1[r, c] = sum_b du[b, r] g[b, c]; grad_b1[r] = sum_b du[b, r]
    parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> row(C);
      for (int64_t r = begin; r < end; ++r) {
        std::fill(row.begin(), row.end(), acc_t(0));
        acc_t bias = 0;
        for (int64_t b = 0; b < B; ++b) {
          const acc_t d = du[b * R + r];
          bias += d;
          if (d == acc_t(0)) continue;
          const acc_t* gb = &g[b * C];
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) row[c] += d * gb[c];
        }
        for (int64_t c = 0; c < C; ++c) gw1[r * C + c] = w_t(row[c]);
        gb1[r] = w_t(bias);
      }
    });
  }
};

template <typename scalar_t, typename w_t>
SEGateCPU<scalar_t, w_t> make_kernel(const detail::SEGateArgs& a) {
  const Tensor& x = a.x;
  return SEGateCPU<scalar_t, w_t>{{data_of<scalar_t>(x), x.size(0), x.size(1), x.size(2) * x.size(3),
                              a.channels_last},
                                  data_of<w_t>(a.w1), data_of<w_t>(a.b1),
                                  data_of<w_t>(a.w2), data_of<w_t>(a.b2), a.R};
}

Tensor se_gate_cpu(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                       const Tensor& b2) {
  const auto a = detail::prepare_se_gate(x, w1, b1, w2, b2);
  Tensor y = empty_like(a.x, checks::layout_of(a.channels_last));
  if (a.x.numel() == 0) return y;
  RF_DISPATCH_GATE(dtype_of(a.x), dtype_of(a.w1), "se_gate_cpu", [&] {
    make_kernel<scalar_t, w_t>(a).forward(mutable_data_of<scalar_t>(y));
  });
  return y;
}

detail::SEGateGrads se_gate_backward_cpu(const Tensor& grad_y, const Tensor& x, const Tensor& w1,
                                         const Tensor& b1, const Tensor& w2, const Tensor& b2) {
  const auto a = detail::prepare_se_gate(x, w1, b1, w2, b2, grad_y);
  auto grads = detail::alloc_se_gate_grads(a);
  if (a.x.numel() == 0) return grads;
  auto& [gx, gw1, gb1, gw2, gb2] = grads;
  RF_DISPATCH_GATE(dtype_of(a.x), dtype_of(a.w1), "se_gate_backward_cpu", [&] {
    make_kernel<scalar_t, w_t>(a).backward(data_of<scalar_t>(a.grad_y), mutable_data_of<scalar_t>(gx),
                                           mutable_data_of<w_t>(gw1), mutable_data_of<w_t>(gb1),
                                           mutable_data_of<w_t>(gw2), mutable_data_of<w_t>(gb2));
  });
  return grads;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(recogfast, CPU, m) {
  m.impl("se_gate", TORCH_BOX(&se_gate_cpu));
  m.impl("_se_gate_backward", TORCH_BOX(&se_gate_backward_cpu));
}

}  // namespace recogfast
