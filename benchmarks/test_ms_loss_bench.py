"""Multi-Similarity loss, forward + backward: the fused op vs pytorch-metric-learning
(MultiSimilarityMiner + MultiSimilarityLoss) vs the dense PyTorch reference, eager and under torch.compile
(default mode, "compiled"; max-autotune, "compiled_maxautotune", CUDA only), D = 512, M-per-class batches
(4 images a class), with and without a cross-batch memory as the reference set; on the CPU also at several class
sizes (`test_ms_loss_fwd_bwd_class_sizes`: the kernel's positive pairs take their own path, the dense peers do not care).

The compiled peers compile `ms_loss_reference` (the forward; the backward goes through AOT autograd), one object
per shape and mode. torch._dynamo.explain traces it ("ms" mining, with and without a reference set) as one graph with
no graph breaks: its mining is torch.where / min / max over the dense matrices, no .item(), nonzero or boolean
indexing, so the compiled peers are timed by CUDA-graph replay too (issue 26's goal: >= 1.5x this peer at B = 16384).
(Its self-pair mask is a comparison: `fill_diagonal_` on a slice of it failed in AOT autograd's functionalization.)

Floor: the matrix products no implementation can avoid, over the measured fp32 GEMM throughput of the
device. Without a reference set: S = e·eᵀ once (B²·D multiply-adds, using its symmetry) and the gradient
(W + Wᵀ)·e (B²·D multiply-adds more) = 3·B²·D FLOPs; the fused CPU kernel does 4·B²·D (S is recomputed in
the backward pass). With a memory of R detached rows (M = B + R candidates): S (B·M·D) and W·c (B·M·D)
= 4·B·M·D FLOPs, which the fused CPU kernel matches for the memory (it gathers the memory's share of the
gradient during the forward tiles). GPU: the extra peak memory of one step is reported too (the goal at B = 16384 is <= 64 MB).

On the GPU the fused kernel runs its products in cuBLAS: 3 GEMMs of B x M x D without a reference-set gradient
(S forward, S again and W·x backward; csrc/ops/cuda/ms_loss_kernel.cu), i.e. the 3·B²·D floor above when the
reference set is the batch. fp32 embeddings follow torch's float32 matmul precision (exact fp32 by default: the
fp32 SIMT rate bounds them); `test_ms_loss_fwd_bwd_tensor_cores` times bf16 embeddings and fp32 with TF32
allowed against the measured bf16 / TF32 GEMM rate (H100 SXM datasheet: 989 / 494 TFLOP/s dense, so
B = 16384, D = 512: 0.82 TFLOP, a ~0.8 ms floor in bf16; the goal is <= 5 ms, 20x under PML's 100 ms).

Flash path (issue 26, csrc/ops/cuda/ms_loss_flash.cuh; sm_80+): the tensor-core test runs both CUDA paths,
chosen by RECOGFAST_MS_LOSS_PATH (`path` parameter): impl "fused" is the flash path (bf16, and fp32 with TF32
allowed; what "auto" will pick once a GPU run has cross-checked it: dispatch.MS_FLASH_BY_DEFAULT; "fused-flash" for fp32
without TF32, 3xTF32 products, in test_ms_loss_fwd_bwd's fp32 group), "fused-tiles" the
cuBLAS path, each with its extra peak memory. RECOGFAST_MS_FLASH_TILE (0-5, read once per process; 3 = the backward with G in shared memory, 3-5 prefetch in registers, 5 = 32-row forward warps) picks the tile variant: tools/gpu_check.sh
reruns the flash cases once per variant; RECOGFAST_MS_FLASH_FWD (auto, one, two) the forward's form (one dense
pass over the negatives with the positives gathered by class, or two dense passes), rerun once per forced form. `test_ms_loss_flash_batch_sweep` (CUDA only) times one bf16 fwd+bwd at
B up to 1,000,000 (the largest-batch goal) with its peak memory.
"""

import functools
import time

import pytest
import torch

from conftest import BENCH_DEVICES, COMPILE_MODES, compile_peer, grad_reset, kernel_variant, run_benchmark, sync
from recogfast.ops import ms_loss, ms_loss_reference

D = 512
# (B, R): batch size and reference-set (cross-batch memory) size, per device. Small on the CPU so that
# the suite runs on a 2-core machine in about a minute.
SIZES = {
    "cpu": [(2048, 0), (256, 16384)],
    "cuda": [(256, 0), (1024, 0), (4096, 0), (16384, 0), (65536, 0), (4096, 65536)],
}
IMPLS = ["fused", "pml", "dense", *COMPILE_MODES]
# Dense implementations hold several B x M matrices: beyond this many pairs they would not fit.
DENSE_MAX_PAIRS = 16384 * 16384
_compiled = {}


@functools.lru_cache(maxsize=None)
def gemm_flops(device: str, mode: str = "fp32") -> float:
    """Measured matrix-product throughput (FLOP/s) of `device` for `mode` "fp32" (TF32 off), "tf32" or
    "bf16" (fp32 accumulation): the practical ceiling of the floor."""
    n = 4096 if torch.device(device).type == "cuda" else 2048
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    try:
        best = float("inf")
        for _ in range(4):
            sync(device)
            t0 = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return 2 * n**3 / best


def _pml_step(e, labels, ref, ref_labels):
    from pytorch_metric_learning import losses, miners

    miner, loss_fn = miners.MultiSimilarityMiner(epsilon=0.1), losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)

    def step():
        if ref is None:
            loss = loss_fn(e, labels, miner(e, labels))
        else:  # PML's reference-set form (candidates: the reference set only)
            loss = loss_fn(e, labels, miner(e, labels, ref, ref_labels), ref, ref_labels)
        loss.backward()

    return step


@pytest.mark.parametrize("device", BENCH_DEVICES)
@pytest.mark.parametrize("size", range(6), ids=lambda i: f"size{i}")
@pytest.mark.parametrize("impl", IMPLS)
def test_ms_loss_fwd_bwd(benchmark, device, size, impl):
    sizes = SIZES["cuda" if device == "cuda" else "cpu"]
    if size >= len(sizes):
        pytest.skip(f"no size {size} on {device}")
    B, R = sizes[size]
    M = B + R
    if impl != "fused" and B * M > DENSE_MAX_PAIRS:
        pytest.skip(f"{impl} builds B x M = {B} x {M} matrices")
    if impl == "pml":
        pytest.importorskip("pytorch_metric_learning")
    if impl in COMPILE_MODES and (impl, device, size) not in _compiled:  # one object per shape and mode
        _compiled[impl, device, size] = compile_peer(ms_loss_reference, impl, device)
    torch.manual_seed(0)
    e = torch.randn(B, D, device=device, requires_grad=True)
    labels = (torch.arange(B, device=device) // 4)[torch.randperm(B, device=device)]
    ref = torch.randn(R, D, device=device) if R else None
    ref_labels = torch.randint(0, B // 4, (R,), device=device) if R else None
    if impl == "fused":
        def step():
            ms_loss(e, labels, ref_embeddings=ref, ref_labels=ref_labels, impl="fused").backward()
    elif impl == "dense" or impl in COMPILE_MODES:
        loss = ms_loss_reference if impl == "dense" else _compiled[impl, device, size]

        def step():
            loss(e, labels, ref_embeddings=ref, ref_labels=ref_labels).backward()
    else:
        step = _pml_step(e, labels, ref, ref_labels)
    flops = 3 * B * B * D if R == 0 else 4 * B * M * D
    floor_seconds = flops / gemm_flops(device)
    group = f"ms_loss fwd+bwd {device} fp32 B={B} R={R} D={D}"
    run_benchmark(benchmark, step, device=device, group=group, impl=impl, floor_seconds=floor_seconds,
                  floor_what=f"{flops / 1e9:.1f} GFLOP of matrix products at the measured "
                             f"{gemm_flops(device) / 1e9:.0f} GFLOP/s fp32 GEMM rate",
                  rounds=5 if device == "cpu" else 10, reset=grad_reset(e),
                  graph=True if impl == "fused" or impl in COMPILE_MODES
                  else f"{impl}: host syncs (data-dependent mining / masking)")
    # After the timing, so that a compiled peer's first_call_s is its compilation (here it would be warm).
    if torch.device(device).type == "cuda":
        benchmark.extra_info["extra_peak_mb"] = _cuda_extra_peak_mb(step)


# CPU, the class size: a batch of one tile (B <= 256, no reference set) forms S once a pass and reads its positive
# pairs from it; a larger batch multiplies its label groups' blocks (direct SIMD dot products up to 64 a group, aten::mm
# above) beside the negative tiles, so large classes add work there. The dense peers do the same work at any class size.
CLASS_SIZES = [(256, 4), (256, 32), (256, 128), (1024, 32)]


@pytest.mark.parametrize("device", ["cpu"])  # the id says so, for -k cpu / -k cuda selections
@pytest.mark.parametrize("case", range(len(CLASS_SIZES)), ids=lambda i: "B{}_m{}".format(*CLASS_SIZES[i]))
@pytest.mark.parametrize("impl", ["fused", "dense", "compiled"])
def test_ms_loss_fwd_bwd_class_sizes(benchmark, device, case, impl):
    B, m = CLASS_SIZES[case]
    key = ("class_sizes", impl, B, m)
    if impl in COMPILE_MODES and key not in _compiled:
        _compiled[key] = compile_peer(ms_loss_reference, impl, "cpu")
    loss = {"fused": functools.partial(ms_loss, impl="fused"), "dense": ms_loss_reference}.get(impl) or _compiled[key]
    torch.manual_seed(0)
    e = torch.randn(B, D, requires_grad=True)
    labels = (torch.arange(B) // m)[torch.randperm(B)]

    def step():
        loss(e, labels).backward()
    flops = 3 * B * B * D
    run_benchmark(benchmark, step, device="cpu", group=f"ms_loss fwd+bwd cpu fp32 B={B} D={D} {m} a class",
                  impl=impl, floor_seconds=flops / gemm_flops("cpu"),
                  floor_what=f"{flops / 1e9:.2f} GFLOP of matrix products at the measured "
                             f"{gemm_flops('cpu') / 1e9:.0f} GFLOP/s fp32 GEMM rate",
                  rounds=20, reset=grad_reset(e))


def _cuda_extra_peak_mb(step) -> float:
    """Peak CUDA memory one warmed-up `step()` allocates beyond what was allocated before it, in MiB."""
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


@pytest.mark.parametrize("device", [p for p in BENCH_DEVICES if not isinstance(p, str)])  # CUDA only
@pytest.mark.parametrize("size", range(6), ids=lambda i: f"size{i}")
@pytest.mark.parametrize("mode", ["bf16", "tf32", "fp32"])
@pytest.mark.parametrize("path", ["flash", "tiles"])
def test_ms_loss_fwd_bwd_tensor_cores(benchmark, device, size, mode, path, monkeypatch):
    """The fused op with tensor-core products: bf16 embeddings, fp32 with TF32 allowed, or fp32 without (the flash
    path's 3xTF32: three TF32 products each, fp32-level error); on the flash path or the tiles path
    (RECOGFAST_MS_LOSS_PATH). fp32 without TF32 shares test_ms_loss_fwd_bwd's group and floor (the fp32 GEMM
    rate), whose "fused" row is the tiles path: here only the flash row, "fused-flash"."""
    if mode == "fp32" and path == "tiles":
        pytest.skip("exact fp32 on the tiles path is test_ms_loss_fwd_bwd's fused row")
    monkeypatch.setenv("RECOGFAST_MS_LOSS_PATH", path)
    impl = ("fused-flash" if mode == "fp32" else "fused") if path == "flash" else f"fused-{path}"
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    tile, suffix = kernel_variant("ms_flash_tile", dtype, device)
    fwd, fwd_suffix = kernel_variant("ms_flash_fwd", dtype, device)
    if path == "flash" and suffix:  # a swept tile variant: its own row beside the default's (gpu_results keys)
        impl += f"_tile{suffix}"
    if path == "flash" and fwd_suffix:  # a forced forward form (one or two dense passes), likewise
        impl += f"_fwd{fwd_suffix}"
    B, R = SIZES["cuda"][size]
    M = B + R
    torch.manual_seed(0)
    e = torch.randn(B, D, device=device, dtype=dtype, requires_grad=True)
    labels = (torch.arange(B, device=device) // 4)[torch.randperm(B, device=device)]
    ref = torch.randn(R, D, device=device, dtype=dtype) if R else None
    ref_labels = torch.randint(0, B // 4, (R,), device=device) if R else None

    def step():
        ms_loss(e, labels, ref_embeddings=ref, ref_labels=ref_labels, impl="fused").backward()

    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    try:
        flops = 3 * B * B * D if R == 0 else 4 * B * M * D
        rate = gemm_flops(device, mode)  # "fp32": TF32 off, the exact fp32 rate (test_ms_loss_fwd_bwd's floor)
        benchmark.extra_info["extra_peak_mb"] = _cuda_extra_peak_mb(step)
        benchmark.extra_info["ms_loss_path"] = path
        benchmark.extra_info["flash_tile"] = tile
        benchmark.extra_info["flash_fwd"] = fwd
        run_benchmark(benchmark, step, device=device, group=f"ms_loss fwd+bwd {device} {mode} B={B} R={R} D={D}",
                      impl=impl, floor_seconds=flops / rate,
                      floor_what=f"{flops / 1e9:.1f} GFLOP of matrix products at the measured "
                                 f"{rate / 1e9:.0f} GFLOP/s {mode} GEMM rate", rounds=10,
                      reset=grad_reset(e), graph=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


@pytest.mark.parametrize("device", [p for p in BENCH_DEVICES if not isinstance(p, str)])  # CUDA only
@pytest.mark.parametrize("path", ["flash", "tiles"])
def test_ms_loss_fwd_bwd_separated(benchmark, device, path, monkeypatch):
    """bf16 fwd+bwd at B = 16384 on embeddings that already separate their classes, as a model does after some
    training (each row its class's direction plus as much noise: within-class similarity ~0.5, across ~0 +- 0.05),
    so "ms" mining keeps few pairs: where a flash backward CTA's 64 x 64 weight block is all zero it skips that
    block's G product (ms_loss_flash.cuh any_weight); the tiles path multiplies every block. The random embeddings
    of the other cases mine nearly every negative, so they never skip."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("the flash path needs sm_80+")
    monkeypatch.setenv("RECOGFAST_MS_LOSS_PATH", path)
    B = 16384
    torch.manual_seed(0)
    labels = (torch.arange(B, device=device) // 4)[torch.randperm(B, device=device)]
    centers = torch.nn.functional.normalize(torch.randn(B // 4, D, device=device), dim=1)
    noise = torch.nn.functional.normalize(torch.randn(B, D, device=device), dim=1)
    e = (centers[labels] + noise).to(torch.bfloat16).requires_grad_(True)

    def step():
        ms_loss(e, labels, impl="fused").backward()

    flops = 3 * B * B * D
    rate = gemm_flops(device, "bf16")
    benchmark.extra_info["extra_peak_mb"] = _cuda_extra_peak_mb(step)
    benchmark.extra_info["ms_loss_path"] = path
    run_benchmark(benchmark, step, device=device, group=f"ms_loss fwd+bwd {device} separated bf16 B={B} D={D}",
                  impl="fused" if path == "flash" else "fused-tiles", floor_seconds=flops / rate,
                  floor_what=f"{flops / 1e9:.1f} GFLOP of matrix products at the measured {rate / 1e9:.0f} GFLOP/s "
                             f"bf16 GEMM rate (every pair; mined pairs are fewer here)", rounds=10,
                  reset=grad_reset(e), graph=True)


SWEEP_B = [131072, 262144, 524288, 1_000_000]


@pytest.mark.parametrize("device", [p for p in BENCH_DEVICES if not isinstance(p, str)])  # CUDA only
@pytest.mark.parametrize("B", SWEEP_B)
def test_ms_loss_flash_batch_sweep(benchmark, device, B, monkeypatch):
    """One bf16 fwd+bwd on the flash path at B up to 1,000,000 (D = 512, 4 images a class): the time of one
    step (one round: at B = 10^6 the 3·B²·D floor alone is 1.5 PFLOP) and its extra peak memory (the goal:
    O(B), no B x B anywhere)."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("the flash path needs sm_80+")
    monkeypatch.setenv("RECOGFAST_MS_LOSS_PATH", "flash")
    torch.manual_seed(0)
    e = torch.randn(B, D, device=device, dtype=torch.bfloat16, requires_grad=True)
    labels = (torch.arange(B, device=device) // 4)[torch.randperm(B, device=device)]

    def step():
        e.grad = None
        ms_loss(e, labels, impl="fused").backward()
        torch.cuda.synchronize()

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    benchmark.group = f"ms_loss flash batch sweep {device} bf16 D={D}"
    benchmark.pedantic(step, rounds=1, iterations=1, warmup_rounds=0)
    flops = 3 * B * B * D
    benchmark.extra_info.update(impl="fused", device=device, ms_loss_path="flash",
                                extra_peak_mb=(torch.cuda.max_memory_allocated() - before) / 2**20,
                                floor_ms=flops / gemm_flops(device, "bf16") * 1e3,
                                floor=f"{flops / 1e12:.0f} TFLOP at the measured bf16 GEMM rate")
