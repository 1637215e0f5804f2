"""CUBS Block 2's CUDA kernel variants (issue 25 part 1): RECOGFAST_CUBS_SPATIAL_TILE = 0-3 picks the threads a
block, rows a thread and staged tile of the two quadratic passes (csrc/ops/cuda/cubs_spatial_passes.cuh), read once
per process, so each variant runs in a process of its own here. The variants sum the same terms in the same order:
every output and gradient is bit-identical to variant 0's. Another value is a one-line error naming the variable
and the allowed values.

Only the CUDA launcher reads the variable (the CPU kernel has one shape), so on a machine without a GPU these tests
skip; the host emulation checks the same on the CPU (tools/cuda_emulation/run.sh tiles: cubs_tiles.h)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CUDA_KERNELS, HAS_CUDA

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not (HAS_CUDA and CUDA_KERNELS), reason="needs a visible GPU and the CUDA kernels")
MESSAGE = "recogfast::cubs_spatial: RECOGFAST_CUBS_SPATIAL_TILE must be 0, 1, 2 or 3, got '{}'"

# One process: the inference forward, the training forward and both backwards at a shape over two 1024-row tiles
# and several blocks of every variant (P = 1200), fp32 NCHW and bf16 NHWC with fp32 weights; saved to argv[1].
SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_cubs import make_args2
ops, out = torch.ops.recogfast, []
for dtype, fmt, wdt in [(torch.float32, torch.contiguous_format, torch.float32),
                        (torch.bfloat16, torch.channels_last, torch.float32)]:
    torch.manual_seed(3)
    args = make_args2(2, 8, 30, 40, device="cuda", memory_format=fmt)
    x, w = args[0].to(dtype), [t.to(wdt) for t in args[1:]]
    gy = torch.randn_like(x)
    y, stats = ops._cubs_spatial_forward_train(x, *w)
    out += [ops.cubs_spatial(x, *w), y, stats, *ops._cubs_spatial_backward(gy, x, *w),
            *ops._cubs_spatial_backward_saved(gy, x, stats, *w)]
torch.save([t.cpu() for t in out], sys.argv[1])
"""


def _run(variant, path):
    env = dict(os.environ, RECOGFAST_CUBS_SPATIAL_TILE=variant, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(ROOT / "tests")), str(path)], env=env,
                          capture_output=True, text=True, timeout=300)


@needs_cuda
def test_cuda_spatial_tile_variants_are_bit_identical(tmp_path):
    import torch

    outs = []
    for v in "0123":
        proc = _run(v, tmp_path / f"tile{v}.pt")
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(torch.load(tmp_path / f"tile{v}.pt"))
    assert len(outs[0]) == 2 * 17
    for v, out in enumerate(outs[1:], 1):
        for i, (a, b) in enumerate(zip(out, outs[0])):
            assert a.dtype == b.dtype and torch.equal(a, b), (v, i)


@needs_cuda
@pytest.mark.parametrize("bad", ["4", "-1", "fast"])
def test_cuda_spatial_tile_bad_value_is_one_line(tmp_path, bad):
    proc = _run(bad, tmp_path / "bad.pt")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert MESSAGE.format(bad) in last, proc.stderr[-2000:]  # the exception, on one line
    assert last.startswith("RuntimeError: ")
