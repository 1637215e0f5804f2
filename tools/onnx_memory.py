"""Peak memory of ONNX Runtime (CPU) running CUBS Block 2 at 56×56: the exported fused module (row-block
Loop) against the exported reference (which builds the [B, HW, HW] matrix).

    PYTHONPATH=. python tools/onnx_memory.py [--batch 8] [--channels 64] [--size 56]

Each file is run in a fresh process; the figure is the growth of its peak resident set (ru_maxrss)
over a first run at batch 1 (session, arena and code already in place): the memory that the
batch's other B - 1 samples add (VmHWM, Linux)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_MEASURE = """
import sys, time, numpy as np, onnxruntime as ort
def peak_kib():  # VmHWM: this process's peak resident set (ru_maxrss would carry the parent's over exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
path, batch, channels, size = sys.argv[1], *map(int, sys.argv[2:5])
s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((batch, channels, size, size), dtype=np.float32)
s.run(None, {"images": x[:1]})
before = peak_kib()
t = time.perf_counter()
s.run(None, {"images": x})
print(peak_kib() - before, time.perf_counter() - t)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--size", type=int, default=56)
    args = ap.parse_args()
    import torch

    from recogfast.export import to_onnx
    from recogfast.nn import CUBSBlock2

    result = {"batch": args.batch, "channels": args.channels, "size": args.size,
              "hw_matrix_mib_per_image": (args.size ** 4) * 4 / 2**20}
    with tempfile.TemporaryDirectory() as tmp:
        for impl in ("fused", "reference"):
            torch.manual_seed(0)
            block = CUBSBlock2(args.channels, impl="auto" if impl == "fused" else "reference")
            path = os.path.join(tmp, f"{impl}.onnx")
            to_onnx(block, torch.randn(2, args.channels, args.size, args.size), path)
            out = subprocess.run([sys.executable, "-c", _MEASURE, path, str(args.batch), str(args.channels),
                                  str(args.size)], capture_output=True, text=True, check=True).stdout.split()
            result[f"{impl}_peak_growth_mib"] = round(int(out[0]) / 1024, 1)
            result[f"{impl}_mib_per_image"] = round(int(out[0]) / 1024 / max(1, args.batch - 1), 1)
            result[f"{impl}_run_s"] = round(float(out[1]), 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
