"""Where the time of the headline calls goes: for one warmed-up forward+backward of each (the fused module
and its eager reference), torch.profiler's table (kernel or op name, calls, GPU µs, CPU µs), the kernel
launches per call, and the call's time by CUDA events (eager, back to back) and by CUDA-graph replay (no host
overhead). Gradients are set to None before every call, as in benchmarks/.

    python tools/gpu_profile.py --json OUT/profile.json > profile.txt    # on a GPU
    python tools/gpu_profile.py --device cpu --small --json p.json        # the CPU rehearsal (CPU ops only)
    python tools/gpu_profile.py --ncu-driver                              # each key kernel once, for ncu

profile.json: {"device", "cases": [{"case", "impl", "eager_ms", "graph_ms", "graph_note", "launches",
"kernels", "ops", "rows": [{"name", "calls", "gpu_us", "cpu_us", "self_cpu_us"}]}], "finite_check": [...]}
(µs are totals over the one profiled call; launches: kernel-launch API calls, kernels: GPU activities,
ops: dispatcher ops (aten::, recogfast::, nested ones counted too)).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from unittest import mock

import torch
from torch.profiler import ProfilerActivity, profile

import recogfast  # noqa: F401
from recogfast.nn import create_attention
from recogfast.ops import ms_loss

LAUNCH_APIS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchCooperativeKernel")
ROWS = 15


def _module_case(name, C, x, impl):
    m = create_attention(name, C, impl=impl).to(x.device, x.dtype)

    def reset():
        x.grad = None
        for p in m.parameters():
            p.grad = None

    gy = torch.randn_like(x)
    return (lambda: m(x).backward(gy)), reset


FLASH = {"RECOGFAST_MS_LOSS_PATH": "flash"}  # the MS loss's flash path forced (the op reads it on every call)


def _cases(device, small, impls=("fused", "reference")):
    """(case name, impl, fn, reset, env) for each headline call, env: the environment variables it runs under;
    small: the rehearsal's shapes."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shapes = {"se": (4, 64, 14) if small else (256, 64, 56), "cubs": (2, 64, 14) if small else (64, 64, 56)}
    for name in ("se", "cubs1", "cubs2", "cubs_serial12"):
        B, C, H = shapes["se" if name == "se" else "cubs"]
        x = torch.randn(B, C, H, H, device=device, dtype=dtype).to(memory_format=torch.channels_last)
        x.requires_grad_(True)
        for impl in impls:
            fn, reset = _module_case(name, C, x, impl)
            yield f"{name} fwd+bwd {str(dtype)[6:]} B={B} {H}x{H}x{C}", impl, fn, reset, {}
    # The MS loss on the path "auto" takes (the tiles path until the flash path is the default) and, on CUDA, on the
    # flash path forced ("fused-flash", as benchmarks/test_ms_loss_bench.py names it): its kernel table splits the
    # time between the forward passes and the backward (issue 26).
    for B in ((512,) if small else (16384, 4096)):
        e = torch.randn(B, 512, device=device, dtype=dtype, requires_grad=True)
        labels = (torch.arange(B, device=device) // 4)[torch.randperm(B, device=device)]

        def reset(e=e):
            e.grad = None

        for impl, env in (("fused", {}),) + ((("fused-flash", FLASH),) if device == "cuda" else ()):
            yield f"ms_loss fwd+bwd {str(dtype)[6:]} B={B} D=512", impl, (
                lambda e=e, labels=labels: ms_loss(e, labels, impl="fused").backward()), reset, env


def _ms(fn, reset, device, n=10):
    """ms per call: CUDA events around n back-to-back calls, or the wall clock on the CPU."""
    if device != "cuda":
        t0 = time.perf_counter()
        for _ in range(n):
            reset()
            fn()
        return (time.perf_counter() - t0) * 1e3 / n
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        reset()
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


def _graph_ms(fn, reset):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        reset()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    reset()
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            fn()
        return _ms(g.replay, lambda: None, "cuda")
    finally:
        del g
        reset()
        torch.cuda.synchronize()


def _profile_rows(fn, reset, device):
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    reset()
    with profile(activities=acts) as prof:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    rows, launches, kernels, ops = [], 0, 0, 0
    for e in prof.key_averages():
        gpu = getattr(e, "device_time_total", None)
        gpu = getattr(e, "cuda_time_total", 0) if gpu is None else gpu
        on_device = str(getattr(e, "device_type", "")).endswith("CUDA")  # a kernel, memcpy or memset
        if e.key in LAUNCH_APIS:
            launches += e.count
        if on_device:
            kernels += e.count
        elif "::" in e.key:  # a dispatcher op (a kernel's C++ name has "::" too: counted above)
            ops += e.count
        rows.append(dict(name=e.key, calls=e.count, gpu_us=round(float(gpu), 1), cpu_us=round(float(e.cpu_time_total), 1),
                         self_cpu_us=round(float(e.self_cpu_time_total), 1)))
    top_gpu = sorted((r for r in rows if r["gpu_us"] > 0), key=lambda r: -r["gpu_us"])[:ROWS]
    top_cpu = sorted((r for r in rows if r not in top_gpu), key=lambda r: -r["self_cpu_us"])[:ROWS - 5]
    table = prof.key_averages().table(sort_by="cuda_time_total" if device == "cuda" else "self_cpu_time_total",
                                      row_limit=ROWS, max_name_column_width=70)
    return top_gpu + top_cpu, launches, kernels, ops, table


def run(device: str, small: bool) -> dict:
    out = dict(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", cases=[])
    for case, impl, fn, reset, env in _cases(device, small):
        with mock.patch.dict(os.environ, env):  # set for the whole case, not inside the timed calls
            for _ in range(3):
                reset()
                fn()
            rec = dict(case=case, impl=impl, eager_ms=_ms(fn, reset, device), graph_ms=None, graph_note="")
            if device == "cuda":
                try:
                    rec["graph_ms"] = _graph_ms(fn, reset)
                except Exception as exc:  # noqa: BLE001  (a report, not a test: say why and go on)
                    rec["graph_note"] = f"capture failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            else:
                rec["graph_note"] = "CPU: no CUDA graphs"
            rec["rows"], rec["launches"], rec["kernels"], rec["ops"], table = _profile_rows(fn, reset, device)
            out["cases"].append(rec)
            graph = "-" if rec["graph_ms"] is None else f"{rec['graph_ms']:.3f}"
            print(f"\n=== {case} [{impl}]: eager {rec['eager_ms']:.3f} ms a call, CUDA-graph replay {graph} ms, "
                  f"{rec['launches']} launches, {rec['kernels']} GPU activities, {rec['ops']} dispatcher ops a fwd+bwd "
                  f"{rec['graph_note']}")
            print(table)
    return out


def check_finite_cost() -> list[str]:
    """What RECOGFAST_CHECK_FINITE=1 (one isfinite reduction and a device-to-host sync a call) costs."""
    lines = []
    for B in (4096, 16384):
        e = torch.randn(B, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        labels = (torch.arange(B, device="cuda") // 4)[torch.randperm(B, device="cuda")]

        def step():
            ms_loss(e, labels, impl="fused").backward()

        def reset():
            e.grad = None

        times = {}
        for flag in ("0", "1", "0"):
            os.environ["RECOGFAST_CHECK_FINITE"] = flag
            for _ in range(3):
                step()
            times[flag] = _ms(step, reset, "cuda", 20)
        os.environ.pop("RECOGFAST_CHECK_FINITE")
        lines.append(f"ms_loss bf16 B={B} fwd+bwd: {times['0']:.3f} ms without the check, {times['1']:.3f} ms with "
                     f"RECOGFAST_CHECK_FINITE=1")
        print(lines[-1])
    return lines


def ncu_driver(device: str) -> None:
    """One fused forward+backward of each key call, no warm-up: ncu (--kernel-name, --launch-count) profiles the
    first launch of each kernel at a headline shape (B smaller: ncu replays each kernel many times). The flash MS
    loss first (issue 26: bf16, then fp32 without TF32, the 3xTF32 products), forced onto the flash path, at
    B = 8192 D = 512 (labels in groups of 4, as the benchmarks'), then Block 2, SE and Block 1 at 64 x 64 x 56 x 56:
    the launch count cuts the end."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    nb = 8192 if device == "cuda" else 64
    labels = (torch.arange(nb, device=device) // 4)[torch.randperm(nb, device=device)]
    dtypes = list(dict.fromkeys((dtype, torch.float32)))  # fp32: torch's default, no TF32 for matmuls
    with mock.patch.dict(os.environ, FLASH if device == "cuda" else {}):
        for dt in dtypes:
            ms_loss(torch.randn(nb, 512, device=device, dtype=dt, requires_grad=True), labels, impl="fused").backward()
    B = 64 if device == "cuda" else 2
    x = torch.randn(B, 64, 56, 56, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    for name in ("cubs2", "se", "cubs1"):  # Block 2's passes first
        fn, reset = _module_case(name, 64, x, "fused")
        reset()
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    ms = ("flash, " if device == "cuda" else "") + ", ".join(str(d)[6:] for d in dtypes)
    print(f"ncu driver: ms_loss ({ms}) at B={nb} D=512, then cubs2, se, cubs1 fused fwd+bwd once each at "
          f"{tuple(x.shape)} {str(dtype)[6:]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="small shapes (the CPU rehearsal)")
    ap.add_argument("--json", help="write the structured results here")
    ap.add_argument("--ncu-driver", action="store_true", help="run each key kernel once (for ncu) and exit")
    args = ap.parse_args(argv)
    if args.ncu_driver:
        ncu_driver(args.device)
        return 0
    out = dict(finite_check=check_finite_cost() if args.device == "cuda" else [])
    out.update(run(args.device, args.small))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
