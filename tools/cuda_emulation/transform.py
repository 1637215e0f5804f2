"""Rewrites a CUDA source or header of csrc/ops/cuda into host C++ for the emulation in emu.h:
kernel<<<grid, block, smem, stream>>>(args) -> emu_launch(kernel, emu_cfg(grid, block, smem, stream), args),
dynamic shared memory -> one host buffer, the CUDA runtime include and the STABLE_TORCH_LIBRARY_IMPL block dropped,
includes of other csrc/ops/cuda headers pointed at their rewritten copies (NAME.cuh -> NAME_emu.h), and,
for a kernel file, its anonymous namespace renamed (argv[3]) so that the launchers can be called from main.cpp.

    python transform.py in.cu out.cpp namespace_name
    python transform.py in.cuh out_emu.h
"""
import re
import sys

src = open(sys.argv[1]).read()
src = re.sub(r"#include <(c10/cuda/[^>]+|cuda_runtime.h)>\n", "", src)
src = re.sub(r'#include "ops/cuda/(\w+)\.cuh"', r'#include "\1_emu.h"', src)
src = src.replace("extern __shared__ __align__(16) unsigned char smem_raw[];", "unsigned char* smem_raw = emu_dynamic_smem();")
src = re.sub(r"([A-Za-z_][\w:]*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\(",
             lambda m: f"emu_launch({m.group(1)}, emu_cfg({m.group(2)}), ", src, flags=re.S)
src, n = re.subn(r"STABLE_TORCH_LIBRARY_IMPL\(recogfast, CUDA, m\) \{.*?\n\}\n", "", src, flags=re.S)
if n == 0 and sys.argv[1].endswith(".cu"):
    sys.exit(f"transform.py: no STABLE_TORCH_LIBRARY_IMPL block to drop in {sys.argv[1]}")
src = src.replace("x_.is_cuda()", "true")
if len(sys.argv) > 3:
    # The kernel file's first anonymous namespace (the one inside `namespace recogfast {`).
    src, n = re.subn(r"^namespace \{\n", "namespace " + sys.argv[3] + " {\n", src, count=1, flags=re.M)
    if n != 1:
        sys.exit(f"transform.py: no anonymous namespace to rename in {sys.argv[1]}")
open(sys.argv[2], "w").write('#include "emu.h"\n' + src)
