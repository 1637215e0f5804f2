"""The CUBS CUDA kernel variants (issue 25 part 1), each read once per process, so each runs in a process of its
own here:
- Block 2: RECOGFAST_CUBS_SPATIAL_TILE = 0-3 picks the threads a block, rows a thread and staged tile of the two
  quadratic passes (csrc/ops/cuda/cubs_spatial_passes.cuh);
- Block 1: RECOGFAST_CUBS_CHANNEL_THREADS = 256, 128, 512, the threads a sample of its head kernel
  (csrc/ops/cuda/cubs_channel_kernel.cu).
The variants sum the same terms in the same order: every output and gradient is bit-identical to the defaults'.
Another value is a one-line error naming the variable and the allowed values. Block 1's one-CTA variant
(RECOGFAST_CUBS_CHANNEL_VARIANT, read on every call) is tested at the end of the file, in this process.

Only the CUDA launchers read the variables (the CPU kernels have one shape), so on a machine without a GPU these
tests skip; the host emulation checks the same on the CPU (tools/cuda_emulation/run.sh tiles: cubs_tiles.h)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CUDA_KERNELS, HAS_CUDA, variant_fwd_bwd, variant_runs

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not (HAS_CUDA and CUDA_KERNELS), reason="needs a visible GPU and the CUDA kernels")
SPATIAL = "recogfast::cubs_spatial: RECOGFAST_CUBS_SPATIAL_TILE must be 0, 1, 2 or 3, got '{}'"
CHANNEL = "recogfast::cubs_channel: RECOGFAST_CUBS_CHANNEL_THREADS must be 128, 256 or 512, got '{}'"

# One process: Block 2's inference forward, training forward and both backwards at a shape over two 1024-row tiles
# and several blocks of every variant (P = 1200), then Block 1's forward and backward with C and N over 256 (one
# sample's threads), fp32 NCHW and bf16 NHWC with fp32 weights; saved to argv[1].
SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_cubs import make_args1, make_args2
ops, out = torch.ops.recogfast, []
for dtype, fmt in [(torch.float32, torch.contiguous_format), (torch.bfloat16, torch.channels_last)]:
    torch.manual_seed(3)
    args = make_args2(2, 8, 30, 40, dtype=torch.float32, device="cuda", memory_format=fmt)
    x, w = args[0].to(dtype), args[1:]
    gy = torch.randn_like(x)
    y, stats = ops._cubs_spatial_forward_train(x, *w)
    out += [ops.cubs_spatial(x, *w), y, stats, *ops._cubs_spatial_backward(gy, x, *w),
            *ops._cubs_spatial_backward_saved(gy, x, stats, *w)]
    args = make_args1(2, 600, 3, 3, 300, dtype=torch.float32, device="cuda", memory_format=fmt)
    x, w = args[0].to(dtype), args[1:]
    gy = torch.randn_like(x)
    out += [ops.cubs_channel(x, *w), *ops._cubs_channel_backward(gy, x, *w)]
torch.save([t.cpu() for t in out], sys.argv[1])
"""


def _run(tile, threads, path):
    env = dict(os.environ, RECOGFAST_CUBS_SPATIAL_TILE=tile, RECOGFAST_CUBS_CHANNEL_THREADS=threads,
               PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(ROOT / "tests")), str(path)], env=env,
                          capture_output=True, text=True, timeout=300)


@needs_cuda
def test_cuda_cubs_kernel_variants_are_bit_identical(tmp_path):
    import torch

    outs = []
    for tile, threads in [("0", "256"), ("1", "128"), ("2", "512"), ("3", "256")]:
        proc = _run(tile, threads, tmp_path / f"v{tile}.pt")
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(torch.load(tmp_path / f"v{tile}.pt"))
    assert len(outs[0]) == 2 * (17 + 10)
    for v, out in enumerate(outs[1:], 1):
        for i, (a, b) in enumerate(zip(out, outs[0])):
            assert a.dtype == b.dtype and torch.equal(a, b), (v, i)


@needs_cuda
@pytest.mark.parametrize("tile,threads,message", [("4", "256", SPATIAL.format(4)), ("fast", "256", SPATIAL.format("fast")),
                                                  ("0", "1024", CHANNEL.format(1024)), ("0", "x", CHANNEL.format("x"))])
def test_cuda_cubs_variant_bad_value_is_one_line(tmp_path, tile, threads, message):
    proc = _run(tile, threads, tmp_path / "bad.pt")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: ") and message in last, proc.stderr[-2000:]  # the exception, one line


# Block 1's one-CTA variant, RECOGFAST_CUBS_CHANNEL_VARIANT (csrc/ops/cuda/cubs_channel_fused.cuh; read on every call,
# so these run in this process): "fused" stages each sample in shared memory and runs the pool, the head and the
# gating in one launch (two in the backward): one CTA a sample, or a cluster of CTAs where one CTA cannot hold it
# (56x56x64 here: 2 in bf16, 4 in fp32), the split path where the sample does not read in 16-byte vectors (NCHW 14x14
# and 7x7 in bf16); "auto" / unset is the tuned table's choice, the split path while it has no entry. The head is
# the split path's code; only the channel sums' order differs, so the rule is the split kernels' error against the
# float64 CPU truth: within twice it plus one rounding unit of the scale. The benchmark's C and H (B = 8: the float64
# truth stays quick).
CUBS_HEADLINE = [(8, 64, 56), (8, 128, 28), (8, 256, 14), (8, 512, 7)]


def _channel_variant():
    """conftest.variant_fwd_bwd's var and op for Block 1."""
    import torch

    return "RECOGFAST_CUBS_CHANNEL_VARIANT", torch.ops.recogfast.cubs_channel


@needs_cuda
@pytest.mark.parametrize("shape", CUBS_HEADLINE, ids=["56", "28", "14", "7"])
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32", "bf16-w32"])
def test_cuda_cubs_channel_one_cta_matches_split_and_cpu(monkeypatch, shape, fmt, dtype):
    import torch
    from test_cubs import make_args1

    B, C, H = shape
    torch.manual_seed(0)
    memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    args64 = make_args1(B, C, H, H, C // 2, memory_format=memory_format)
    gy64 = torch.randn_like(args64[0])
    fused, split, truth = variant_runs(monkeypatch, *_channel_variant(), args64, gy64, dtype)
    names = ("y", "grad x", "grad wq", "grad bq", "grad wk", "grad bk", "grad wv", "grad bv", "grad wo", "grad bo")
    for name, f, s, t in zip(names, fused, split, truth):
        assert f.dtype == s.dtype and f.shape == s.shape and f.stride() == s.stride(), name
        scale = t.abs().max().item()
        err, split_err = ((o.cpu().double() - t).abs().max().item() for o in (f, s))
        eps = torch.finfo(f.dtype).eps
        assert err <= 2 * split_err + eps * scale, f"{name} {shape} {fmt} {dtype}: fused {err} vs split {split_err}"


@needs_cuda
def test_cuda_cubs_channel_one_cta_auto_is_split_and_fused_is_deterministic(monkeypatch):
    """"auto" is the variant the tuned table names for the device (the split path without an entry), bit for bit;
    the one-CTA kernels sum in a fixed order (two calls agree bit for bit)."""
    import torch
    from recogfast.tuned import effective
    from test_cubs import make_args1

    args = make_args1(8, 256, 14, 14, 128, dtype=torch.bfloat16, device="cuda", memory_format=torch.channels_last)
    gy = torch.randn_like(args[0])
    monkeypatch.delenv("RECOGFAST_CUBS_CHANNEL_VARIANT", raising=False)
    table = effective("cubs_channel_variant", torch.cuda.get_device_capability(), torch.bfloat16)
    auto, split = (variant_fwd_bwd(monkeypatch, *_channel_variant(), v, args, gy) for v in ("auto", table))
    first, second = (variant_fwd_bwd(monkeypatch, *_channel_variant(), "fused", args, gy) for _ in range(2))
    for a, s, f1, f2 in zip(auto, split, first, second):
        assert torch.equal(a, s) and torch.equal(f1, f2)


@needs_cuda
def test_cuda_cubs_channel_one_cta_bad_value_is_one_line(monkeypatch):
    import torch
    from test_cubs import make_args1

    monkeypatch.setenv("RECOGFAST_CUBS_CHANNEL_VARIANT", "fast")
    args = make_args1(2, 8, 3, 3, 4, dtype=torch.float32, device="cuda")
    want = "recogfast::cubs_channel: RECOGFAST_CUBS_CHANNEL_VARIANT must be auto, fused or split, got 'fast'"
    with pytest.raises(RuntimeError, match=want) as e:
        torch.ops.recogfast.cubs_channel(*args)
    assert "\n" not in str(e.value)
