"""Registers, stack frame and static shared memory of every CUDA kernel in the built extension, read from its sm_90
cubins (`cuobjdump -res-usage`, seconds, no GPU and no recompilation), with each kernel's stack frame checked
against its budget.

    python tools/kernel_resources.py                       # the table (recogfast/_C*.so)
    python tools/kernel_resources.py --filter ms_flash     # kernels whose short name matches a regex
    python tools/kernel_resources.py --check               # exit 1 where a kernel's stack frame exceeds STACK_BUDGET

A kernel's stack frame holds its register spills and its local arrays (ptxas -v tells them apart; cuobjdump does
not): a kernel not named in STACK_BUDGET may have none, so a change that makes a kernel spill fails
tests/test_kernel_resources.py in CI, on a machine without a GPU, instead of costing time on the next GPU run
unseen. Raising a budget is a decision: say why beside it.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_ncu import short_kernel_name  # noqa: E402  (tools/: beside this file)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (regex on the short kernel name, most stack bytes, why). Checked with `ptxas -v` (nvcc 13.0, sm_90) when set.
STACK_BUDGET = [
    (r"^cubs_channel_fused::cubs_channel_fused_kernel<", 64, "local arrays of the head's sums, no spills"),
    (r"^cubs_channel_head_kernel<", 64, "local arrays of the head's sums, no spills"),
    (r"^cubs_channel_weight_grad_kernel<", 48, "local arrays of the weight-gradient sums, no spills"),
    (r"^cubs_spatial_wgrad_reduce<", 48, "local arrays of the weight-gradient sums, no spills"),
    (r"^ms_flash_bwd_gsmem_kernel<.*\(MmaKind\)3, float>$", 8,
     "3xTF32 backward at 255 registers: 8 bytes spilled, 8 reloaded (RESULTS.md, 3xTF32)"),
    (r"^ms_flash_bwd_kernel<.*\(MmaKind\)3, float>$", 8,
     "3xTF32 register backward, the fallback for D > 608 only: 8 bytes spilled, 256 reloaded"),
    (r"^ms_flash_fwd_kernel<FlashTile<64, 64, 32, 8, true, 1>, \(MmaKind\)2, float, 2>$", 8,
     "TF32 forward pass 2 of variants 3 and 4: one 4-byte spill before the column loop, reloaded after it"),
    (r"^ms_loss_rows_kernel<double>$", 24, "fp64 tiles path (no tensor cores): 28 bytes spilled"),
]


def find_cuobjdump() -> str | None:
    """The CUDA toolkit's cuobjdump, else one on PATH, else the copy triton (a torch dependency) ships."""
    for cand in (os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump"),
                 shutil.which("cuobjdump") or ""):
        if cand and os.access(cand, os.X_OK):
            return cand
    try:
        import triton

        cand = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        return cand if os.access(cand, os.X_OK) else None
    except ImportError:
        return None


def _demangle(names: list[str]) -> list[str]:
    filt = shutil.which("c++filt")
    if not filt or not names:
        return names
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def parse(text: str) -> list[dict]:
    """`cuobjdump -res-usage` output: one record per kernel and cubin (name, short, arch, reg, stack, shared)."""
    recs, arch = [], ""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*arch = (\S+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function (\S+):\s*$", line)
        if m and i + 1 < len(lines):
            r = dict(re.findall(r"(REG|STACK|SHARED):(\d+)", lines[i + 1]))
            if "REG" in r:
                recs.append(dict(name=m.group(1), arch=arch, reg=int(r["REG"]), stack=int(r.get("STACK", 0)),
                                 shared=int(r.get("SHARED", 0))))
    for rec, d in zip(recs, _demangle([r["name"] for r in recs])):
        rec["short"] = short_kernel_name(d, 400)
    return recs


def budget_of(short: str) -> tuple[int, str]:
    for pattern, most, why in STACK_BUDGET:
        if re.search(pattern, short):
            return most, why
    return 0, "no stack frame allowed: a spill or a local array here is new"


def over_budget(recs: list[dict]) -> list[str]:
    """One line per kernel whose stack frame exceeds its budget."""
    out = []
    for r in recs:
        most, why = budget_of(r["short"])
        if r["stack"] > most:
            out.append(f"{r['short']} ({r['arch']}): {r['stack']} bytes of stack frame, budget {most} ({why}); "
                       f"{r['reg']} registers")
    return out


def read(lib: str, cuobjdump: str) -> list[dict]:
    run = subprocess.run([cuobjdump, "-res-usage", lib], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{cuobjdump} -res-usage {lib} failed: {run.stderr.strip()[:300]}")
    return parse(run.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    libs = sorted(glob.glob(os.path.join(ROOT, "recogfast", "_C*.so")))
    ap.add_argument("lib", nargs="?", default=libs[0] if libs else None, help="the built extension")
    ap.add_argument("--filter", default="", help="regex on the short kernel name")
    ap.add_argument("--check", action="store_true", help="exit 1 where a stack frame exceeds its budget")
    args = ap.parse_args(argv)
    tool = find_cuobjdump()
    if not args.lib or not tool:
        print("kernel_resources: " + ("no built extension (recogfast/_C*.so)" if not args.lib else "no cuobjdump found"),
              file=sys.stderr)
        return 2
    recs = read(args.lib, tool)
    if not recs:
        print(f"kernel_resources: {os.path.basename(args.lib)} holds no CUDA kernels (a CPU-only build)", file=sys.stderr)
        return 2
    for r in sorted(recs, key=lambda r: r["short"]) if args.filter or not args.check else []:
        if re.search(args.filter, r["short"]):
            print(f"{r['arch']:6} REG {r['reg']:3}  STACK {r['stack']:3}  SHARED {r['shared']:6}  {r['short']}")
    if args.check:
        bad = over_budget(recs)
        print("\n".join(bad) if bad else f"kernel_resources: {len(recs)} kernels within their stack budgets")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
