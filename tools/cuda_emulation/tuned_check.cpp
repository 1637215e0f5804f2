// The tuned table's reader (csrc/ops/cuda/common.cuh as common_emu.h: tuned_in, tuned_value, choice_of), which picks
// a kernel variant where its environment variable is unset: the lookup by knob, compute capability and dtype; the
// variable over the table's value over the built-in default; a bad value from the table is one line that names the
// table; the committed table (csrc/ops/cuda/tuned_table.h) gives only values its knobs allow. main.cpp runs it in
// the `tiles` section and the full run.
#include <cstdio>
#include <string>

#include "common_emu.h"

namespace recogfast {
namespace {
int failures = 0;
void check(bool ok, const std::string& what) {
  if (!ok) ++failures;
  std::printf("%s tuned table: %s\n", ok ? "ok  " : "FAIL", what.c_str());
}
bool same(const char* a, const char* b) { return a == b || (a && b && std::string(a) == b); }
}  // namespace

int emu_tuned_table_check() {
  using gpu::TunedEntry;
  const TunedEntry t[] = {{"cubs_spatial_tile", 90, kBFloat16, "2"},
                          {"cubs_spatial_tile", 80, kBFloat16, "1"},
                          {"ms_loss_path", 90, kHalf, "flash"},
                          {nullptr, 0, kFloat, nullptr}};
  check(same(gpu::tuned_in(t, "cubs_spatial_tile", 90, kBFloat16), "2"), "lookup by capability (9.0)");
  check(same(gpu::tuned_in(t, "cubs_spatial_tile", 80, kBFloat16), "1"), "lookup by capability (8.0)");
  check(gpu::tuned_in(t, "cubs_spatial_tile", 90, kHalf) == nullptr, "another dtype: no entry");
  check(gpu::tuned_in(t, "cubs_spatial_tile", 100, kBFloat16) == nullptr, "another device: no entry");
  check(gpu::tuned_in(t, "cubs_channel_threads", 90, kBFloat16) == nullptr, "another knob: no entry");
  check(same(gpu::tuned_in(t, "ms_loss_path", 90, kHalf), "flash"), "a path knob");
  const auto tiles = {"0", "1", "2", "3"};
  const char* v = "RECOGFAST_CUBS_SPATIAL_TILE";
  check(gpu::choice_of("op", v, "", tiles, 0, "2") == 2, "unset variable: the table's value");
  check(gpu::choice_of("op", v, "3", tiles, 0, "2") == 3, "the variable over the table");
  check(gpu::choice_of("op", v, "", tiles, 0, nullptr) == 0, "no entry: the default");
  check(gpu::choice_of("op", "T", "", {"128", "256", "512"}, 1, nullptr) == 1, "no entry: a default other than first");
  try {
    gpu::choice_of("recogfast::cubs_spatial", v, "", tiles, 0, "7");
    check(false, "a bad table value was accepted");
  } catch (const std::exception& e) {
    const std::string m = e.what();
    check(m.find('\n') == std::string::npos && m.find("got '7' from the tuned table") != std::string::npos,
          "a bad table value: " + m);
  }
  for (const TunedEntry* e = gpu::kTuned; e->knob; ++e) {  // the committed table: its values allowed
    const std::string k = e->knob, val = e->value;
    const bool ok = k == "cubs_spatial_tile"                          ? val.size() == 1 && val[0] >= '0' && val[0] <= '3'
                    : k == "ms_flash_tile"                            ? val.size() == 1 && val[0] >= '0' && val[0] <= '5'
                    : k == "cubs_channel_threads"                     ? val == "128" || val == "256" || val == "512"
                    : k == "ms_loss_path"                             ? val == "flash" || val == "tiles"
                                                                      : false;
    check(ok, "committed entry " + k + " = " + val);
  }
  return failures;
}
}  // namespace recogfast
