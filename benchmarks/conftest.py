"""Shared benchmark machinery: timing with device synchronisation, the DRAM floor, and a closing table
of each implementation's time relative to the fused kernel and to the floor.

Fair to every side (issue 25): every implementation of a group gets the same inputs (dtype, layout), the
gradients are reset (set to None) before every timed forward+backward (`reset=grad_reset(...)`: `x.grad`
no longer accumulates an extra |x| read-modify-write per round), and each CUDA case is timed three ways:

- ``wall_ms``: pytest-benchmark's synced wall clock per call (host overhead and the sync included);
- ``events_ms``: CUDA events around `rounds` calls back to back, per call (host overhead shows only
  where the host, not the GPU, is the bottleneck);
- ``graph_ms``: the forward+backward captured once in a CUDA graph (static inputs) and replayed: GPU
  time without host overhead (``graph=True`` cases; ``graph_note`` says why one has none).

On the CPU only the wall clock exists (``timing`` in extra_info says so). With RECOGFAST_BENCH_JSONL=path
each finished benchmark appends one JSON line (stats and extra_info) to `path`, so a run killed at its
deadline keeps what finished (tools/gpu_check.sh, tools/gpu_results.py).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections import defaultdict

import pytest

# On a small machine (make bench on 2 cores) compile in-process: inductor's pool of compile workers would
# share the two cores with the timed rounds (a precaution: on a shared 2-core machine compiled peers showed
# rounds of 20-130 ms for a 0.1-0.5 ms call, with and without the pool; use min / median there, and the
# GPU's events / graph columns). A GPU machine keeps parallel compilation.
if (os.cpu_count() or 1) <= 4:
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402

import recogfast  # noqa: E402,F401  (loads the extension)

HAS_GPU = torch.cuda.is_available() and recogfast.dispatch.cuda_kernels_compiled()
BENCH_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_GPU, reason="needs a GPU and the CUDA kernels"))]
# torch.compile peers of the pure-PyTorch references: id -> torch.compile keyword arguments. One compiled
# object per module / shape, static shapes (dynamic=False: the fastest code for the shape), so raise
# dynamo's per-code-object recompile limit: past it dynamo would silently run the reference eagerly.
COMPILE_MODES = {"compiled": {}, "compiled_maxautotune": {"mode": "max-autotune"}}
for _name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, max(getattr(torch._dynamo.config, _name), 512))

_results: dict[str, dict[str, dict]] = defaultdict(dict)
_pending: list = []  # benchmark fixtures of the running test, written to the JSONL file when it ends


def compile_peer(obj, impl: str, device: str = "cuda"):
    """torch.compile(obj) in the mode that impl ("compiled", "compiled_maxautotune") names. max-autotune
    runs on CUDA only (it autotunes GPU kernels and replays CUDA graphs; on the CPU it would only add minutes
    of compilation to `make bench`)."""
    if torch.device(device).type != "cuda" and COMPILE_MODES[impl].get("mode") == "max-autotune":
        pytest.skip("torch.compile max-autotune peers run on CUDA only")
    return torch.compile(obj, dynamic=False, **COMPILE_MODES[impl])


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def grad_reset(*objs):
    """A callable that sets the .grad of tensors, of modules' parameters and of optimizers' parameters to
    None: called before every timed forward+backward so no round accumulates into the last one's gradient."""
    tensors = []
    for o in objs:
        if isinstance(o, torch.Tensor):
            tensors.append(o)
        elif isinstance(o, torch.nn.Module):
            tensors.extend(o.parameters())
        elif isinstance(o, (list, tuple)):
            tensors.extend(t for t in o if isinstance(t, torch.Tensor))

    def reset():
        for t in tensors:
            t.grad = None

    return reset


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
            t0 = time.perf_counter()
            dst.copy_(src)
            best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best


def events_ms(fn, reset, n: int) -> float:
    """CUDA events around n calls back to back (gradients reset before each), ms per call."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        reset()
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


def graph_ms(fn, reset, n: int) -> float:
    """fn captured once in a CUDA graph (after a warm-up on a side stream) and replayed n times, ms per
    replay. The gradients are None at the capture, so each replay writes them afresh (no accumulation)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            reset()
            fn()
    torch.cuda.current_stream().wait_stream(s)
    reset()
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            fn()
        g.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            g.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / n
    finally:
        reset()
        del g
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def kernel_variant(knob: str, dtype: torch.dtype, device) -> tuple[str, str]:
    """(the variant of `knob` the CUDA kernels take for `dtype` on `device` (recogfast.tuned.effective: the
    environment variable, else the tuned table, else the default), the label suffix of a row that ran it): "" where
    the variable is unset (what a user gets, the headline row), else the value, so that every variant a sweep sets
    gets its own row (tools/gpu_results.py keys records by test and impl)."""
    from recogfast.tuned import KNOBS, effective

    value = effective(knob, torch.cuda.get_device_capability(device), dtype)
    return value, value if os.environ.get(KNOBS[knob].env) else ""


def run_benchmark(benchmark, fn, *, device, group: str, impl: str, floor_bytes: int | None = None,
                  floor_seconds: float | None = None, floor_what: str = "", rounds: int = 10, reset=None,
                  events: bool = True, graph: bool | str = False):
    """Time `fn` (synchronising `device`; `reset()` before each call, untimed in the wall clock), record the
    floor and the ratio to it in extra_info, and remember the times for the closing table. On CUDA, also
    CUDA events back to back (`events`) and CUDA-graph replay (`graph` True; a string says why not)."""
    reset = reset or (lambda: None)
    if graph is True and COMPILE_MODES.get(impl, {}).get("mode") == "max-autotune":
        graph = "mode max-autotune replays its own CUDA graphs (inductor cudagraph trees): events_ms is replay time"

    def call():
        fn()
        sync(device)

    t0 = time.perf_counter()
    reset()
    call()  # first call: autotuning, compilation (torch.compile peers: its cost), caches
    first_call_s = time.perf_counter() - t0
    reset()
    call()
    benchmark.group = group
    benchmark.pedantic(call, setup=reset, rounds=rounds, iterations=1, warmup_rounds=1)
    if floor_bytes is not None:
        floor_seconds = floor_bytes / copy_bandwidth(device)
        floor_what = floor_what or f"{floor_bytes / 2**20:.1f} MiB at the measured copy bandwidth"
    cuda = torch.device(device).type == "cuda"
    info = {"impl": impl, "device": str(device), "first_call_s": first_call_s,
            **({"device_cc": "%d.%d" % torch.cuda.get_device_capability(device)} if cuda else {}),
            "timing": "wall (synced), CUDA events, CUDA-graph replay" if cuda else "wall clock only (CPU: no "
            "CUDA events or graphs)"}
    if floor_seconds is not None:
        info.update(floor_ms=floor_seconds * 1e3, floor=floor_what)
    if cuda and events:
        info["events_ms"] = events_ms(fn, reset, max(rounds, 10))
    if cuda and graph is True:
        try:
            info["graph_ms"] = graph_ms(fn, reset, max(rounds, 10))
        except Exception as exc:  # noqa: BLE001  (a measurement, not a test: record why and go on)
            info["graph_note"] = f"capture failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    elif cuda and graph:
        info["graph_note"] = str(graph)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        mean = stats.stats.mean
        info["mean_ms"] = info["wall_ms"] = mean * 1e3
        if floor_seconds:
            info["ratio_to_floor"] = mean / floor_seconds
            for key in ("events_ms", "graph_ms"):
                if key in info:
                    info[f"ratio_to_floor_{key[:-3]}"] = info[key] / 1e3 / floor_seconds
        _results[group][impl] = info
    benchmark.extra_info.update(info)
    _pending.append(benchmark)


@pytest.fixture(autouse=True)
def _jsonl_record():
    """After each benchmark (its extra_info complete), append its record to $RECOGFAST_BENCH_JSONL."""
    yield
    path = os.environ.get("RECOGFAST_BENCH_JSONL")
    while _pending:
        b = _pending.pop()
        stats = getattr(getattr(b, "stats", None), "stats", None)
        if not path or stats is None:
            continue
        rec = dict(name=b.name, fullname=b.fullname, group=b.group, extra_info=dict(b.extra_info),
                   stats={k: getattr(stats, k) for k in ("min", "max", "mean", "stddev", "median", "rounds")})
        with open(path, "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")


def _best(info: dict, other: dict | None) -> tuple[str, float] | None:
    """The fairest time two records share: graph replay, else events, else wall."""
    for key, tag in (("graph_ms", "g"), ("events_ms", "e"), ("mean_ms", "w")):
        if key in info and (other is None or key in other):
            return tag, info[key]
    return None


def pytest_terminal_summary(terminalreporter):
    if not _results:
        return
    tr = terminalreporter
    tr.section("recogfast: time relative to the fused kernel and to the floor")
    tr.write_line("wall: synced wall clock; events: CUDA events back to back; graph: CUDA-graph replay (CUDA "
                  "only; the CPU has the wall clock alone). x fused: graph (g), else events (e), else wall (w).")
    tr.write_line(f"{'group':<52} {'impl':<20} {'wall ms':>9} {'events ms':>9} {'graph ms':>9} {'x fused':>8} "
                  f"{'floor ms':>9} {'x floor':>8}")
    for group, impls in sorted(_results.items()):
        fused = impls.get("fused")
        for impl, info in sorted(impls.items(), key=lambda kv: kv[0] != "fused"):
            rel = f"{'-':>8}"
            if fused:
                mine, theirs = _best(info, fused), _best(fused, info)
                if mine and theirs and theirs[1]:
                    rel = f"{mine[1] / theirs[1]:7.2f}{mine[0]}"
            cols = [f"{info[k]:9.3f}" if k in info else f"{'-':>9}" for k in ("mean_ms", "events_ms", "graph_ms")]
            floor = f"{info['floor_ms']:9.3f}" if "floor_ms" in info else f"{'-':>9}"
            best = _best(info, None)
            xfloor = f"{best[1] / info['floor_ms']:8.1f}" if "floor_ms" in info and best else f"{'-':>8}"
            tr.write_line(f"{group:<52} {impl:<20} {' '.join(cols)} {rel} {floor} {xfloor}")
