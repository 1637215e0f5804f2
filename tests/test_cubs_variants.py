"""The CUBS CUDA kernel variants (issue 25 part 1), each read once per process, so each runs in a process of its
own here:
- Block 2: RECOGFAST_CUBS_SPATIAL_TILE = 0-3 picks the threads a block, rows a thread and staged tile of the two
  quadratic passes (csrc/ops/cuda/cubs_spatial_passes.cuh);
- Block 1: RECOGFAST_CUBS_CHANNEL_THREADS = 256, 128, 512, the threads a sample of its head kernel
  (csrc/ops/cuda/cubs_channel_kernel.cu).
The variants sum the same terms in the same order: every output and gradient is bit-identical to the defaults'.
Another value is a one-line error naming the variable and the allowed values.

Only the CUDA launchers read the variables (the CPU kernels have one shape), so on a machine without a GPU these
tests skip; the host emulation checks the same on the CPU (tools/cuda_emulation/run.sh tiles: cubs_tiles.h)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CUDA_KERNELS, HAS_CUDA

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
