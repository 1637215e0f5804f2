"""Shared benchmark machinery: timing with device synchronisation, the DRAM floor, and a closing table
of each implementation's time relative to the fused kernel and to the floor."""

from __future__ import annotations

import functools
from collections import defaultdict

import pytest
import torch

import recogfast  # noqa: F401  (loads the extension)

HAS_GPU = torch.cuda.is_available() and recogfast.dispatch.cuda_kernels_compiled()
BENCH_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_GPU, reason="needs a GPU and the CUDA kernels"))]

_results: dict[str, dict[str, dict]] = defaultdict(dict)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@functools.lru_cache(maxsize=None)
def copy_bandwidth(device: str) -> float:
    """Measured copy bandwidth in bytes/s (read + write), the practical DRAM ceiling of `device`.

    Measured rather than taken from a datasheet so the floor is honest on any machine: on an H100 SXM
    a device-to-device copy reaches roughly 2.9-3.0 TB/s of the 3.35 TB/s HBM3 peak."""
    n = (1 << 28) if torch.device(device).type == "cuda" else (1 << 26)  # 1 GiB / 256 MiB of fp32
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        sync(device)
        if torch.device(device).type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        else:
            import time

            t0 = time.perf_counter()
            dst.copy_(src)
            best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best


def run_benchmark(benchmark, fn, *, device, group: str, impl: str, floor_bytes: int | None = None,
                  floor_seconds: float | None = None, floor_what: str = "", rounds: int = 10):
    """Time `fn` (synchronising `device`), record the floor and the ratio to it in extra_info, and
    remember the mean for the closing fused-vs-others table."""

    def call():
        fn()
        sync(device)

    for _ in range(2):  # warm-up: autotuning, compilation, caches
        call()
    benchmark.group = group
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)
    if floor_bytes is not None:
        floor_seconds = floor_bytes / copy_bandwidth(device)
        floor_what = floor_what or f"{floor_bytes / 2**20:.1f} MiB at the measured copy bandwidth"
    info = {"impl": impl, "device": str(device)}
    if floor_seconds is not None:
        info.update(floor_ms=floor_seconds * 1e3, floor=floor_what)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        mean = stats.stats.mean
        info["mean_ms"] = mean * 1e3
        if floor_seconds:
            info["ratio_to_floor"] = mean / floor_seconds
        _results[group][impl] = info
    benchmark.extra_info.update(info)


def pytest_terminal_summary(terminalreporter):
    if not _results:
        return
    tr = terminalreporter
    tr.section("recogfast: time relative to the fused kernel and to the floor")
    tr.write_line(f"{'group':<48} {'impl':<12} {'mean ms':>10} {'x fused':>8} {'floor ms':>9} {'x floor':>8}")
    for group, impls in sorted(_results.items()):
        fused = impls.get("fused", {}).get("mean_ms")
        for impl, info in sorted(impls.items(), key=lambda kv: kv[0] != "fused"):
            rel = f"{info['mean_ms'] / fused:8.2f}" if fused else f"{'-':>8}"
            floor = f"{info['floor_ms']:9.3f}" if "floor_ms" in info else f"{'-':>9}"
            xfloor = f"{info['ratio_to_floor']:8.1f}" if "ratio_to_floor" in info else f"{'-':>8}"
            tr.write_line(f"{group:<48} {impl:<12} {info['mean_ms']:10.3f} {rel} {floor} {xfloor}")
