// Calls recogfast_aten::cubs_channel / cubs_spatial and their backward ops through the dispatcher on the
// CPU and compares them with the SPEC's math written in ATen ops (building the similarity matrix),
// differentiated by libtorch's autograd.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "tests/aten_ops.h"

namespace {

int failures = 0;

void expect_close(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  const double err = (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
  const double tol = 1e-9 * (1.0 + want.abs().max().item<double>());
  if (!(err <= tol)) {
    std::printf("FAIL %s: max abs error %.3g > %.3g\n", what.c_str(), err, tol);
    ++failures;
  } else {
    std::printf("ok   %s (max abs error %.3g)\n", what.c_str(), err);
  }
}

// f[b, i] = sum_j softmax_j(q[b, i] k[b, j]) v[b, j]
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const at::Tensor a = at::softmax(q.unsqueeze(-1) * k.unsqueeze(-2), -1);
  return at::matmul(a, v.unsqueeze(-1)).squeeze(-1);
}

std::string tag_of(int64_t B, int64_t C, int64_t H, int64_t W, bool cl) {
  return "B=" + std::to_string(B) + " C=" + std::to_string(C) + " " + std::to_string(H) + "x" + std::to_string(W) +
         (cl ? " channels_last" : " contiguous");
}

void check_channel(int64_t B, int64_t C, int64_t H, int64_t W, int64_t N, bool cl) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  at::Tensor x = at::randn({B, C, H, W}, opts);
  if (cl) x = x.contiguous(at::MemoryFormat::ChannelsLast);
  const double s = 2.0 / std::sqrt(double(C));
  std::vector<at::Tensor> args = {x,
                                  at::randn({N, C}, opts) * s, at::randn({N}, opts) * 0.3,
                                  at::randn({N, C}, opts) * s, at::randn({N}, opts) * 0.3,
                                  at::randn({N, C}, opts) * s, at::randn({N}, opts) * 0.3,
                                  at::randn({C, N}, opts) * (2.0 / std::sqrt(double(N))), at::randn({C}, opts) * 0.3};
  const at::Tensor gy = at::randn_like(x);
  const std::string tag = "cubs_channel " + tag_of(B, C, H, W, cl);
  const at::Tensor y = recogfast_aten::cubs_channel(args[0], args[1], args[2], args[3], args[4], args[5], args[6],
                                               args[7], args[8]);
  auto grads = recogfast_aten::cubs_channel_backward(gy, args[0], args[1], args[2], args[3], args[4], args[5], args[6],
                                                args[7], args[8]);
  std::vector<at::Tensor> l;
  for (const auto& t : args) l.push_back(t.detach().clone().requires_grad_(true));
  const at::Tensor g = l[0].mean({2, 3});
  const at::Tensor f = attention(at::linear(g, l[1], l[2]), at::linear(g, l[3], l[4]), at::linear(g, l[5], l[6]));
  const at::Tensor y_ref = l[0] * at::sigmoid(at::linear(f, l[7], l[8]) + g).unsqueeze(-1).unsqueeze(-1);
  y_ref.backward(gy);
  expect_close(y, y_ref, tag + " forward");
  const at::Tensor got[] = {std::get<0>(grads), std::get<1>(grads), std::get<2>(grads),
                            std::get<3>(grads), std::get<4>(grads), std::get<5>(grads),
                            std::get<6>(grads), std::get<7>(grads), std::get<8>(grads)};
  const char* names[] = {"grad_x", "grad_wq", "grad_bq", "grad_wk", "grad_bk", "grad_wv", "grad_bv", "grad_wo", "grad_bo"};
  for (int i = 0; i < 9; ++i) expect_close(got[i], l[i].grad(), tag + " " + names[i]);
}

void check_spatial(int64_t B, int64_t C, int64_t H, int64_t W, bool cl) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  at::Tensor x = at::randn({B, C, H, W}, opts);
  if (cl) x = x.contiguous(at::MemoryFormat::ChannelsLast);
  const double s = 1.5 / std::sqrt(double(C));
  std::vector<at::Tensor> args = {x, at::randn({C}, opts) * s, at::randn({1}, opts) * 0.3,
                                  at::randn({C}, opts) * s, at::randn({1}, opts) * 0.3,
                                  at::randn({C}, opts) * s, at::randn({1}, opts) * 0.3};
  const at::Tensor gy = at::randn_like(x);
  const std::string tag = "cubs_spatial " + tag_of(B, C, H, W, cl);
  const at::Tensor y = recogfast_aten::cubs_spatial(args[0], args[1], args[2], args[3], args[4], args[5], args[6]);
  auto grads = recogfast_aten::cubs_spatial_backward(gy, args[0], args[1], args[2], args[3], args[4], args[5], args[6]);
  std::vector<at::Tensor> l;
  for (const auto& t : args) l.push_back(t.detach().clone().requires_grad_(true));
  const at::Tensor xf = l[0].reshape({B, C, H * W});
  auto project = [&](const at::Tensor& w, const at::Tensor& b) {
    return (xf * w.reshape({1, C, 1})).sum(1) + b;
  };
  const at::Tensor f = attention(project(l[1], l[2]), project(l[3], l[4]), project(l[5], l[6]));
  const at::Tensor y_ref = l[0] * at::sigmoid(f).reshape({B, 1, H, W});
  y_ref.backward(gy);
  expect_close(y, y_ref, tag + " forward");
  const at::Tensor got[] = {std::get<0>(grads), std::get<1>(grads), std::get<2>(grads), std::get<3>(grads),
                            std::get<4>(grads), std::get<5>(grads), std::get<6>(grads)};
  const char* names[] = {"grad_x", "grad_wq", "grad_bq", "grad_wk", "grad_bk", "grad_wv", "grad_bv"};
  for (int i = 0; i < 7; ++i) expect_close(got[i], l[i].grad(), tag + " " + names[i]);
}

}  // namespace

int main() {
  at::manual_seed(0);
  check_channel(2, 16, 5, 7, 8, false);
  check_channel(3, 33, 4, 3, 5, true);
  check_channel(1, 3, 1, 1, 1, false);
  check_spatial(2, 16, 5, 7, false);
  check_spatial(3, 33, 3, 5, true);
  check_spatial(1, 3, 1, 1, false);
  try {
    recogfast_aten::cubs_spatial(at::randn({2, 8, 4, 4}), at::randn({7}), at::randn({1}), at::randn({8}), at::randn({1}),
                            at::randn({8}), at::randn({1}));
    std::printf("FAIL a wq of the wrong size was accepted\n");
    ++failures;
  } catch (const std::exception& e) {
    const bool named = std::string(e.what()).find("wq must have shape") != std::string::npos;
    std::printf("%s wrong-size wq rejected with a message naming wq\n", named ? "ok  " : "FAIL");
    failures += named ? 0 : 1;
  }
  std::printf("%s\n", failures == 0 ? "all checks passed" : "some checks FAILED");
  return failures == 0 ? 0 : 1;
}
