// The one-CTA variants split over a thread block cluster (sample_stage.cuh cluster_sums; SE and CUBS Block 1): with
// EMU_SMEM_OPTIN below one sample's stage, the launchers take K = 2, 4 or 8 CTAs a sample (the emulation runs a
// cluster's CTAs at once, each with its own shared memory, read by the others through map_shared_rank). Forward
// and backward against the CPU kernel and the emulated split path, NCHW (each CTA a part of every channel row) and
// NHWC (each a run of pixels), fp64 / fp32 / bf16; every call must have launched clusters (counted). The limits
// below are the launchers' shared-memory formulas worked out for these shapes (64 threads a CTA): K = 1 over them,
// the K named within. main.cpp includes this after cmp, cmp_tuple and dtype_slot; `emu_test se` and `emu_test ch`
// run it, as does the full run.
#pragma once

void run_clusters() {
  at::manual_seed(13);
  struct S { const char* op; int64_t B, C, H, W; bool cl; at::ScalarType dt; const char* optin; int K; };
  const std::vector<S> cases = {
      {"se", 2, 16, 8, 8, true, at::kFloat, "2000", 4},     {"se", 2, 16, 8, 8, false, at::kBFloat16, "1500", 2},
      {"se", 1, 8, 16, 4, true, at::kDouble, "1100", 8},    {"ch", 2, 16, 8, 8, true, at::kFloat, "2500", 4},
      {"ch", 2, 16, 8, 8, false, at::kBFloat16, "2000", 2}, {"ch", 1, 8, 4, 16, false, at::kDouble, "1300", 8}};
  int n = 0;
  for (const S& s : cases) {
    at::Tensor x = at::randn({s.B, s.C, s.H, s.W}, at::TensorOptions().dtype(s.dt));
    if (s.cl) x = x.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor gy = at::randn_like(x);
    const auto o = at::TensorOptions().dtype(s.dt);
    const bool se = std::string(s.op) == "se";
    const int64_t R = std::max<int64_t>(1, s.C / 4), N = s.C / 2;
    const double sc = 1.5 / std::sqrt(double(s.C));
    std::vector<at::Tensor> w = se ? std::vector<at::Tensor>{at::randn({R, s.C}, o) * sc, at::randn({R}, o) * 0.3,
                                                             at::randn({s.C, R}, o) / std::sqrt(double(R)),
                                                             at::randn({s.C}, o) * 0.3}
                                   : std::vector<at::Tensor>{};
    for (int i = 0; !se && i < 3; ++i) {
      w.push_back(at::randn({N, s.C}, o) * (2 * sc));
      w.push_back(at::randn({N}, o) * 0.3);
    }
    if (!se) {
      w.push_back(at::randn({s.C, N}, o) * (2.0 / std::sqrt(double(N))));
      w.push_back(at::randn({s.C}, o) * 0.3);
    }
    const char* var = se ? "RECOGFAST_SE_VARIANT" : "RECOGFAST_CUBS_CHANNEL_VARIANT";
    auto run = [&](const char* variant) {
      setenv(var, variant, 1);
      std::vector<at::Tensor> out;
      if (se) {
        out.push_back(recogfast::emu_se_gate(x, w[0], w[1], w[2], w[3]));
        std::apply([&](const auto&... g) { (out.push_back(g), ...); },
                   recogfast::emu_se_gate_backward(gy, x, w[0], w[1], w[2], w[3]));
      } else {
        out.push_back(recogfast::emu_cubs_channel(x, w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]));
        std::apply([&](const auto&... g) { (out.push_back(g), ...); },
                   recogfast::emu_cubs_channel_backward(gy, x, w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]));
      }
      unsetenv(var);
      return out;
    };
    std::vector<at::Tensor> cpu;
    if (se) {
      cpu.push_back(recogfast_aten::se_gate(x, w[0], w[1], w[2], w[3]));
      std::apply([&](const auto&... g) { (cpu.push_back(g), ...); },
                 recogfast_aten::se_gate_backward(gy, x, w[0], w[1], w[2], w[3]));
    } else {
      cpu.push_back(recogfast_aten::cubs_channel(x, w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]));
      std::apply([&](const auto&... g) { (cpu.push_back(g), ...); },
                 recogfast_aten::cubs_channel_backward(gy, x, w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]));
    }
    setenv("EMU_SMEM_OPTIN", s.optin, 1);
    const int clusters = se ? recogfast::emu_se_fused_clusters() : recogfast::emu_channel_fused_clusters();
    const auto fused = run("fused");  // the backward last: its K is the larger need (SE) or the same (Block 1)
    const int took = (se ? recogfast::emu_se_fused_clusters() : recogfast::emu_channel_fused_clusters()) - clusters;
    const int K = recogfast::emu_last_cluster();
    unsetenv("EMU_SMEM_OPTIN");
    const auto split = run("split");
    char tag[112];
    std::snprintf(tag, sizeof tag, "%s cluster K=%d B=%ld C=%ld %ldx%ld %s %s", s.op, s.K, s.B, s.C, s.H, s.W,
                  s.cl ? "NHWC" : "NCHW", c10::toString(s.dt));
    if (took != 2 || K != s.K) {
      ++failures;
      std::printf("FAIL %s: %d of 2 calls launched clusters, the backward with K = %d\n", tag, took, K);
    }
    const double rtol = s.dt == at::kDouble ? 1e-10 : (s.dt == at::kFloat ? 1e-5 : 2e-2);
    for (size_t i = 0; i < fused.size(); ++i) {
      grad_scale = std::max(grad_scale, cpu[i].to(at::kDouble).abs().max().item<double>());
      cmp(fused[i], cpu[i], i ? "grad" : "y", tag, i ? rtol * 10 : rtol);
      cmp(fused[i], split[i], i ? "grad" : "y", (std::string(tag) + " vs split").c_str(), i ? rtol * 10 : rtol);
      n += 2;
    }
  }
  std::printf("clusters: %d comparisons, %zu cases of K = 2, 4, 8 CTAs a sample\n", n, cases.size());
}
