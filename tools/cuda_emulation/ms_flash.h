// The flash MS-loss section of the emulation (main.cpp includes it inside its anonymous namespace, after
// ms_cmp and the error counters it uses): the flash kernels against the CPU kernel and the tiles path.
#pragma once

// fp32 -> tf32 (cvt.rna: 10 mantissa bits, ties away), as an fp32 tensor.
at::Tensor round_tf32(const at::Tensor& x) {
  at::Tensor b = x.to(at::kFloat).contiguous().view(at::kInt);
  return at::bitwise_and(b + 0x1000, ~0x1fff).view(at::kFloat);
}

// The flash path (RECOGFAST_MS_LOSS_PATH=flash: tensor-core tiles, emulated mma) against the CPU kernel and the
// tiles path, over bf16 / fp16 / fp32 (TF32), the six tile variants (small emulation shapes; each case under
// three of them, variant 3 also on the edge cases and once past the opt-in shared memory, where its backward falls
// back to variant 4's), D = 1, 7, 64, 130, label layouts, ε = 0, reference sets with and without gradient, several row / column blocks, feature
// chunks and backward waves with tails; for ms / all mining also the forward's two forms (RECOGFAST_MS_FLASH_FWD=one,
// two: the min positive and max negative bit for bit, the sums to 1e-5) and "auto" choosing each somewhere. fp32 runs TF32 products: its inputs are rounded to tf32 first (the
// rounding TF32 applies, cvt.rna) so that the CPU kernel sees the same operands and the mining decisions
// agree; what remains is the W operand's tf32 rounding (2^-11 relative) in the gradients. fp32 without TF32
// (EMU_ALLOW_TF32=0: the op's allow_tf32 = False) runs 3xTF32 products (MmaKind::kF32) on unrounded inputs, against
// the CPU kernel at the tiles path's fp32 tolerances, and each output's error against the float64 CPU kernel within
// 2x the fp32 CPU kernel's own (tools/gpu_crosscheck.py's rule; a small floor for outputs both get exact).
void run_ms_flash() {
  at::manual_seed(2);
  const int n0 = ms_comparisons;
  auto m_per_class = [](int64_t B, int64_t m) { return at::floor_divide(at::randperm(B), m).to(at::kLong); };
  struct Case {
    const char* name;
    int64_t B, D, R;
    at::Tensor labels, ref_labels;
    bool ref_grad;
    double eps;
  };
  std::vector<Case> cases = {
      {"m-per-class 70x64", 70, 64, 0, m_per_class(70, 4), {}, false, 0.1},
      {"m-per-class 37x130", 37, 130, 0, m_per_class(37, 3), {}, false, 0.1},
      {"D=1 21x1", 21, 1, 0, at::randint(0, 3, {21}), {}, false, 0.1},
      {"D=7 eps=0 33x7", 33, 7, 0, m_per_class(33, 4), {}, false, 0.0},
      {"lone classes 29x16", 29, 16, 0, at::cat({at::arange(9), 100 + at::floor_divide(at::arange(20), 4)}), {}, false, 0.1},
      {"all distinct 19x8", 19, 8, 0, at::arange(19), {}, false, 0.1},
      {"one class 17x9", 17, 9, 0, at::zeros({17}, at::kLong), {}, false, 0.1},
      {"B=1", 1, 4, 0, at::zeros({1}, at::kLong), {}, false, 0.1},
      {"ref 26x20 R=35 grad", 26, 20, 35, m_per_class(26, 2), at::randint(0, 15, {35}), true, 0.1},
      {"ref 26x20 R=35 nograd", 26, 20, 35, m_per_class(26, 2), at::randint(0, 15, {35}), false, 0.1},
      {"ref B=1 R=5 grad eps=0", 1, 7, 5, at::zeros({1}, at::kLong), at::randint(0, 2, {5}), true, 0.0},
      {"int64 labels beyond int32 40x12", 40, 12, 0, m_per_class(40, 4) * (int64_t(1) << 33) + 5, {}, false, 0.1},
  };
  const double alpha = 2, beta = 50, base = 0.5;
  setenv("RECOGFAST_MS_LOSS_PATH", "flash", 1);
  // The runs: every case per dtype, its variant rotating over 0-5 (each dtype a different phase, so that every
  // variant meets multi-chunk D, a reference set and the edge cases in some dtype); then variant 3 on the edge
  // cases (D = 1, B = 1, R = 5 with gradient and eps = 0, D = 7), and once with a 2 KB opt-in limit
  // (EMU_SMEM_OPTIN), so that its backward takes variant 4's kernel.
  struct Run {
    at::ScalarType dt;
    size_t ci;
    int var;
    bool fallback;
    bool exact = false;  // fp32 without TF32: 3xTF32 (forward: variant 4's tiles; backward: variant 3's, but on fallback)
  };
  std::vector<Run> runs;
  const at::ScalarType dts[3] = {at::kBFloat16, at::kHalf, at::kFloat};
  const int rot[3] = {2, 3, 4};
  for (int di = 0; di < 3; ++di)
    for (size_t i = 0; i < cases.size(); ++i) runs.push_back({dts[di], i, int((i + rot[di]) % 6), false});
  for (size_t i : {2, 3, 7, 10}) runs.push_back({at::kBFloat16, i, 3, false});
  runs.push_back({at::kFloat, 7, 3, false});
  runs.push_back({at::kBFloat16, 0, 5, false});  // 70 rows: two 64-row CTAs of 32-row warps, the second partial
  runs.push_back({at::kHalf, 1, 3, true});
  for (size_t i = 0; i < cases.size(); ++i) runs.push_back({at::kFloat, i, int((i + 1) % 6), false, true});
  runs.push_back({at::kFloat, 1, 3, true, true});  // 3xTF32 with variant 3's fallback
  int gsmem_expected = 0, auto_forwards = 0;
  const int gsmem0 = recogfast::emu_ms_gsmem_backwards(), one0 = recogfast::emu_ms_one_pass_forwards();
  double one_vs_two[4] = {0, 0, 0, 0}, exact_one_vs_two[4] = {0, 0, 0, 0}, exact_vs_cpu[4] = {0, 0, 0, 0},
         exact_vs_tiles[4] = {0, 0, 0, 0}, exact_err_ratio = 0;
  int exact_runs = 0;
  for (const Run& run : runs) {
    const auto dt = run.dt;
    const Case& c = cases[run.ci];
    // fp32: TF32's operands are rounded alike on both sides, its W operand is not; 3xTF32 meets the tiles path's
    const double rtol_l = run.exact ? 1e-5 : dt == at::kFloat ? 1e-4 : 1e-2, rtol_s = run.exact ? 1e-5 : 1e-4;
    const double rtol_g = run.exact ? 2e-4 : dt == at::kFloat ? 3e-3 : 3e-2;
    {
      const std::string var = std::to_string(run.var) + (run.fallback ? " fallback" : "");
      setenv("RECOGFAST_MS_FLASH_TILE", var.substr(0, 1).c_str(), 1);
      if (run.fallback) setenv("EMU_SMEM_OPTIN", "2048", 1);
      if (run.exact) setenv("EMU_ALLOW_TF32", "0", 1);
      exact_runs += run.exact;
      // TF32 inputs rounded to tf32 (both sides see the same operands); 3xTF32's not, but for D = 1, where the
      // cases are all ties by construction (S = +-1 exactly needs operands the split reproduces exactly)
      const bool round = dt == at::kFloat && (!run.exact || c.D == 1);
      at::Tensor e = at::randn({c.B, c.D}, at::kDouble).to(dt);
      if (round) e = round_tf32(e);
      std::optional<at::Tensor> r, rl;
      if (c.R > 0) {
        at::Tensor rr = at::randn({c.R, c.D}, at::kDouble).to(dt);
        r = round ? round_tf32(rr) : rr;
        rl = c.ref_labels;
      }
      const at::Tensor gl = at::full({}, 0.7, at::TensorOptions().dtype(dt));
      for (const char* mining : {"ms", "all", "hardest"}) {
        const std::string tag = std::string("flash/") + var + " " + c.name + " " + (run.exact ? "float32-3xTF32" :
                                c10::toString(dt)) + " " + mining;
        const auto cpu = recogfast_aten::ms_loss(e, c.labels, r, rl, alpha, beta, base, c.eps, mining, false);
        const auto gcpu = recogfast_aten::ms_loss_backward(gl, e, c.labels, r, rl, std::get<1>(cpu), std::get<2>(cpu),
                                                           std::get<3>(cpu), alpha, beta, base, c.eps, mining, c.ref_grad);
        std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> out[2];
        std::tuple<at::Tensor, at::Tensor> grads[2];
        for (int path = 0; path < 2; ++path) {  // 0 flash, 1 tiles
          setenv("RECOGFAST_MS_LOSS_PATH", path == 0 ? "flash" : "tiles", 1);
          out[path] = recogfast::emu_ms_loss(e, c.labels, r, rl, alpha, beta, base, c.eps, mining);
          grads[path] = recogfast::emu_ms_loss_backward(gl, e, c.labels, r, rl, std::get<1>(out[path]),
                                                        std::get<2>(out[path]), alpha, beta, base, c.eps, mining, c.ref_grad);
        }
        gsmem_expected += (run.var == 3 || run.exact) && !run.fallback;  // 3xTF32: variant 3's backward always
        if (std::string(mining) != "hardest") {
          // The forward's two forms (RECOGFAST_MS_FLASH_FWD; above: "auto", the device's choice): the one-pass
          // forward's min positive, max negative (stats 2, 3) and hard_idx bit for bit the two-pass forward's (the
          // same S bits, gathered or dense), its sums and loss to rounding (online rescaling), and against the CPU.
          setenv("RECOGFAST_MS_LOSS_PATH", "flash", 1);
          std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fw[2];
          for (int m = 0; m < 2; ++m) {
            setenv("RECOGFAST_MS_FLASH_FWD", m ? "one" : "two", 1);
            fw[m] = recogfast::emu_ms_loss(e, c.labels, r, rl, alpha, beta, base, c.eps, mining);
          }
          unsetenv("RECOGFAST_MS_FLASH_FWD");
          auto_forwards += 1;
          const at::Tensor s0 = std::get<1>(fw[0]), s1 = std::get<1>(fw[1]);
          ++ms_comparisons;
          if (!at::equal(s1.select(1, 2), s0.select(1, 2)) || !at::equal(s1.select(1, 3), s0.select(1, 3)) ||
              !at::equal(std::get<2>(fw[1]), std::get<2>(fw[0]))) {
            ++failures;
            std::printf("FAIL %s: one-pass forward's min positive / max negative / hard_idx not the two-pass bits\n",
                        tag.c_str());
          }
          ms_sink = run.exact ? exact_one_vs_two : one_vs_two;
          ms_cmp(std::get<0>(fw[1]), std::get<0>(fw[0]), "loss", tag + " one vs two", 1e-5, dt);
          ms_cmp(s1, s0, "stats", tag + " one vs two", 1e-5, dt);
          ms_sink = run.exact ? exact_vs_cpu : flash_max_rel;
          ms_cmp(std::get<0>(fw[1]), std::get<0>(cpu), "loss", tag + " one vs cpu", rtol_l, dt);
          ms_cmp(s1, std::get<1>(cpu), "stats", tag + " one vs cpu", rtol_s, dt);
          ms_sink = ms_max_rel;
        }
        const double gscale = std::max(std::get<0>(gcpu).to(at::kDouble).abs().max().item<double>(),
                                       std::get<1>(gcpu).numel() ? std::get<1>(gcpu).to(at::kDouble).abs().max().item<double>() : 0.0);
        for (int vs = 0; vs < 2; ++vs) {  // 0: against the CPU kernel, 1: against the tiles path
          ms_sink = vs == 0 ? (run.exact ? exact_vs_cpu : flash_max_rel) : (run.exact ? exact_vs_tiles : flash_vs_tiles);
          const auto& ref = vs == 0 ? cpu : out[1];
          const auto& gref = vs == 0 ? gcpu : grads[1];
          const std::string t = tag + (vs == 0 ? " vs cpu" : " vs tiles");
          ms_cmp(std::get<0>(out[0]), std::get<0>(ref), "loss", t, rtol_l, dt);
          ms_cmp(std::get<1>(out[0]), std::get<1>(ref), "stats", t, rtol_s, dt);
          // D = 1: every similarity is exactly ±1, so "hardest" is all ties; the CUDA kernels take the first
          // index (ms_loss_rows_kernel), the CPU kernel's symmetric tiles another one of the tied pairs: the
          // loss and stats agree, the index (and so the gradient) is compared with the tiles path only.
          if (vs == 0 && c.D == 1 && std::string(mining) == "hardest") continue;
          ms_cmp(std::get<2>(out[0]), std::get<2>(ref), "hard_idx", t, 0, dt, 0);
          ms_cmp(std::get<0>(grads[0]), std::get<0>(gref), "grad_e", t, rtol_g, dt, gscale * 1e3);
          if (std::get<1>(gref).numel())
            ms_cmp(std::get<1>(grads[0]), std::get<1>(gref), "grad_ref", t, rtol_g, dt, gscale * 1e3);
          if (std::get<1>(grads[0]).sizes() != std::get<1>(gref).sizes()) {
            ++failures;
            std::printf("FAIL %s: gradient shapes differ\n", t.c_str());
          }
        }
        ms_sink = ms_max_rel;
        if (run.exact) {
          // Accuracy: each output's error against the float64 CPU kernel within 2x the fp32 CPU kernel's own,
          // plus 2 fp32 ulps of the output's scale (outputs both sides get to the last bit, e.g. the loss of B = 1).
          const at::Tensor e64 = e.to(at::kDouble);
          const std::optional<at::Tensor> r64 = r ? std::optional<at::Tensor>(r->to(at::kDouble)) : std::nullopt;
          const auto c64 = recogfast_aten::ms_loss(e64, c.labels, r64, rl, alpha, beta, base, c.eps, mining, false);
          const auto g64 = recogfast_aten::ms_loss_backward(at::full({}, 0.7, at::kDouble), e64, c.labels, r64, rl,
                                                            std::get<1>(c64), std::get<2>(c64), std::get<3>(c64), alpha,
                                                            beta, base, c.eps, mining, c.ref_grad);
          const at::Tensor flash[4] = {std::get<0>(out[0]), std::get<1>(out[0]), std::get<0>(grads[0]),
                                       std::get<1>(grads[0])};
          const at::Tensor fp32[4] = {std::get<0>(cpu), std::get<1>(cpu), std::get<0>(gcpu), std::get<1>(gcpu)};
          const at::Tensor truth[4] = {std::get<0>(c64), std::get<1>(c64), std::get<0>(g64), std::get<1>(g64)};
          const char* names[4] = {"loss", "stats", "grad_e", "grad_ref"};
          for (int k = 0; k < 4; ++k) {
            if (!truth[k].numel()) continue;
            const double scale = ms_scale(truth[k]), ef = ms_max_err(flash[k], truth[k]), ec = ms_max_err(fp32[k], truth[k]);
            const double allowed = 2 * ec + 2 * std::ldexp(scale, -23);
            ++ms_comparisons;
            if (allowed > 0) exact_err_ratio = std::max(exact_err_ratio, ef / allowed);
            if (!(ef <= allowed)) {
              ++failures;
              std::printf("FAIL %s %s: 3xTF32 error vs float64 %.3g, the fp32 CPU kernel's %.3g (scale %.3g)\n",
                          tag.c_str(), names[k], ef, ec, scale);
            } else if (getenv("EMU_VERBOSE")) {
              std::printf("ok   %s %s vs float64: 3xTF32 %.3g, fp32 CPU %.3g (scale %.3g)\n", tag.c_str(), names[k], ef,
                          ec, scale);
            }
          }
        }
        setenv("RECOGFAST_MS_LOSS_PATH", "flash", 1);
      }
      unsetenv("EMU_SMEM_OPTIN");
      unsetenv("EMU_ALLOW_TF32");
    }
  }
  // "auto" (the default; every B x M here, RECOGFAST_MS_FLASH_ONE_PASS_MIN_PAIRS = 0) chose the one-pass forward
  // for some cases (small classes) and not for others (one class, few classes): each forward above under "auto"
  // counted where the device chose it, the forced "one" of each ms / all case once more.
  {
    const int ones = recogfast::emu_ms_one_pass_forwards() - one0 - auto_forwards;
    ++ms_comparisons;
    if (ones <= 0 || ones >= auto_forwards) {
      ++failures;
      std::printf("FAIL flash one-pass forward: \"auto\" chose it in %d of %d ms / all forwards\n", ones, auto_forwards);
    }
    std::printf("ms_loss flash one-pass forward: \"auto\" chose it in %d of %d ms / all forwards; one vs two worst "
                "err/scale bf16 %.3g, fp16 %.3g, fp32-TF32 %.3g\n", ones, auto_forwards, one_vs_two[2], one_vs_two[3],
                one_vs_two[1]);
  }
  // The backward kernels skipped the G product of column blocks whose W is all zero (any_weight: "hardest" mines
  // two pairs a row, so most of its blocks): the comparisons above saw the same values, EMU_DIGEST the same bits.
  ++ms_comparisons;
  if (recogfast::emu_ms_zero_w_skips() == 0) {
    ++failures;
    std::printf("FAIL flash backward: no column block with an all-zero W was skipped\n");
  }
  std::printf("ms_loss flash backward: %d column blocks with an all-zero W skipped their G product\n",
              recogfast::emu_ms_zero_w_skips());
  // Variant 3's backward ran its own kernel wherever it fit, and not where it did not.
  ++ms_comparisons;
  if (recogfast::emu_ms_gsmem_backwards() - gsmem0 != gsmem_expected) {
    ++failures;
    std::printf("FAIL flash variant 3: %d backward calls took the G-in-shared-memory kernel, expected %d\n",
                recogfast::emu_ms_gsmem_backwards() - gsmem0, gsmem_expected);
  }
  // Variant 3's backward against variant 0's on the same stats: the same BM, BN and BK (only DC differs), so the
  // same W, the same mma sequence per G element and the same normalisation arithmetic (variant 3 fused, variant 0
  // in its own kernel): bitwise equal gradients (37x130: 6 vs 9 feature chunks, 3 column blocks, 2 row blocks;
  // bf16 and TF32; a reference set with gradient).
  for (const auto dt : {at::kBFloat16, at::kFloat}) {
    setenv("RECOGFAST_MS_LOSS_PATH", "flash", 1);
    setenv("RECOGFAST_MS_FLASH_TILE", "0", 1);
    const at::Tensor e = round_tf32(at::randn({37, 130}, at::kDouble).to(dt)).to(dt), lab = m_per_class(37, 3);
    const at::Tensor r = round_tf32(at::randn({11, 130}, at::kDouble).to(dt)).to(dt), rl = at::randint(0, 12, {11});
    const at::Tensor gl = at::full({}, 0.7, at::TensorOptions().dtype(dt));
    const auto out = recogfast::emu_ms_loss(e, lab, r, rl, alpha, beta, base, 0.1, "ms");
    std::tuple<at::Tensor, at::Tensor> gr[2];
    for (int v = 0; v < 2; ++v) {
      setenv("RECOGFAST_MS_FLASH_TILE", v ? "3" : "0", 1);
      gr[v] = recogfast::emu_ms_loss_backward(gl, e, lab, r, rl, std::get<1>(out), std::get<2>(out), alpha, beta, base,
                                              0.1, "ms", true);
    }
    ms_comparisons += 2;
    if (!at::equal(std::get<0>(gr[0]), std::get<0>(gr[1])) || !at::equal(std::get<1>(gr[0]), std::get<1>(gr[1]))) {
      ++failures;
      std::printf("FAIL flash variant 3 vs 0 %s: gradients not bitwise equal (max diff %.3g)\n", c10::toString(dt),
                  (std::get<0>(gr[0]) - std::get<0>(gr[1])).abs().max().item<double>());
    }
  }
  // NaN/inf in: NaN loss and gradients out on the flash path too.
  {
    at::Tensor e = at::randn({9, 5}).to(at::kBFloat16);
    e[3][1] = std::numeric_limits<float>::infinity();
    const at::Tensor lab = at::zeros({9}, at::kLong);
    const auto out = recogfast::emu_ms_loss(e, lab, {}, {}, alpha, beta, base, 0.1, "ms");
    const auto gr = recogfast::emu_ms_loss_backward(at::ones({}, at::kBFloat16), e, lab, {}, {}, std::get<1>(out),
                                                    std::get<2>(out), alpha, beta, base, 0.1, "ms", false);
    ++ms_comparisons;
    if (!std::isnan(std::get<0>(out).item<double>()) || !std::get<0>(gr).isnan().all().item<bool>()) {
      ++failures;
      std::printf("FAIL flash ms_loss: inf in embeddings does not give NaN loss and gradients\n");
    }
  }
  // fp32 without TF32 allowed (the op's allow_tf32 = False): "flash" runs 3xTF32 (above), "auto" keeps the tiles path
  // (kFlashByDefault is false): its result bit for bit "tiles"', and a double-precision input on "flash" is an error.
  {
    const at::Tensor e = at::randn({6, 4}), lab = at::zeros({6}, at::kLong);
    setenv("EMU_ALLOW_TF32", "0", 1);
    setenv("RECOGFAST_MS_LOSS_PATH", "auto", 1);
    const auto autop = recogfast::emu_ms_loss(e, lab, {}, {}, alpha, beta, base, 0.1, "ms");
    setenv("RECOGFAST_MS_LOSS_PATH", "tiles", 1);
    const auto tiles = recogfast::emu_ms_loss(e, lab, {}, {}, alpha, beta, base, 0.1, "ms");
    setenv("RECOGFAST_MS_LOSS_PATH", "flash", 1);
    std::string msg;
    try {
      recogfast::emu_ms_loss(e.to(at::kDouble), lab, {}, {}, alpha, beta, base, 0.1, "ms");
    } catch (const std::exception& ex) {
      msg = ex.what();
    }
    ms_comparisons += 2;
    if (!at::equal(std::get<1>(autop), std::get<1>(tiles)) || msg.find("bf16, fp16 or fp32 embeddings") == std::string::npos) {
      ++failures;
      std::printf("FAIL flash fp32 without TF32: auto path not the tiles path's bits, or fp64 error '%s'\n", msg.c_str());
    }
    unsetenv("EMU_ALLOW_TF32");
  }
  unsetenv("RECOGFAST_MS_LOSS_PATH");
  unsetenv("RECOGFAST_MS_FLASH_TILE");
  std::printf("ms_loss flash: %d comparisons; worst err/scale vs the CPU kernel bf16 %.3g, fp16 %.3g, fp32-TF32 %.3g; vs the tiles "
              "path bf16 %.3g, fp16 %.3g, fp32 (tiles exact fp32) %.3g\n",
              ms_comparisons - n0, flash_max_rel[2], flash_max_rel[3], flash_max_rel[1], flash_vs_tiles[2], flash_vs_tiles[3],
              flash_vs_tiles[1]);
  std::printf("ms_loss flash fp32 3xTF32 (%d runs): worst err/scale vs the fp32 CPU kernel %.3g, vs the tiles path %.3g, one vs "
              "two forwards %.3g; worst error vs float64 / (2x the fp32 CPU kernel's + 2 ulps) %.3g (must be <= 1)\n",
              exact_runs, exact_vs_cpu[1], exact_vs_tiles[1], exact_one_vs_two[1], exact_err_ratio);
}

