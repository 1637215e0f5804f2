// Runs the CUDA kernels of the SE, CUBS and MS-loss ops under host emulation and compares with the CPU ops.
// `emu_test ms` runs only the MS-loss section.
#include <ATen/ATen.h>
#include <cmath>
#include <cstdio>
#include <string>
#include <tuple>
#include <vector>
#include "tests/aten_ops.h"
namespace recogfast {
at::Tensor emu_cubs_spatial(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const at::Tensor&);
recogfast_aten::T7 emu_cubs_spatial_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
at::Tensor emu_cubs_channel(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&);
recogfast_aten::T9 emu_cubs_channel_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&);
at::Tensor emu_se_gate(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
recogfast_aten::T5 emu_se_gate_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> emu_ms_loss(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, double,
    double, double, double, std::string_view);
std::tuple<at::Tensor, at::Tensor> emu_ms_loss_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        const std::optional<at::Tensor>&,
                                                        const std::optional<at::Tensor>&, const at::Tensor&,
                                                        const at::Tensor&, double, double, double, double,
                                                        std::string_view, bool);
}  // namespace recogfast
namespace {
int failures = 0;
double grad_scale = 1;  // largest gradient of the current call, for the exactly-zero grad bk
void cmp(const at::Tensor& a, const at::Tensor& b, const char* what, const char* tag, double rtol) {
  const double err = (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
  double scale = b.to(at::kDouble).abs().max().item<double>();
  if (std::string(what) != "y" && scale < 1e-4 * grad_scale) scale = grad_scale;
  const bool ok = err <= rtol * (scale + 1e-3);
  if (!ok) ++failures;
  std::printf("%s %-40s %-8s err %.3g scale %.3g\n", ok ? "ok  " : "FAIL", tag, what, err, scale);
}
template <typename T>
void cmp_tuple(const T& a, const T& b, const char* tag, double rtol) {
  const char* names[] = {"gx", "g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8"};
  int i = 0;
  grad_scale = 0;
  std::apply([&](auto&... ys) { ((grad_scale = std::max(grad_scale, ys.to(at::kDouble).abs().max().template item<double>())), ...); }, b);
  std::apply([&](auto&... xs) { std::apply([&](auto&... ys) { (cmp(xs, ys, names[i++], tag, rtol), ...); }, b); }, a);
}

// MS loss: the emulated CUDA launchers (each backward from its own forward's stats) against the CPU kernel,
// over dtypes, mining modes, label patterns, reference sets with and without gradient, and inputs that take
// the normalised-operand fallback. Returns the number of comparisons.
int ms_comparisons = 0;
double ms_max_rel[4] = {0, 0, 0, 0};  // worst err / scale per dtype: fp64, fp32, bf16, fp16
int dtype_slot(at::ScalarType t) {
  return t == at::kDouble ? 0 : t == at::kFloat ? 1 : t == at::kBFloat16 ? 2 : 3;
}
// |a - b| <= rtol (scale + 1e-3 scale_floor), where equal values (infinities included) count as 0 error.
void ms_cmp(const at::Tensor& a_, const at::Tensor& b_, const char* what, const std::string& tag, double rtol,
            at::ScalarType dt, double scale_floor = 1) {
  const at::Tensor a = a_.to(at::kDouble), b = b_.to(at::kDouble);
  const at::Tensor diff = at::where(a == b, at::zeros_like(a), (a - b).abs());
  const double err = diff.numel() ? diff.max().item<double>() : 0.0;
  const at::Tensor fin = b.masked_select(b.isfinite());
  const double scale = fin.numel() ? fin.abs().max().item<double>() : 0.0;
  const bool ok = std::isfinite(err) && err <= rtol * (scale + 1e-3 * scale_floor);
  ++ms_comparisons;
  if (scale > 0) ms_max_rel[dtype_slot(dt)] = std::max(ms_max_rel[dtype_slot(dt)], err / scale);
  if (!ok) ++failures;
  if (!ok || getenv("EMU_VERBOSE"))
    std::printf("%s %-52s %-9s err %.3g scale %.3g\n", ok ? "ok  " : "FAIL", tag.c_str(), what, err, scale);
}

void run_ms_loss() {
  at::manual_seed(1);
  auto m_per_class = [](int64_t B, int64_t m) { return at::floor_divide(at::randperm(B), m).to(at::kLong); };
  struct Case {
    const char* name;
    int64_t B, D, R;
    at::Tensor labels, ref_labels;
    bool ref_grad;
    double row_scale;  // one row of the embeddings scaled by this (1e16: the normalised-operand fallback)
    bool zero_row;
  };
  std::vector<Case> cases = {
      {"m-per-class 24x8", 24, 8, 0, m_per_class(24, 4), {}, false, 1, false},
      {"few classes 17x5", 17, 5, 0, at::randint(0, 3, {17}), {}, false, 1, false},
      {"singletons 9x3", 9, 3, 0, at::arange(9), {}, false, 1, false},
      {"one class 7x4", 7, 4, 0, at::zeros({7}, at::kLong), {}, false, 1, false},
      {"B=1", 1, 4, 0, at::zeros({1}, at::kLong), {}, false, 1, false},
      {"ref 12x6 R=10 grad", 12, 6, 10, m_per_class(12, 3), at::randint(0, 6, {10}), true, 1, false},
      {"ref 12x6 R=10 nograd", 12, 6, 10, m_per_class(12, 3), at::randint(0, 6, {10}), false, 1, false},
      {"ref B=1 R=5 grad", 1, 4, 5, at::zeros({1}, at::kLong), at::randint(0, 2, {5}), true, 1, false},
      {"ref int32 labels 10x7 R=13", 10, 7, 13, m_per_class(10, 2).to(at::kInt), at::randint(0, 5, {13}, at::kInt),
       true, 1, false},
      {"zero row 11x6", 11, 6, 0, m_per_class(11, 3), {}, false, 1, true},
      {"huge row 11x6 (fallback)", 11, 6, 0, m_per_class(11, 3), {}, false, 1e16, false},
      {"huge ref row 8x5 R=6 (fallback)", 8, 5, 6, m_per_class(8, 2), at::randint(0, 4, {6}), true, 1e16, false},
  };
  const double alpha = 2, beta = 50, base = 0.5, eps = 0.1;
  for (const auto dt : {at::kDouble, at::kFloat, at::kBFloat16, at::kHalf}) {
    const bool lowp = dt == at::kBFloat16 || dt == at::kHalf;
    // fp16 cannot hold 1e16: its fallback cases are skipped (finite fp16 rows never need it).
    const double rtol_l = dt == at::kDouble ? 1e-10 : dt == at::kFloat ? 1e-5 : 1e-2;
    const double rtol_g = dt == at::kDouble ? 1e-9 : dt == at::kFloat ? 2e-4 : 3e-2;
    for (const Case& c : cases) {
      if (dt == at::kHalf && c.row_scale > 1e4) continue;
      at::Tensor e = at::randn({c.B, c.D}, at::kDouble);
      if (c.zero_row) e[c.B / 2].zero_();
      if (c.row_scale != 1) e[c.B - 1].mul_(c.row_scale);
      e = e.to(dt);
      std::optional<at::Tensor> r, rl;
      if (c.R > 0) {
        at::Tensor rr = at::randn({c.R, c.D}, at::kDouble);
        if (c.row_scale != 1) rr[0].mul_(c.row_scale);
        r = rr.to(dt);
        rl = c.ref_labels;
      }
      const at::Tensor gl = at::full({}, 0.7, at::TensorOptions().dtype(dt));
      for (const char* mining : {"ms", "all", "hardest"}) {
        const std::string tag = std::string(c.name) + " " + c10::toString(dt) + " " + mining;
        const auto cpu = recogfast_aten::ms_loss(e, c.labels, r, rl, alpha, beta, base, eps, mining, false);
        const auto emu = recogfast::emu_ms_loss(e, c.labels, r, rl, alpha, beta, base, eps, mining);
        ms_cmp(std::get<0>(emu), std::get<0>(cpu), "loss", tag, rtol_l, dt);
        ms_cmp(std::get<1>(emu), std::get<1>(cpu), "stats", tag, lowp ? 1e-4 : rtol_l, dt);
        ms_cmp(std::get<2>(emu), std::get<2>(cpu), "hard_idx", tag, 0, dt, 0);
        const auto gcpu = recogfast_aten::ms_loss_backward(gl, e, c.labels, r, rl, std::get<1>(cpu), std::get<2>(cpu),
                                                      std::get<3>(cpu), alpha, beta, base, eps, mining, c.ref_grad);
        const auto gemu = recogfast::emu_ms_loss_backward(gl, e, c.labels, r, rl, std::get<1>(emu), std::get<2>(emu),
                                                          alpha, beta, base, eps, mining, c.ref_grad);
        const double gscale = std::max(std::get<0>(gcpu).to(at::kDouble).abs().max().item<double>(),
                                       std::get<1>(gcpu).numel() ? std::get<1>(gcpu).to(at::kDouble).abs().max().item<double>() : 0.0);
        // Gradients: relative to the largest gradient of the call (a row may be all ~0).
        ms_cmp(std::get<0>(gemu), std::get<0>(gcpu), "grad_e", tag, rtol_g, dt, gscale * 1e3);
        if (std::get<0>(gemu).sizes() != std::get<0>(gcpu).sizes() || std::get<1>(gemu).sizes() != std::get<1>(gcpu).sizes()) {
          ++failures;
          std::printf("FAIL %s: gradient shapes differ\n", tag.c_str());
        }
        if (std::get<1>(gcpu).numel())
          ms_cmp(std::get<1>(gemu), std::get<1>(gcpu), "grad_ref", tag, rtol_g, dt, gscale * 1e3);
      }
    }
  }
  // NaN/inf in embeddings is an error naming the argument.
  for (const char* which : {"embeddings", "ref_embeddings"}) {
    at::Tensor e = at::randn({5, 3}), r = at::randn({4, 3});
    (std::string(which) == "embeddings" ? e : r)[1][2] = std::numeric_limits<float>::infinity();
    // The CUDA kernel decides on the device, without a host sync: NaN/inf in, NaN loss out.
    const auto out =
        recogfast::emu_ms_loss(e, at::zeros({5}, at::kLong), r, at::zeros({4}, at::kLong), alpha, beta, base, eps, "ms");
    ++ms_comparisons;
    if (!std::isnan(std::get<0>(out).item<double>())) {
      ++failures;
      std::printf("FAIL ms_loss: inf in %s does not give a NaN loss\n", which);
    }
  }
  std::printf("ms_loss: %d comparisons; worst err/scale fp64 %.3g, fp32 %.3g, bf16 %.3g, fp16 %.3g\n",
              ms_comparisons, ms_max_rel[0], ms_max_rel[1], ms_max_rel[2], ms_max_rel[3]);
}

// fp32 accuracy against the float64 truth (the CPU kernel in double): every emulated CUDA output and gradient
// within 2x the CPU fp32 kernel's own error plus 2e-6 of the output's scale -- tools/gpu_crosscheck.py's bound.
// The scale tolerance of cmp() cannot see a 3-24x loss of accuracy, which the H200 showed for these CUBS
// gradients (benchmarks/RESULTS.md, 2026-12-04) and this emulation reproduces: the cause is in the CUDA
// kernels' arithmetic, not in the GPU's exp or FMA. Known gaps (kGaps: output -> the factor over the CPU
// kernel's error measured on 2026-12-04) are held to that factor and must not close silently (strict, as
// an xfail: a closed gap fails until it is removed from the list).
struct Gap {
  const char* what;
  size_t output;
  double factor;
};
constexpr Gap kGaps[] = {{"spatial 2x64x28x28", 2, 6}, {"spatial 2x64x28x28", 5, 10},
                         {"channel 2x256x14x14 N=128", 2, 3}, {"channel 2x256x14x14 N=128", 3, 3},
                         {"channel 2x256x14x14 N=128", 8, 4}};
void accuracy_check() {
  auto err = [](const at::Tensor& a, const at::Tensor& t) { return (a.to(at::kDouble) - t).abs().max().item<double>(); };
  auto check = [&](const char* what, const std::vector<at::Tensor>& emu, const std::vector<at::Tensor>& cpu,
                   const std::vector<at::Tensor>& truth) {
    for (size_t i = 0; i < truth.size(); ++i) {
      const double e = err(emu[i], truth[i]), c = err(cpu[i], truth[i]);
      const double slack = 2e-6 * truth[i].abs().max().item<double>(), bound = 2 * c + slack;
      double factor = 0;
      for (const Gap& g : kGaps)
        if (std::string(g.what) == what && g.output == i) factor = g.factor;
      const bool ok = factor > 0 ? (e > bound && e <= factor * c + slack) : e <= bound;
      if (!ok) ++failures;
      std::printf("%s fp32 accuracy %-28s output %zu: emulated CUDA %.3g, CPU %.3g (bound %.3g%s)\n",
                  ok ? (factor > 0 ? "gap " : "ok  ") : "FAIL", what, i, e, c, factor > 0 ? factor * c + slack : bound,
                  factor > 0 ? (e <= bound ? ": the known gap closed, remove it from kGaps" : ", a known gap") : "");
    }
  };
  auto vec = [](auto&& t) { return std::apply([](auto&... x) { return std::vector<at::Tensor>{x...}; }, t); };
  at::manual_seed(1);
  auto d = at::TensorOptions().dtype(at::kDouble);
  {  // Block 2, 2x64x28x28
    const int64_t C = 64;
    at::Tensor x = at::randn({2, C, 28, 28}, d), gy = at::randn_like(x);
    const double sc = 1.5 / std::sqrt(double(C));
    std::vector<at::Tensor> w = {at::randn({C}, d) * sc, at::randn({1}, d) * 0.3, at::randn({C}, d) * sc,
                                 at::randn({1}, d) * 0.3, at::randn({C}, d) * sc, at::randn({1}, d) * 0.3};
    std::vector<at::Tensor> f;
    for (auto& t : w) f.push_back(t.to(at::kFloat));
    const at::Tensor xf = x.to(at::kFloat), gf = gy.to(at::kFloat);
    auto truth = vec(recogfast_aten::cubs_spatial_backward(gy, x, w[0], w[1], w[2], w[3], w[4], w[5]));
    truth.insert(truth.begin(), recogfast_aten::cubs_spatial(x, w[0], w[1], w[2], w[3], w[4], w[5]));
    auto cpu = vec(recogfast_aten::cubs_spatial_backward(gf, xf, f[0], f[1], f[2], f[3], f[4], f[5]));
    cpu.insert(cpu.begin(), recogfast_aten::cubs_spatial(xf, f[0], f[1], f[2], f[3], f[4], f[5]));
    auto emu = vec(recogfast::emu_cubs_spatial_backward(gf, xf, f[0], f[1], f[2], f[3], f[4], f[5]));
    emu.insert(emu.begin(), recogfast::emu_cubs_spatial(xf, f[0], f[1], f[2], f[3], f[4], f[5]));
    check("spatial 2x64x28x28", emu, cpu, truth);
  }
  {  // Block 1, 2x256x14x14, N = 128
    const int64_t C = 256, N = 128;
    at::Tensor x = at::randn({2, C, 14, 14}, d), gy = at::randn_like(x);
    const double sc = 3.0 / std::sqrt(double(C)), sn = 2.0 / std::sqrt(double(N));
    std::vector<at::Tensor> v = {at::randn({N, C}, d) * sc, at::randn({N}, d) * 0.3, at::randn({N, C}, d) * sc,
                                 at::randn({N}, d) * 0.3, at::randn({N, C}, d) * sc, at::randn({N}, d) * 0.3,
                                 at::randn({C, N}, d) * sn, at::randn({C}, d) * 0.3};
    std::vector<at::Tensor> f;
    for (auto& t : v) f.push_back(t.to(at::kFloat));
    const at::Tensor xf = x.to(at::kFloat), gf = gy.to(at::kFloat);
    auto truth = vec(recogfast_aten::cubs_channel_backward(gy, x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]));
    truth.insert(truth.begin(), recogfast_aten::cubs_channel(x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]));
    auto cpu = vec(recogfast_aten::cubs_channel_backward(gf, xf, f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]));
    cpu.insert(cpu.begin(), recogfast_aten::cubs_channel(xf, f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]));
    auto emu = vec(recogfast::emu_cubs_channel_backward(gf, xf, f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]));
    emu.insert(emu.begin(), recogfast::emu_cubs_channel(xf, f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]));
    check("channel 2x256x14x14 N=128", emu, cpu, truth);
  }
}
}  // namespace
int main(int argc, char** argv) {
  const bool only_ms = argc > 1 && std::string(argv[1]) == "ms";
  if (argc > 1 && std::string(argv[1]) == "acc") {  // `run.sh acc`: only the fp32 accuracy check
    accuracy_check();
    return failures != 0;
  }
  if (!only_ms) {
  at::manual_seed(0);
  struct S { int64_t B, C, H, W; bool cl; at::ScalarType dt; };
  for (S s : {S{2, 16, 5, 7, false, at::kDouble}, S{2, 16, 5, 7, true, at::kDouble}, S{1, 3, 1, 1, false, at::kDouble},
              S{2, 40, 23, 29, true, at::kFloat}, S{1, 8, 30, 40, false, at::kFloat}, S{3, 64, 4, 4, true, at::kBFloat16},
              S{2, 8, 9, 9, false, at::kHalf}}) {
    char tag[96];
    std::snprintf(tag, sizeof tag, "B=%ld C=%ld %ldx%ld %s %s", s.B, s.C, s.H, s.W, s.cl ? "NHWC" : "NCHW",
                  c10::toString(s.dt));
    auto o = at::TensorOptions().dtype(s.dt);
    at::Tensor x = at::randn({s.B, s.C, s.H, s.W}, o);
    if (s.cl) x = x.contiguous(at::MemoryFormat::ChannelsLast);
    const double sc = 1.5 / std::sqrt(double(s.C));
    at::Tensor w[6] = {at::randn({s.C}, o) * sc, at::randn({1}, o) * 0.3, at::randn({s.C}, o) * sc,
                       at::randn({1}, o) * 0.3, at::randn({s.C}, o) * sc, at::randn({1}, o) * 0.3};
    at::Tensor gy = at::randn_like(x);
    const double rtol = s.dt == at::kDouble ? 1e-10 : (s.dt == at::kFloat ? 1e-5 : 2e-2);
    cmp(recogfast::emu_cubs_spatial(x, w[0], w[1], w[2], w[3], w[4], w[5]),
        recogfast_aten::cubs_spatial(x, w[0], w[1], w[2], w[3], w[4], w[5]), "y", (std::string("spatial ") + tag).c_str(), rtol);
    cmp_tuple(recogfast::emu_cubs_spatial_backward(gy, x, w[0], w[1], w[2], w[3], w[4], w[5]),
              recogfast_aten::cubs_spatial_backward(gy, x, w[0], w[1], w[2], w[3], w[4], w[5]),
              (std::string("spatial ") + tag).c_str(), rtol * 10);
    const int64_t N = std::max<int64_t>(1, s.C / 2);
    const double sn = 2.0 / std::sqrt(double(N));
    at::Tensor v[8] = {at::randn({N, s.C}, o) * (2 * sc), at::randn({N}, o) * 0.3, at::randn({N, s.C}, o) * (2 * sc),
                       at::randn({N}, o) * 0.3, at::randn({N, s.C}, o) * (2 * sc), at::randn({N}, o) * 0.3,
                       at::randn({s.C, N}, o) * sn, at::randn({s.C}, o) * 0.3};
    cmp(recogfast::emu_cubs_channel(x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]),
        recogfast_aten::cubs_channel(x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]), "y",
        (std::string("channel ") + tag).c_str(), rtol);
    cmp_tuple(recogfast::emu_cubs_channel_backward(gy, x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]),
              recogfast_aten::cubs_channel_backward(gy, x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]),
              (std::string("channel ") + tag).c_str(), rtol * 10);
    const int64_t R = std::max<int64_t>(1, s.C / 4);
    at::Tensor u[4] = {at::randn({R, s.C}, o) * sc, at::randn({R}, o) * 0.3, at::randn({s.C, R}, o) / std::sqrt(double(R)),
                       at::randn({s.C}, o) * 0.3};
    cmp(recogfast::emu_se_gate(x, u[0], u[1], u[2], u[3]), recogfast_aten::se_gate(x, u[0], u[1], u[2], u[3]), "y",
        (std::string("se ") + tag).c_str(), rtol);
    cmp_tuple(recogfast::emu_se_gate_backward(gy, x, u[0], u[1], u[2], u[3]),
              recogfast_aten::se_gate_backward(gy, x, u[0], u[1], u[2], u[3]), (std::string("se ") + tag).c_str(), rtol * 10);
  }
  }
  if (!only_ms) accuracy_check();
  run_ms_loss();
  std::printf("%s\n", failures ? "FAILURES" : "all emulated CUDA results match the CPU kernels");
  return failures != 0;
}
