// CUBS Block 1's one-CTA variant, RECOGFAST_CUBS_CHANNEL_VARIANT=fused (cubs_channel_fused.cuh, 64 threads a CTA
// under the emulation; main.cpp includes this inside its anonymous namespace, after cmp, cmp_tuple, dtype_slot and
// expect_bad_env). Forward and backward against the CPU kernel (main.cpp's tolerances) and against the split path
// of the same emulation (the same head code; only the channel sums' order differs), over NCHW with 1 to 32 lanes a
// channel, NHWC with several pixel phases (warp phases or not) and with channels wrapping the CTA, N = 1, B = 1,
// C and N over the CTA's threads, fp64, fp32, bf16 and fp16, 16-bit x also with fp32 weights; each case must take
// the fused kernels where the sample reads in 16-byte vectors (kernel launches: 1 forward, 2 backward) and the
// split path elsewhere (odd C, NCHW with HW not a multiple of the vector: 3 and 4). Then a sample that no cluster
// holds (EMU_SMEM_OPTIN) takes the split path, and a bad value is one line. Clusters: clusters.h.
// `emu_test ch` runs this and clusters.h; `emu_test tiles` runs it with the other CUBS variants, and the full run too.
#pragma once

void run_channel_fused() {
  at::manual_seed(11);
  double worst[4] = {0, 0, 0, 0}, worst_split[4] = {0, 0, 0, 0};  // err / scale: vs the CPU kernel, vs split
  auto rel = [](const at::Tensor& a, const at::Tensor& b) {
    const double err = (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
    return err / std::max(b.to(at::kDouble).abs().max().item<double>(), 1e-30);
  };
  struct S { int64_t B, C, H, W, N; bool cl; at::ScalarType dt; const char* what; };
  const std::vector<S> cases = {
      {1, 4, 1, 2, 1, true, at::kFloat, "C=4 HW=2 N=1 B=1"},        {1, 3, 1, 1, 1, false, at::kDouble, "HW=1: split"},
      {3, 17, 7, 7, 8, true, at::kFloat, "odd C: split"},            {2, 17, 5, 9, 8, false, at::kFloat, "HW=45: split"},
      {2, 16, 7, 7, 8, true, at::kBFloat16, "V=8 P=32 warp phases"}, {2, 16, 4, 4, 8, false, at::kBFloat16, "NCHW L=2"},
      {2, 40, 2, 4, 20, false, at::kBFloat16, "NCHW L=1, 32 a warp"}, {2, 8, 4, 6, 4, false, at::kHalf, "NCHW L=4"},
      {2, 6, 8, 20, 3, false, at::kFloat, "NCHW L=32, 2 rounds"},    {2, 8, 6, 6, 4, false, at::kHalf, "HW=36: split"},
      {2, 64, 7, 7, 32, true, at::kFloat, "V=4 P=4"},                {1, 80, 3, 3, 40, true, at::kDouble, "V=2 P=1"},
      {2, 264, 2, 2, 140, true, at::kFloat, "C and N wrap the CTA"}, {2, 24, 4, 4, 12, false, at::kDouble, "NCHW L=8"},
      {2, 16, 5, 9, 8, true, at::kDouble, "5x9 NHWC"},               {4, 24, 7, 7, 12, false, at::kBFloat16, "7x7: split"},
      {2, 40, 3, 5, 20, true, at::kHalf, "V=8 P=12"},                {2, 96, 2, 3, 150, true, at::kFloat, "N > C"},
      {2, 16, 14, 14, 8, false, at::kBFloat16, "14x14: split"}};
  int n = 0, n_fused = 0, n_runs = 0;
  setenv("RECOGFAST_CUBS_CHANNEL_VARIANT", "fused", 1);
  for (const S& s : cases) {
    at::Tensor x = at::randn({s.B, s.C, s.H, s.W}, at::TensorOptions().dtype(s.dt));
    if (s.cl) x = x.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor gy = at::randn_like(x);
    const bool half = s.dt == at::kBFloat16 || s.dt == at::kHalf;
    for (const bool mixed : half ? std::vector<bool>{false, true} : std::vector<bool>{false}) {
      const auto ow = at::TensorOptions().dtype(mixed ? at::kFloat : s.dt);
      const double sc = 3.0 / std::sqrt(double(s.C)), sn = 2.0 / std::sqrt(double(s.N));
      const at::Tensor v[8] = {at::randn({s.N, s.C}, ow) * sc, at::randn({s.N}, ow) * 0.3, at::randn({s.N, s.C}, ow) * sc,
                               at::randn({s.N}, ow) * 0.3,     at::randn({s.N, s.C}, ow) * sc, at::randn({s.N}, ow) * 0.3,
                               at::randn({s.C, s.N}, ow) * sn, at::randn({s.C}, ow) * 0.3};
      char tag[120];
      std::snprintf(tag, sizeof tag, "ch fused B=%ld C=%ld N=%ld %ldx%ld %s %s%s (%s)", s.B, s.C, s.N, s.H, s.W,
                    s.cl ? "NHWC" : "NCHW", c10::toString(s.dt), mixed ? " w=f32" : "", s.what);
      const double rtol = s.dt == at::kDouble ? 1e-10 : (s.dt == at::kFloat ? 1e-5 : 2e-2);
      auto fwd = [&] { return recogfast::emu_cubs_channel(x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]); };
      auto bwd = [&] {
        return recogfast::emu_cubs_channel_backward(gy, x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
      };
      const int launches = recogfast::emu_channel_fused_launches(), k0 = recogfast::emu_launches();
      const at::Tensor y = fwd();
      const int k1 = recogfast::emu_launches();
      const auto ge = bwd();
      const int k2 = recogfast::emu_launches();
      // the one-CTA kernels run where the sample reads in 16-byte vectors (the tensors here are aligned)
      const bool cl = !x.is_contiguous();  // the kernels' layout (checks.h use_channels_last)
      const bool fused = (cl ? s.C : s.H * s.W) % (16 / int64_t(x.element_size())) == 0;
      const int want_f = fused ? 1 : 3, want_b = fused ? 2 : 4;
      if (recogfast::emu_channel_fused_launches() != launches + (fused ? 2 : 0) || k1 - k0 != want_f ||
          k2 - k1 != want_b) {
        ++failures;  // forward: the one-CTA kernel; backward: it and the weight-gradient sum (split: 3 and 4)
        std::printf("FAIL %s: %d fused launches, kernels forward %d, backward %d; want %d, %d, %d\n", tag,
                    recogfast::emu_channel_fused_launches() - launches, k1 - k0, k2 - k1, fused ? 2 : 0, want_f,
                    want_b);
      }
      n_fused += fused;
      ++n_runs;
      const at::Tensor yc = recogfast_aten::cubs_channel(x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
      const auto gc = recogfast_aten::cubs_channel_backward(gy, x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
      cmp(y, yc, "y", tag, rtol);
      cmp_tuple(ge, gc, tag, rtol * 10);
      setenv("RECOGFAST_CUBS_CHANNEL_VARIANT", "split", 1);
      const at::Tensor ys = fwd();
      const int k3 = recogfast::emu_launches();
      const auto gs = bwd();
      if (k3 - k2 != 3 || recogfast::emu_launches() - k3 != 4) {  // pool, head, apply (+ the weight gradients)
        ++failures;
        std::printf("FAIL %s: the split path launched %d + %d kernels, not 3 + 4\n", tag, k3 - k2,
                    recogfast::emu_launches() - k3);
      }
      setenv("RECOGFAST_CUBS_CHANNEL_VARIANT", "fused", 1);
      const std::string st = std::string(tag) + " vs split";
      cmp(y, ys, "y", st.c_str(), rtol);
      cmp_tuple(ge, gs, st.c_str(), rtol * 10);
      const int slot = dtype_slot(s.dt);
      worst[slot] = std::max({worst[slot], rel(y, yc), rel(std::get<0>(ge), std::get<0>(gc))});
      worst_split[slot] = std::max({worst_split[slot], rel(y, ys), rel(std::get<0>(ge), std::get<0>(gs))});
      n += 2 * 10;
    }
  }
  std::printf("ch fused: %d comparisons, %d of %d runs one-CTA (the rest split); worst y/gx err/scale vs CPU fp64 "
              "%.3g, fp32 %.3g, bf16 %.3g, fp16 %.3g; vs split %.3g, %.3g, %.3g, %.3g\n", n, n_fused, n_runs, worst[0],
              worst[1], worst[2], worst[3], worst_split[0], worst_split[1], worst_split[2], worst_split[3]);
  // A sample that no cluster of up to 8 CTAs holds (EMU_SMEM_OPTIN = 256 bytes) takes the split path, still right.
  setenv("EMU_SMEM_OPTIN", "256", 1);
  const int before = recogfast::emu_channel_fused_launches();
  {
    const at::Tensor x = at::randn({2, 16, 6, 6}).contiguous(at::MemoryFormat::ChannelsLast), gy = at::randn_like(x);
    const at::Tensor v[8] = {at::randn({8, 16}) * 0.7, at::randn({8}), at::randn({8, 16}) * 0.7, at::randn({8}),
                             at::randn({8, 16}) * 0.7, at::randn({8}), at::randn({16, 8}) * 0.7, at::randn({16})};
    cmp(recogfast::emu_cubs_channel(x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]),
        recogfast_aten::cubs_channel(x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]), "y",
        "ch fused -> split (over the opt-in)", 1e-5);
    cmp_tuple(recogfast::emu_cubs_channel_backward(gy, x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]),
              recogfast_aten::cubs_channel_backward(gy, x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]),
              "ch fused -> split (over the opt-in)", 1e-4);
  }
  if (recogfast::emu_channel_fused_launches() != before) {
    ++failures;
    std::printf("FAIL ch: a sample over the opt-in shared memory took the fused kernels\n");
  }
  unsetenv("EMU_SMEM_OPTIN");
  unsetenv("RECOGFAST_CUBS_CHANNEL_VARIANT");
  expect_bad_env("RECOGFAST_CUBS_CHANNEL_VARIANT", "fast",
                 "recogfast::cubs_channel: RECOGFAST_CUBS_CHANNEL_VARIANT must be auto, fused or split, got 'fast'", [] {
                   const at::Tensor x = at::randn({1, 4, 2, 2});
                   recogfast::emu_cubs_channel(x, at::randn({2, 4}), at::randn({2}), at::randn({2, 4}),
                                               at::randn({2}), at::randn({2, 4}), at::randn({2}), at::randn({4, 2}),
                                               at::randn({4}));
                 });
}
