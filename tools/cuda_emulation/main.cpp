// Runs the CUDA kernels of the SE and CUBS ops under host emulation and compares with the CPU ops.
#include <ATen/ATen.h>
#include <cstdio>
#include <string>
#include <tuple>
#include "ops/cubs_channel.h"
#include "ops/cubs_spatial.h"
#include "ops/se_gate.h"
namespace recogfast {
at::Tensor emu_cubs_spatial(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const at::Tensor&);
CubsSpatialGrads emu_cubs_spatial_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
at::Tensor emu_cubs_channel(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&);
CubsChannelGrads emu_cubs_channel_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&);
at::Tensor emu_se_gate(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
detail::SEGateGrads emu_se_gate_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&);
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
}  // namespace
int main() {
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
        recogfast::cubs_spatial(x, w[0], w[1], w[2], w[3], w[4], w[5]), "y", (std::string("spatial ") + tag).c_str(), rtol);
    cmp_tuple(recogfast::emu_cubs_spatial_backward(gy, x, w[0], w[1], w[2], w[3], w[4], w[5]),
              recogfast::cubs_spatial_backward(gy, x, w[0], w[1], w[2], w[3], w[4], w[5]),
              (std::string("spatial ") + tag).c_str(), rtol * 10);
    const int64_t N = std::max<int64_t>(1, s.C / 2);
    const double sn = 2.0 / std::sqrt(double(N));
    at::Tensor v[8] = {at::randn({N, s.C}, o) * (2 * sc), at::randn({N}, o) * 0.3, at::randn({N, s.C}, o) * (2 * sc),
                       at::randn({N}, o) * 0.3, at::randn({N, s.C}, o) * (2 * sc), at::randn({N}, o) * 0.3,
                       at::randn({s.C, N}, o) * sn, at::randn({s.C}, o) * 0.3};
    cmp(recogfast::emu_cubs_channel(x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]),
        recogfast::cubs_channel(x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]), "y",
        (std::string("channel ") + tag).c_str(), rtol);
    cmp_tuple(recogfast::emu_cubs_channel_backward(gy, x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]),
              recogfast::cubs_channel_backward(gy, x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]),
              (std::string("channel ") + tag).c_str(), rtol * 10);
    const int64_t R = std::max<int64_t>(1, s.C / 4);
    at::Tensor u[4] = {at::randn({R, s.C}, o) * sc, at::randn({R}, o) * 0.3, at::randn({s.C, R}, o) / std::sqrt(double(R)),
                       at::randn({s.C}, o) * 0.3};
    cmp(recogfast::emu_se_gate(x, u[0], u[1], u[2], u[3]), recogfast::se_gate(x, u[0], u[1], u[2], u[3]), "y",
        (std::string("se ") + tag).c_str(), rtol);
    cmp_tuple(recogfast::emu_se_gate_backward(gy, x, u[0], u[1], u[2], u[3]),
              recogfast::se_gate_backward(gy, x, u[0], u[1], u[2], u[3]), (std::string("se ") + tag).c_str(), rtol * 10);
  }
  std::printf("%s\n", failures ? "FAILURES" : "all emulated CUDA results match the CPU kernels");
  return failures != 0;
}
