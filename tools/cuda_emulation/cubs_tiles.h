// The CUBS kernel variants of the emulation (main.cpp includes it inside its anonymous namespace, after cmp,
// cmp_tuple and the failure counter it uses). Block 2: RECOGFAST_CUBS_SPATIAL_TILE = 0-3 (cubs_spatial_passes.cuh:
// threads a block, rows a thread, staged tile), each launch re-reading it under the emulation. For every variant: the
// inference forward, the backward with its own row pass, the training forward (y and the saved statistics) and the
// backward from those statistics, against the CPU kernel with main.cpp's tolerances, and every output bit for bit
// against variant 0's (the variants sum the same terms in the same order). Shapes: P below one block's rows, P over
// one and two tiles of 512 and 1024 (P = 1200, 1089: several blocks with a ragged last block and tile), NCHW and
// NHWC (C a multiple of the 16-byte vector and not: both epilogue paths), fp64, fp32, bf16 with fp32 weights, and
// each call's kernel launches. Then a bad value: one line naming the variable and the allowed values.
// Block 1 (run_channel_threads): RECOGFAST_CUBS_CHANNEL_THREADS = 256, 128, 512 (threads a sample of the head
// kernel, cubs_channel_kernel.cu), forward and backward against the CPU kernel and bit for bit against 256, with C
// and N over one block's threads, fp32, fp64 (which keeps 256) and bf16 with fp32 weights; then a bad value.
// `emu_test tiles` runs only this section (both blocks); the full run runs it too.
#pragma once

// A bad value of `var`: the call must throw one line containing `want`.
template <typename F>
void expect_bad_env(const char* var, const char* value, const std::string& want, F call) {
  const char* before = getenv(var);
  const std::string saved = before ? before : "";
  setenv(var, value, 1);
  try {
    call();
    ++failures;
    std::printf("FAIL %s=%s was accepted\n", var, value);
  } catch (const std::exception& e) {
    const std::string m = e.what();
    const bool ok = m.find('\n') == std::string::npos && m.find(want) != std::string::npos;
    if (!ok) ++failures;
    std::printf("%s %s=%s: %s\n", ok ? "ok  " : "FAIL", var, value, m.c_str());
  }
  if (before) {
    setenv(var, saved.c_str(), 1);
  } else {
    unsetenv(var);
  }
}

// Every output of one variant's run bit for bit against the default's (`first`, taken from the first run):
// counts the comparison and prints one line.
struct BitIdentity {
  const char* base;  // the default variant's name in the messages
  int width;         // the tag column
  std::vector<at::Tensor> first;
  int identical = 0, compared = 0;

  void check(const std::vector<at::Tensor>& outs, const char* tag) {
    if (first.empty()) {
      first = outs;
      return;
    }
    bool same = true;
    for (size_t i = 0; i < outs.size(); ++i) same = same && at::equal(outs[i], first[i]);
    ++compared;
    identical += same;
    if (!same) ++failures;
    std::printf("%s %-*s %zu outputs bit-identical to %s\n", same ? "ok  " : "FAIL", width, tag, outs.size(), base);
  }
};

void run_channel_threads() {
  at::manual_seed(8);
  struct S { int64_t B, C, H, W; bool cl; at::ScalarType dt, wdt; };
  const S shapes[] = {S{2, 300, 3, 3, true, at::kFloat, at::kFloat}, S{2, 40, 5, 7, false, at::kFloat, at::kFloat},
                      S{2, 16, 5, 7, true, at::kDouble, at::kDouble}, S{3, 72, 4, 4, true, at::kBFloat16, at::kFloat}};
  BitIdentity bits{"256", 50};
  for (const S& s : shapes) {
    at::Tensor x = at::randn({s.B, s.C, s.H, s.W}, at::TensorOptions().dtype(s.dt));
    if (s.cl) x = x.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor gy = at::randn_like(x);
    const int64_t N = std::max<int64_t>(1, s.C / 2);
    const double sc = 1.5 / std::sqrt(double(s.C)), sn = 2.0 / std::sqrt(double(N));
    auto ow = at::TensorOptions().dtype(s.wdt);
    const at::Tensor v[8] = {at::randn({N, s.C}, ow) * (2 * sc), at::randn({N}, ow) * 0.3,
                             at::randn({N, s.C}, ow) * (2 * sc), at::randn({N}, ow) * 0.3,
                             at::randn({N, s.C}, ow) * (2 * sc), at::randn({N}, ow) * 0.3,
                             at::randn({s.C, N}, ow) * sn,       at::randn({s.C}, ow) * 0.3};
    const double rtol = s.dt == at::kDouble ? 1e-10 : (s.dt == at::kFloat ? 1e-5 : 2e-2);
    const at::Tensor cy = recogfast_aten::cubs_channel(x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
    const auto cg = recogfast_aten::cubs_channel_backward(gy, x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
    bits.first.clear();  // each shape against its own 256-thread run
    for (const char* t : {"256", "128", "512"}) {
      setenv("RECOGFAST_CUBS_CHANNEL_THREADS", t, 1);
      char tag[96];
      std::snprintf(tag, sizeof tag, "channel threads=%s B=%ld C=%ld %ldx%ld %s %s", t, s.B, s.C, s.H, s.W,
                    s.cl ? "NHWC" : "NCHW", c10::toString(s.dt));
      const at::Tensor ey = recogfast::emu_cubs_channel(x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
      const auto eg = recogfast::emu_cubs_channel_backward(gy, x, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
      cmp(ey, cy, "y", tag, rtol);
      cmp_tuple(eg, cg, tag, rtol * 10);
      std::vector<at::Tensor> outs = {ey};
      std::apply([&](auto&... a) { (outs.push_back(a), ...); }, eg);
      bits.check(outs, tag);
    }
  }
  unsetenv("RECOGFAST_CUBS_CHANNEL_THREADS");
  expect_bad_env("RECOGFAST_CUBS_CHANNEL_THREADS", "1024",
                 "recogfast::cubs_channel: RECOGFAST_CUBS_CHANNEL_THREADS must be 128, 256 or 512, got '1024'", [] {
                   const at::Tensor w = at::randn({2, 4}), b = at::randn({2});
                   recogfast::emu_cubs_channel(at::randn({1, 4, 2, 2}), w, b, w, b, w, b, at::randn({4, 2}),
                                               at::randn({4}));
                 });
  std::printf("cubs_channel thread variants: %d of %d variant runs bit-identical to 256\n", bits.identical,
              bits.compared);
}

void run_spatial_tiles() {
  const char* before = getenv("RECOGFAST_CUBS_SPATIAL_TILE");
  const std::string saved = before ? before : "";
  at::manual_seed(7);
  struct S { int64_t B, C, H, W; bool cl; at::ScalarType dt, wdt; };
  const S shapes[] = {S{2, 16, 5, 7, true, at::kDouble, at::kDouble}, S{2, 8, 30, 40, false, at::kFloat, at::kFloat},
                      S{1, 8, 33, 33, true, at::kBFloat16, at::kFloat}, S{2, 6, 9, 11, true, at::kFloat, at::kFloat}};
  BitIdentity bits{"tile0", 40};
  // Launches a call (cubs_spatial_kernel.cu): forward and training forward 3 (project, key range, row pass with
  // y in its epilogue), backward from the saved statistics 5 (project, prep, column pass with grad_x in its
  // epilogue, weight-gradient partials and reduction), the backward with its own row pass 7.
  int launch_runs = 0, launch_ok = 0;
  auto launches = [&](const std::string& t, const char* call, int want, auto f) {
    const int before = recogfast::emu_launches();
    auto r = f();
    const int got = recogfast::emu_launches() - before;
    ++launch_runs;
    if (got == want) {
      ++launch_ok;
    } else {
      ++failures;
      std::printf("FAIL %s %s: %d launches, want %d\n", t.c_str(), call, got, want);
    }
    return r;
  };
  for (const S& s : shapes) {
    at::Tensor x = at::randn({s.B, s.C, s.H, s.W}, at::TensorOptions().dtype(s.dt));
    if (s.cl) x = x.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor gy = at::randn_like(x);
    const double sc = 1.5 / std::sqrt(double(s.C));
    auto ow = at::TensorOptions().dtype(s.wdt);
    const at::Tensor w[6] = {at::randn({s.C}, ow) * sc, at::randn({1}, ow) * 0.3, at::randn({s.C}, ow) * sc,
                             at::randn({1}, ow) * 0.3, at::randn({s.C}, ow) * sc, at::randn({1}, ow) * 0.3};
    const double rtol = s.dt == at::kDouble ? 1e-10 : (s.dt == at::kFloat ? 1e-5 : 2e-2);
    // The CPU kernel's outputs, once.
    const at::Tensor cy = recogfast_aten::cubs_spatial(x, w[0], w[1], w[2], w[3], w[4], w[5]);
    const auto cg = recogfast_aten::cubs_spatial_backward(gy, x, w[0], w[1], w[2], w[3], w[4], w[5]);
    const auto ct = recogfast_aten::cubs_spatial_forward_train(x, w[0], w[1], w[2], w[3], w[4], w[5]);
    const auto cs = recogfast_aten::cubs_spatial_backward_saved(gy, x, std::get<1>(ct), w[0], w[1], w[2], w[3], w[4], w[5]);
    bits.first.clear();  // each shape against its own variant 0 run
    for (int v = 0; v < 4; ++v) {
      setenv("RECOGFAST_CUBS_SPATIAL_TILE", std::to_string(v).c_str(), 1);
      char tag[96];
      std::snprintf(tag, sizeof tag, "tile%d B=%ld C=%ld %ldx%ld %s %s", v, s.B, s.C, s.H, s.W, s.cl ? "NHWC" : "NCHW",
                    c10::toString(s.dt));
      const std::string t = tag;
      const at::Tensor ey =
          launches(t, "fwd", 3, [&] { return recogfast::emu_cubs_spatial(x, w[0], w[1], w[2], w[3], w[4], w[5]); });
      const auto eg = launches(t, "bwd", 7, [&] {
        return recogfast::emu_cubs_spatial_backward(gy, x, w[0], w[1], w[2], w[3], w[4], w[5]);
      });
      const auto et = launches(t, "train", 3, [&] {
        return recogfast::emu_cubs_spatial_forward_train(x, w[0], w[1], w[2], w[3], w[4], w[5]);
      });
      const auto es = launches(t, "saved", 5, [&] {
        return recogfast::emu_cubs_spatial_backward_saved(gy, x, std::get<1>(et), w[0], w[1], w[2], w[3], w[4], w[5]);
      });
      cmp(ey, cy, "y", (t + " fwd").c_str(), rtol);
      cmp_tuple(eg, cg, (t + " bwd").c_str(), rtol * 10);
      cmp(std::get<0>(et), std::get<0>(ct), "y", (t + " train").c_str(), rtol);
      for (int64_t i = 0; i < 3; ++i)
        cmp(std::get<1>(et)[i], std::get<1>(ct)[i], "y", (t + " stats " + std::to_string(i)).c_str(), rtol * 10);
      cmp_tuple(es, cs, (t + " saved").c_str(), rtol * 10);
      std::vector<at::Tensor> outs = {ey, std::get<0>(et), std::get<1>(et)};
      std::apply([&](auto&... a) { (outs.push_back(a), ...); }, eg);
      std::apply([&](auto&... a) { (outs.push_back(a), ...); }, es);
      bits.check(outs, tag);
    }
  }
  if (before) {
    setenv("RECOGFAST_CUBS_SPATIAL_TILE", saved.c_str(), 1);
  } else {
    unsetenv("RECOGFAST_CUBS_SPATIAL_TILE");
  }
  expect_bad_env("RECOGFAST_CUBS_SPATIAL_TILE", "4",
                 "recogfast::cubs_spatial: RECOGFAST_CUBS_SPATIAL_TILE must be 0, 1, 2 or 3, got '4'", [] {
                   recogfast::emu_cubs_spatial(at::randn({1, 4, 2, 2}), at::randn({4}), at::randn({1}),
                                               at::randn({4}), at::randn({1}), at::randn({4}), at::randn({1}));
                 });
  std::printf("cubs_spatial tile variants: %d of %d variant runs bit-identical to tile0\n", bits.identical,
              bits.compared);
  std::printf("cubs_spatial launches: %d of %d calls as documented (3 a forward, 5 a saved backward)\n", launch_ok,
              launch_runs);
}
