// Calls recogfast_aten::se_gate and recogfast_aten::se_gate_backward through the dispatcher on the CPU and
// compares them with the same math written in ATen ops, differentiated by libtorch's autograd.
#include <ATen/ATen.h>

#include <cstdio>
#include <string>

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

void check(int64_t B, int64_t C, int64_t H, int64_t W, int64_t R, bool channels_last) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  at::Tensor x = at::randn({B, C, H, W}, opts);
  if (channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor w1 = at::randn({R, C}, opts) / std::sqrt(double(C)), b1 = at::randn({R}, opts);
  at::Tensor w2 = at::randn({C, R}, opts) / std::sqrt(double(R)), b2 = at::randn({C}, opts);
  at::Tensor gy = at::randn_like(x);
  const std::string tag = "B=" + std::to_string(B) + " C=" + std::to_string(C) + " " + std::to_string(H) + "x" +
                          std::to_string(W) + (channels_last ? " channels_last" : " contiguous");

  at::Tensor y = recogfast_aten::se_gate(x, w1, b1, w2, b2);
  auto [gx, gw1, gb1, gw2, gb2] = recogfast_aten::se_gate_backward(gy, x, w1, b1, w2, b2);

  std::vector<at::Tensor> leaves;
  for (const auto& t : {x, w1, b1, w2, b2}) leaves.push_back(t.detach().clone().requires_grad_(true));
  const at::Tensor g = leaves[0].mean({2, 3});
  const at::Tensor h = at::relu(at::linear(g, leaves[1], leaves[2]));
  const at::Tensor s = at::sigmoid(at::linear(h, leaves[3], leaves[4]));
  const at::Tensor y_ref = leaves[0] * s.unsqueeze(-1).unsqueeze(-1);
  y_ref.backward(gy);

  expect_close(y, y_ref, "se_gate forward " + tag);
  const char* names[] = {"grad_x", "grad_w1", "grad_b1", "grad_w2", "grad_b2"};
  const at::Tensor got[] = {gx, gw1, gb1, gw2, gb2};
  for (int i = 0; i < 5; ++i) expect_close(got[i], leaves[i].grad(), std::string(names[i]) + " " + tag);
}

}  // namespace

int main() {
  at::manual_seed(0);
  check(2, 16, 5, 7, 4, false);
  check(2, 16, 5, 7, 4, true);
  check(1, 3, 1, 1, 1, false);
  check(3, 33, 4, 3, 2, true);
  try {
    recogfast_aten::se_gate(at::randn({2, 8, 4}), at::randn({2, 8}), at::randn({2}), at::randn({8, 2}), at::randn({8}));
    std::printf("FAIL a 3-D x was accepted\n");
    ++failures;
  } catch (const std::exception& e) {
    const bool named = std::string(e.what()).find("x must be a 4-D tensor") != std::string::npos;
    std::printf("%s 3-D x rejected with a message naming x\n", named ? "ok  " : "FAIL");
    failures += named ? 0 : 1;
  }
  std::printf("%s\n", failures == 0 ? "all checks passed" : "some checks FAILED");
  return failures == 0 ? 0 : 1;
}
