#!/bin/bash
# Runs the SE, CUBS and MS-loss CUDA kernels (csrc/ops/cuda/{se_gate,cubs_*,ms_loss}_kernel.cu) on the host under emu.h -- one std::thread
# per CUDA thread, blocks in sequence, barriers for __syncthreads and warp shuffles -- and compares every
# output and gradient with the CPU kernels, over dtypes (SE and CUBS also mixed: fp32 weights with bf16 / fp16 x),
# NCHW/NHWC and odd shapes. It checks the
# kernels' indexing, tiling, shared-memory and launch logic on a machine without a GPU; it does not
# check timing, races the emulation serialises, or the fast-math ex2.approx (std::exp2 runs instead).
# MS loss: its cuBLAS products run through at::mm on the CPU (bf16/fp16 operands as fp32 copies: the same
# exact products and fp32 accumulation as aten::mm.dtype_out), with a tile budget of a few rows so that small
# inputs span several tiles. `run.sh ms` runs only the MS-loss section; `run.sh se` only the fused SE kernels
# (RECOGFAST_SE_VARIANT=fused, se_gate_fused.cuh) and the split path's NCHW pool alone (pool.h: every vector layout,
# the scalar fallback), which the full run also checks. The flash MS-loss path (ms_loss_flash.cuh)
# runs its tensor-core tiles with emu.h's warp-wide mma emulation (the PTX fragment layouts, exact products, fp32
# accumulation) at small tile shapes (ms_loss_flash_host.cuh) and a 2 KB backward G budget (several waves);
# EMU_NO_FLASH=1 skips it; EMU_DIGEST=1 prints a hash of every MS-loss output it compares (two builds' runs
# diffed: the same bits or not); EMU_MMA_RZ=1 rounds each emulated mma's fp32 sum toward zero, as tensor cores are
# reported to (Fasi et al., PeerJ CS 2021), to see what that does to the errors (fp32 3xTF32's accuracy rule). The CUBS kernel variants (cubs_tiles.h: Block 2's RECOGFAST_CUBS_SPATIAL_TILE = 0-3,
# cubs_spatial_passes.cuh; Block 1's RECOGFAST_CUBS_CHANNEL_THREADS = 256, 128, 512): each against the CPU kernel and
# bit for bit against the default, plus the bad-value messages, and the tuned table's reader (tuned_check.cpp);
# `run.sh tiles` runs only that section. The other
# sections run the variants the environment names (default: the defaults).
# fp32 accuracy (main.cpp run_accuracy): each emulated CUBS fp32 output's error against the float64 CPU kernel
# must stay within 2x the fp32 CPU kernel's (tools/gpu_crosscheck.py's rule) -- in every run, on the crosscheck's
# 14x14 channel and 28x28 spatial shapes among others (Block 2 through its training forward and the backward from
# the saved statistics, plus tests/test_cubs.py's seeded 4x64x7x7 cases); `run.sh acc` runs only that section, `run.sh acc full`
# adds the 56x56 spatial shape.
# Needs the CMake library: `make cpp-test` (build/cmake/librecogfast.so). On the shared 2-core machine: `se` ~2-5 min, `ms` ~8-10, the full run ~15-30.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
T=$($PY -c 'import torch, os; print(os.path.dirname(torch.__file__))')
OUT=$ROOT/build/cuda_emulation
mkdir -p "$OUT"
for h in common channel_gate sample_stage se_gate_fused cubs_common cubs_channel_head cubs_channel_fused ms_loss_rows ms_loss_mma ms_loss_flash_tile ms_loss_flash ms_loss_flash_gsmem ms_loss_flash_onepass ms_loss_flash_host cubs_spatial_passes cubs_spatial_pixels; do
  $PY transform.py "$ROOT/csrc/ops/cuda/$h.cuh" "$OUT/${h}_emu.h"
done
$PY transform.py "$ROOT/csrc/ops/cuda/se_gate_kernel.cu" "$OUT/se_emu.cpp" emu_se
$PY transform.py "$ROOT/csrc/ops/cuda/cubs_spatial_kernel.cu" "$OUT/sp_emu.cpp" emu_sp
$PY transform.py "$ROOT/csrc/ops/cuda/cubs_channel_kernel.cu" "$OUT/ch_emu.cpp" emu_ch
$PY transform.py "$ROOT/csrc/ops/cuda/ms_loss_kernel.cu" "$OUT/ms_emu.cpp" emu_ms
for f in ms_emu sp_emu ch_emu se_emu; do sed -i '1a #include "bridge.h"' "$OUT/$f.cpp"; done
cat >> "$OUT/ms_emu.cpp" <<'CPP'
namespace recogfast {
using namespace recogfast_emu;
// The op's allow_tf32 argument: EMU_ALLOW_TF32=0 passes false (main.cpp checks the fp32 rule both ways).
static bool tf32_ok() { const char* v = getenv("EMU_ALLOW_TF32"); return !(v && std::string(v) == "0"); }
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> emu_ms_loss(
    const at::Tensor& e, const at::Tensor& l, const std::optional<at::Tensor>& r, const std::optional<at::Tensor>& rl,
    double alpha, double beta, double base, double eps, std::string_view mining) {
  // allow_tf32 = true: fp32 may take the flash path (TF32) when RECOGFAST_MS_LOSS_PATH asks for it
  return A(emu_ms::ms_loss_cuda(S(e), S(l), S(r), S(rl), alpha, beta, base, eps, mining, false, tf32_ok()));
}
std::tuple<at::Tensor, at::Tensor> emu_ms_loss_backward(
    const at::Tensor& g, const at::Tensor& e, const at::Tensor& l, const std::optional<at::Tensor>& r,
    const std::optional<at::Tensor>& rl, const at::Tensor& stats, const at::Tensor& hard_idx, double alpha,
    double beta, double base, double eps, std::string_view mining, bool ref_grad) {
  return A(emu_ms::ms_loss_backward_cuda(S(g), S(e), S(l), S(r), S(rl), S(stats), S(hard_idx),
                                         S(at::zeros({0}, stats.options())), alpha, beta, base, eps, mining, ref_grad,
                                         tf32_ok()));
}
int emu_ms_gsmem_backwards() { return emu_gsmem_backwards; }
int emu_ms_one_pass_forwards() { return emu_one_pass_forwards; }
int emu_ms_zero_w_skips() { return emu_zero_w_skips.load(); }
}  // namespace recogfast
CPP
cat >> "$OUT/sp_emu.cpp" <<'CPP'
namespace recogfast {
using namespace recogfast_emu;
at::Tensor emu_cubs_spatial(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                            const at::Tensor& d, const at::Tensor& e, const at::Tensor& f) {
  return A(emu_sp::cubs_spatial_cuda(S(x), S(a), S(b), S(c), S(d), S(e), S(f)));
}
recogfast_aten::T7 emu_cubs_spatial_backward(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& a,
                                            const at::Tensor& b, const at::Tensor& c, const at::Tensor& d,
                                            const at::Tensor& e, const at::Tensor& f) {
  return A(emu_sp::cubs_spatial_backward_cuda(S(gy), S(x), S(a), S(b), S(c), S(d), S(e), S(f)));
}
std::tuple<at::Tensor, at::Tensor> emu_cubs_spatial_forward_train(const at::Tensor& x, const at::Tensor& a,
                                                                   const at::Tensor& b, const at::Tensor& c,
                                                                   const at::Tensor& d, const at::Tensor& e,
                                                                   const at::Tensor& f) {
  return A(emu_sp::cubs_spatial_forward_train_cuda(S(x), S(a), S(b), S(c), S(d), S(e), S(f)));
}
recogfast_aten::T7 emu_cubs_spatial_backward_saved(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& st,
                                                  const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                                                  const at::Tensor& d, const at::Tensor& e, const at::Tensor& f) {
  return A(emu_sp::cubs_spatial_backward_saved_cuda(S(gy), S(x), S(st), S(a), S(b), S(c), S(d), S(e), S(f)));
}
int emu_launches() { return emu_launch_count; }
}  // namespace recogfast
CPP
cat >> "$OUT/ch_emu.cpp" <<'CPP'
namespace recogfast {
using namespace recogfast_emu;
at::Tensor emu_cubs_channel(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                            const at::Tensor& d, const at::Tensor& e, const at::Tensor& f, const at::Tensor& g,
                            const at::Tensor& h) {
  return A(emu_ch::cubs_channel_cuda(S(x), S(a), S(b), S(c), S(d), S(e), S(f), S(g), S(h)));
}
recogfast_aten::T9 emu_cubs_channel_backward(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& a,
                                            const at::Tensor& b, const at::Tensor& c, const at::Tensor& d,
                                            const at::Tensor& e, const at::Tensor& f, const at::Tensor& g,
                                            const at::Tensor& h) {
  return A(emu_ch::cubs_channel_backward_cuda(S(gy), S(x), S(a), S(b), S(c), S(d), S(e), S(f), S(g), S(h)));
}
int emu_channel_fused_launches() { return cubs_channel_fused::emu_launches; }
int emu_channel_fused_clusters() { return cubs_channel_fused::emu_clusters; }
}  // namespace recogfast
CPP
cat >> "$OUT/se_emu.cpp" <<'CPP'
namespace recogfast {
using namespace recogfast_emu;
at::Tensor emu_se_gate(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                       const at::Tensor& d) {
  return A(emu_se::se_gate_cuda(S(x), S(a), S(b), S(c), S(d)));
}
recogfast_aten::T5 emu_se_gate_backward(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& a,
                                        const at::Tensor& b, const at::Tensor& c, const at::Tensor& d) {
  return A(emu_se::se_gate_backward_cuda(S(gy), S(x), S(a), S(b), S(c), S(d)));
}
int emu_se_fused_launches() { return se_fused::emu_launches; }
int emu_se_fused_clusters() { return se_fused::emu_clusters; }
int emu_last_cluster() { return sample_stage::emu_last_cluster; }
// channel_gate.cuh's NCHW pool alone (launch_pool) on x [rows, HW], with gy (defined) its backward form: px, pgx
// ([rows + 4] of acc_t, NaN where not written: the 4 past the end must stay so).
template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> emu_pool_as(const at::Tensor& x, const at::Tensor& gy) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t rows = x.size(0), HW = x.size(1);
  const auto o = x.options().dtype(std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat);
  at::Tensor px = at::full({rows + 4}, NAN, o), pgx = at::full({rows + 4}, NAN, o);
  const auto* xp = static_cast<const scalar_t*>(x.const_data_ptr());
  if (gy.defined())
    channel_gate::launch_pool<scalar_t, acc_t, true>(xp, static_cast<const scalar_t*>(gy.const_data_ptr()),
                                                     px.data_ptr<acc_t>(), pgx.data_ptr<acc_t>(), rows, 1, HW, false,
                                                     1, HW, nullptr);
  else
    channel_gate::launch_pool<scalar_t, acc_t, false>(xp, nullptr, px.data_ptr<acc_t>(), nullptr, rows, 1, HW, false,
                                                      1, HW, nullptr);
  return {px, pgx};
}
std::tuple<at::Tensor, at::Tensor> emu_gate_pool(const at::Tensor& x, const at::Tensor& gy) {
  switch (x.scalar_type()) {
    case at::kDouble: return emu_pool_as<double>(x, gy);
    case at::kFloat: return emu_pool_as<float>(x, gy);
    case at::kBFloat16: return emu_pool_as<BFloat16>(x, gy);
    default: return emu_pool_as<Half>(x, gy);
  }
}
int emu_pool_vec_launches() { return channel_gate::emu_pool_vec_launches; }
int emu_pool_rows(int64_t HW, int V) { return channel_gate::nchw_pool_rows(HW, V); }
}  // namespace recogfast
CPP
# EMU_SERIAL=1 compiles one file at a time (a shared 2-core machine), else the four kernel files in parallel.
bg() { if [ -n "${EMU_SERIAL:-}" ]; then "$@"; else "$@" & fi; }
FL="-std=c++20 -O1 -Wno-attributes -DRECOGFAST_CUDA_EMULATION -I$ROOT/csrc -I$PWD -I$OUT -I$T/include -I$T/include/torch/csrc/api/include"
bg g++ $FL -c "$OUT/sp_emu.cpp" -o "$OUT/sp.o"
bg g++ $FL -c "$OUT/ch_emu.cpp" -o "$OUT/ch.o"
bg g++ $FL -c "$OUT/se_emu.cpp" -o "$OUT/se.o"
# A 1 KB S tile (at least 3 rows) and 64-thread blocks: several tiles and warps out of a few dozen rows.
bg g++ $FL -DRECOGFAST_MS_LOSS_EMULATION -DRECOGFAST_MS_LOSS_TILE_BYTES=1024 -DRECOGFAST_MS_LOSS_MIN_TILE_ROWS=3 \
  -DRECOGFAST_MS_LOSS_ROW_THREADS=64 -DRECOGFAST_MS_LOSS_THREADS=64 -DRECOGFAST_MS_FLASH_G_BYTES=2048 -DRECOGFAST_MS_FLASH_ONE_PASS_MIN_PAIRS=0 \
  -DRECOGFAST_MS_FLASH_ONE_PASS_DIV=30 -c "$OUT/ms_emu.cpp" -o "$OUT/ms.o"
g++ $FL -c main.cpp -o "$OUT/main.o"
g++ $FL -c tuned_check.cpp -o "$OUT/tuned.o"
wait
g++ "$OUT/main.o" "$OUT/tuned.o" "$OUT/sp.o" "$OUT/ch.o" "$OUT/se.o" "$OUT/ms.o" -o "$OUT/emu_test" -Wl,--no-as-needed -L"$ROOT/build/cmake" -lrecogfast -L"$T/lib" -ltorch \
  -ltorch_cpu -lc10 -Wl,-rpath,"$T/lib" -Wl,-rpath,"$ROOT/build/cmake" -Wl,--no-as-needed -lpthread
"$OUT/emu_test" "$@"
