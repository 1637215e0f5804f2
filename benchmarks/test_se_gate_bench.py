"""SE gate: fused kernel vs the eager reference vs torch.compile(reference) (default mode, "compiled";
max-autotune, "compiled_maxautotune"), forward and forward+backward, at ResNet-18 stage shapes. Every side
gets the same tensors (dtype, channels_last); the gradients are set to None before each timed call; on
CUDA each case is also timed by CUDA events and by CUDA-graph replay (conftest.py).

Floor: the DRAM traffic no implementation can avoid once x exceeds the caches — forward reads x and
writes y (2|x|); forward+backward adds reading x and grad_y and writing grad_x (5|x| in all) — over the
measured copy bandwidth. The fused kernels move 3|x| forward and 7|x| forward+backward on the GPU
(pool, then scale, re-reading x), and close to the floor on the CPU when a sample fits in the cache.

CUDA kernel variant (RECOGFAST_SE_VARIANT): impl "fused" is what a user gets (the variable unset: "auto", the tuned
table's entry, else the split path; extra_info se_variant names the one it ran), impl "fused_split" forces the split
path and "fused_1cta" the one-CTA-a-sample kernels (csrc/ops/cuda/se_gate_fused.cuh: 2|x| forward, 3|x| backward;
56x56 as a cluster of CTAs a sample), so that a sweep times both whatever the table says (tools/tuned_table.py needs
the split baseline). On the CPU the variant changes nothing (one kernel): the two forced rows are CUDA-only.
"""

import pytest
import torch

from conftest import BENCH_DEVICES, COMPILE_MODES, compile_peer, grad_reset, kernel_variant, run_benchmark
from recogfast.ops import se_gate_reference

# (B, C, H) per device: small batches on the CPU so `make bench` runs on a 2-core machine.
STAGES = {"cpu": [(4, 64, 56), (4, 128, 28), (4, 256, 14), (4, 512, 7)],
          "cuda": [(256, 64, 56), (256, 128, 28), (256, 256, 14), (256, 512, 7)]}
DTYPE = {"cpu": torch.float32, "cuda": torch.bfloat16}
IMPLS = ["fused", "fused_split", "fused_1cta", "reference", *COMPILE_MODES]
VARIANT = {"fused_split": "split", "fused_1cta": "fused"}  # RECOGFAST_SE_VARIANT forced per impl
_compiled = {}


def _fn(impl, key):
    if impl == "fused" or impl in VARIANT:
        return torch.ops.recogfast.se_gate
    if impl == "reference":
        return se_gate_reference
    if (impl, key) not in _compiled:  # one compiled object per shape and mode (static shapes)
        _compiled[impl, key] = compile_peer(se_gate_reference, impl, key[0])
    return _compiled[impl, key]


def _inputs(device, B, C, H, grad):
    dtype = DTYPE[device]
    R = max(1, C // 16)
    x = torch.randn(B, C, H, H, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    w = [torch.randn(R, C, device=device, dtype=dtype) / C**0.5, torch.zeros(R, device=device, dtype=dtype),
         torch.randn(C, R, device=device, dtype=dtype) / R**0.5, torch.zeros(C, device=device, dtype=dtype)]
    args = [x, *w]
    if grad:
        for a in args:
            a.requires_grad_(True)
    return args


@pytest.mark.parametrize("device", BENCH_DEVICES)
@pytest.mark.parametrize("stage", range(4), ids=["56", "28", "14", "7"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_se_gate(benchmark, device, stage, impl, mode, monkeypatch):
    if impl in VARIANT and device == "cpu":
        pytest.skip("RECOGFAST_SE_VARIANT picks a CUDA kernel; the CPU has one")
    if impl in VARIANT:
        monkeypatch.setenv("RECOGFAST_SE_VARIANT", VARIANT[impl])
        benchmark.extra_info["se_variant"] = VARIANT[impl]
    elif impl == "fused" and device == "cuda":  # the user's variant: the table's entry ("auto" resolved)
        monkeypatch.delenv("RECOGFAST_SE_VARIANT", raising=False)
        benchmark.extra_info["se_variant"] = kernel_variant("se_variant", DTYPE[device], device)[0]
    B, C, H = STAGES[device][stage]
    fn = _fn(impl, (device, stage, mode))
    args = _inputs(device, B, C, H, grad=mode != "fwd")
    x = args[0]
    nbytes = x.numel() * x.element_size()
    if mode == "fwd":
        def step():
            with torch.no_grad():
                fn(*args)
        floor = 2 * nbytes
    else:
        gy = torch.randn_like(x)

        def step():
            fn(*args).backward(gy)
        floor = 5 * nbytes
    group = f"se_gate {mode} {device} {str(DTYPE[device])[6:]} B={B} C={C} {H}x{H}"
    run_benchmark(benchmark, step, device=device, group=group, impl=impl, floor_bytes=floor,
                  floor_what=f"{floor // nbytes}|x| = {floor / 2**20:.0f} MiB of DRAM traffic",
                  reset=grad_reset(args), graph=True)
