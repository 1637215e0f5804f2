#!/bin/bash
# Runs the SE and CUBS CUDA kernels (csrc/ops/cuda/{se_gate,cubs_*}_kernel.cu) on the host under emu.h -- one std::thread
# per CUDA thread, blocks in sequence, barriers for __syncthreads and warp shuffles -- and compares every
# output and gradient with the CPU kernels, over dtypes, NCHW/NHWC and odd shapes. It checks the
# kernels' indexing, tiling, shared-memory and launch logic on a machine without a GPU; it does not
# check timing, races the emulation serialises, or the fast-math ex2.approx (std::exp2 runs instead).
# Needs the CMake library: `make cpp-test` (build/cmake/librecogfast.so). Takes about two minutes.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
T=$($PY -c 'import torch, os; print(os.path.dirname(torch.__file__))')
OUT=$ROOT/build/cuda_emulation
mkdir -p "$OUT"
for h in common channel_gate cubs_common; do
  $PY transform.py "$ROOT/csrc/ops/cuda/$h.cuh" "$OUT/${h}_emu.h"
done
$PY transform.py "$ROOT/csrc/ops/cuda/se_gate_kernel.cu" "$OUT/se_emu.cpp" emu_se
$PY transform.py "$ROOT/csrc/ops/cuda/cubs_spatial_kernel.cu" "$OUT/sp_emu.cpp" emu_sp
$PY transform.py "$ROOT/csrc/ops/cuda/cubs_channel_kernel.cu" "$OUT/ch_emu.cpp" emu_ch
cat >> "$OUT/sp_emu.cpp" <<'CPP'
namespace recogfast {
at::Tensor emu_cubs_spatial(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                            const at::Tensor& d, const at::Tensor& e, const at::Tensor& f) {
  return emu_sp::cubs_spatial_cuda(x, a, b, c, d, e, f);
}
CubsSpatialGrads emu_cubs_spatial_backward(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& a,
                                           const at::Tensor& b, const at::Tensor& c, const at::Tensor& d,
                                           const at::Tensor& e, const at::Tensor& f) {
  return emu_sp::cubs_spatial_backward_cuda(gy, x, a, b, c, d, e, f);
}
}  // namespace recogfast
CPP
cat >> "$OUT/ch_emu.cpp" <<'CPP'
namespace recogfast {
at::Tensor emu_cubs_channel(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                            const at::Tensor& d, const at::Tensor& e, const at::Tensor& f, const at::Tensor& g,
                            const at::Tensor& h) {
  return emu_ch::cubs_channel_cuda(x, a, b, c, d, e, f, g, h);
}
CubsChannelGrads emu_cubs_channel_backward(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& a,
                                           const at::Tensor& b, const at::Tensor& c, const at::Tensor& d,
                                           const at::Tensor& e, const at::Tensor& f, const at::Tensor& g,
                                           const at::Tensor& h) {
  return emu_ch::cubs_channel_backward_cuda(gy, x, a, b, c, d, e, f, g, h);
}
}  // namespace recogfast
CPP
cat >> "$OUT/se_emu.cpp" <<'CPP'
namespace recogfast {
at::Tensor emu_se_gate(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                       const at::Tensor& d) {
  return emu_se::se_gate_cuda(x, a, b, c, d);
}
detail::SEGateGrads emu_se_gate_backward(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& a,
                                         const at::Tensor& b, const at::Tensor& c, const at::Tensor& d) {
  return emu_se::se_gate_backward_cuda(gy, x, a, b, c, d);
}
}  // namespace recogfast
CPP
FL="-std=c++20 -O1 -I$ROOT/csrc -I$PWD -I$OUT -I$T/include -I$T/include/torch/csrc/api/include"
g++ $FL -c "$OUT/sp_emu.cpp" -o "$OUT/sp.o" &
g++ $FL -c "$OUT/ch_emu.cpp" -o "$OUT/ch.o" &
g++ $FL -c "$OUT/se_emu.cpp" -o "$OUT/se.o" &
g++ $FL -c main.cpp -o "$OUT/main.o"
wait
g++ "$OUT/main.o" "$OUT/sp.o" "$OUT/ch.o" "$OUT/se.o" -o "$OUT/emu_test" -L"$ROOT/build/cmake" -lrecogfast -L"$T/lib" -ltorch \
  -ltorch_cpu -lc10 -Wl,-rpath,"$T/lib" -Wl,-rpath,"$ROOT/build/cmake" -Wl,--no-as-needed -lpthread
"$OUT/emu_test"
