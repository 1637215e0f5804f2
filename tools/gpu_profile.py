"""Where the GPU time of the headline calls goes: torch.profiler's per-kernel table for one warmed-up
forward+backward of each, and the same call's time replayed from a CUDA graph (no host overhead) beside
its eager time (with host overhead: Python, autograd, dispatcher, launches).

    python tools/gpu_profile.py > profile.txt
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

import recogfast  # noqa: F401
from recogfast.nn import create_attention
from recogfast.ops import ms_loss


def _cases():
    dev = "cuda"
    x = torch.randn(256, 64, 56, 56, device=dev, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    se = create_attention("se", 64, impl="fused").to(dev, torch.bfloat16)
    yield "se fwd+bwd bf16 B=256 56x56x64", lambda: se(x).backward(torch.ones_like(x))
    x2 = torch.randn(64, 64, 56, 56, device=dev, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    x2.requires_grad_(True)
    for name in ("cubs1", "cubs2"):
        m = create_attention(name, 64, impl="fused").to(dev, torch.bfloat16)
        yield f"{name} fwd+bwd bf16 B=64 56x56x64", lambda m=m: m(x2).backward(torch.ones_like(x2))
    for B, dtype in ((16384, torch.bfloat16), (4096, torch.bfloat16)):
        e = torch.randn(B, 512, device=dev, dtype=dtype, requires_grad=True)
        labels = (torch.arange(B, device=dev) // 4)[torch.randperm(B, device=dev)]
        yield f"ms_loss fwd+bwd {str(dtype)[6:]} B={B} D=512", lambda e=e, labels=labels: ms_loss(
            e, labels, impl="fused").backward()


def _ms(fn, n=10):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


def main() -> None:
    for name, fn in _cases():
        for _ in range(3):
            fn()
        eager = _ms(fn)
        graphed = None
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                fn()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            graphed = _ms(g.replay)
        except Exception as exc:  # noqa: BLE001  (a report, not a test: say why and go on)
            print(f"{name}: CUDA graph capture failed: {type(exc).__name__}: {str(exc)[:200]}")
        print(f"\n=== {name}: eager {eager:.3f} ms a call, CUDA-graph replay "
              f"{'-' if graphed is None else f'{graphed:.3f}'} ms")
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70))


def check_finite_cost() -> None:
    """What RECOGFAST_CHECK_FINITE=1 (one isfinite reduction and a device-to-host sync a call) costs."""
    import os

    for B in (4096, 16384):
        e = torch.randn(B, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        labels = (torch.arange(B, device="cuda") // 4)[torch.randperm(B, device="cuda")]

        def step():
            ms_loss(e, labels, impl="fused").backward()

        times = {}
        for flag in ("0", "1", "0"):
            os.environ["RECOGFAST_CHECK_FINITE"] = flag
            for _ in range(3):
                step()
            times[flag] = _ms(step, 20)
        os.environ.pop("RECOGFAST_CHECK_FINITE")
        print(f"ms_loss bf16 B={B} fwd+bwd: {times['0']:.3f} ms without the check, {times['1']:.3f} ms with "
              f"RECOGFAST_CHECK_FINITE=1")


if __name__ == "__main__":
    check_finite_cost()
    main()
