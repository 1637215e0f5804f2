"""CUBS blocks: fused kernels vs the eager reference vs torch.compile(reference) (default mode, "compiled";
max-autotune, "compiled_maxautotune"), per block (cubs1, cubs2) and per placement (parallel, serial12,
serial21), forward and forward+backward. Every side gets the same input and weights (dtype, channels_last);
x's and the parameters' gradients are set to None before each timed call; on CUDA each case is also timed
by CUDA events and by CUDA-graph replay (conftest.py). On CUDA the fused rows record the kernel variants they ran
(recogfast/tuned.py): Block 2's cubs_spatial_tile (RECOGFAST_CUBS_SPATIAL_TILE; set, impl fused_tileN) and Block 1's
cubs_channel_threads (RECOGFAST_CUBS_CHANNEL_THREADS; set, fused_threadsN) and cubs_channel_variant (the one-CTA
variant, RECOGFAST_CUBS_CHANNEL_VARIANT=fused; set, fused_1cta); tools/gpu_check.sh step cubs_tiles sweeps them, and
tools/tuned_table.py picks the winners from those rows.

CPU: one small shape (B=8 at 28×28×64) so the suite runs on a 2-core machine; the closing
table gives each implementation's time relative to the fused kernel. CUDA (skipped without a GPU):
the ResNet-18 stage shapes, 224 input at B=64 (56×56×64 … 7×7×512) and 64 input at B=256
(16×16×64 … 2×2×512), bf16, channels_last.

Floors (in extra_info):
- DRAM: Block 1 reads x and writes y (2|x|) forward, 5|x| forward+backward (reads x, grad_y, writes
  grad_x), like SE; Block 2 the same; a placement adds the second block's passes (4|x| / 10|x|).
- Exponentials (Block 2 and the placements on CUDA): B·(HW)² exps per pass over the rank-one softmax,
  1 pass forward, 2 forward+backward (the training forward's rows, which save the per-row statistics, and the
  backward's columns; issue 25 part 5, three before). On the GPU each is one MUFU.EX2:
  the CUDA C++ Programming Guide's arithmetic-instruction throughput table gives 16 results per clock
  per SM for exp2f (base-2 exponential) on compute capability 9.0, so an H100 SXM (132 SMs, 1.98 GHz
  boost) manages 132 · 16 · 1.98e9 ≈ 4.2e12 exp/s. The floor is max(DRAM time, exp time), using the
  device's SM count and clock when a GPU is present.

A whole training step of CUBS-ResNet-18 (serial12 in every basic block, impl "fused"; the parallel and
serial21 placements, "fused_parallel" and "fused_serial21") against plain torchvision ResNet-18 (impl
"plain") and against CUBS-ResNet-18 (serial12) on the reference blocks: bf16 autocast and
channels_last on CUDA at 64×64 (B=256) and 224×224 (B=64); fp32 at 64×64, B=8, on the CPU. extra_info
has images/s and, on CUDA, the peak memory.
"""

import pytest
import torch

from conftest import (BENCH_DEVICES, COMPILE_MODES, compile_peer, copy_bandwidth, grad_reset, kernel_variant,
                      run_benchmark)
from recogfast.nn import create_attention

NAMES = ["cubs1", "cubs2", "cubs_parallel", "cubs_serial12", "cubs_serial21"]
IMPLS = ["fused", "reference", *COMPILE_MODES]
# (B, C, H) per device.
STAGES = {
    "cpu": [(8, 64, 28)],
    "cuda": [(64, 64, 56), (64, 128, 28), (64, 256, 14), (64, 512, 7),
             (256, 64, 16), (256, 128, 8), (256, 256, 4), (256, 512, 2)],
}
DTYPE = {"cpu": torch.float32, "cuda": torch.bfloat16}
MUFU_EX2_PER_CLOCK_PER_SM = 16  # CUDA C++ Programming Guide, arithmetic instructions, cc 9.0: exp2f
_modules = {}


def exp_rate(device) -> float | None:
    """MUFU.EX2 results per second of the GPU (None on the CPU)."""
    if torch.device(device).type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_hz = getattr(props, "clock_rate", 1_980_000) * 1e3  # kHz; 1.98 GHz H100 SXM boost if unknown
    return props.multi_processor_count * MUFU_EX2_PER_CLOCK_PER_SM * clock_hz


def _module(name, impl, C, device, dtype, shape=None):
    """The module (the same weights for every impl); a compiled peer gets its own object per shape and mode."""
    key = (name, impl, C, device, dtype, shape if impl in COMPILE_MODES else None)
    if key not in _modules:
        torch.manual_seed(0)
        m = create_attention(name, C, impl="reference" if impl != "fused" else "fused").to(device)
        if device == "cuda":
            m = m.to(dtype)
        _modules[key] = (m, compile_peer(m, impl, device) if impl in COMPILE_MODES else m)
    return _modules[key]


@pytest.mark.parametrize("device", BENCH_DEVICES)
@pytest.mark.parametrize("stage", range(8), ids=lambda i: f"stage{i}")
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_cubs(benchmark, device, stage, name, impl, mode):
    if stage >= len(STAGES[device]):
        pytest.skip(f"{device} runs {len(STAGES[device])} shapes")
    B, C, H = STAGES[device][stage]
    dtype = DTYPE[device]
    module, m = _module(name, impl, C, device, dtype, shape=(B, H, mode))
    x = torch.randn(B, C, H, H, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    nbytes = x.numel() * x.element_size()
    blocks = 2 if name.startswith("cubs_") else 1
    spatial = name != "cubs1"
    if mode == "fwd":
        def step():
            with torch.no_grad():
                m(x)
        passes, traffic = 1, 2 * blocks
    else:
        x.requires_grad_(True)
        gy = torch.randn_like(x)

        def step():
            m(x).backward(gy)
        passes, traffic = 2, 5 * blocks
    exps = passes * B * (H * H) ** 2 if spatial else 0
    dram_s = traffic * nbytes / copy_bandwidth(device)
    rate = exp_rate(device)
    floor_s, what = dram_s, f"{traffic}|x| = {traffic * nbytes / 2**20:.1f} MiB of DRAM traffic"
    if rate and exps and exps / rate > dram_s:
        floor_s, what = exps / rate, f"{exps:.3g} exp at {rate:.3g} MUFU.EX2/s"
    benchmark.extra_info.update(exp_count=exps)
    if rate:
        benchmark.extra_info.update(exp_rate_per_s=rate, exp_floor_ms=exps / rate * 1e3)
    label = impl  # a variant the environment sets (one pytest process a variant: the kernels read it once)
    if impl == "fused" and device == "cuda":
        if spatial:
            tile, suffix = kernel_variant("cubs_spatial_tile", dtype, device)
            benchmark.extra_info["cubs_spatial_tile"] = tile
            label += f"_tile{suffix}" if suffix else ""
        if name != "cubs2":
            threads, suffix = kernel_variant("cubs_channel_threads", dtype, device)
            variant, vsuffix = kernel_variant("cubs_channel_variant", dtype, device)
            benchmark.extra_info.update(cubs_channel_threads=threads, cubs_channel_variant=variant)
            label += f"_threads{suffix}" if suffix else ""
            label += {"": "", "fused": "_1cta"}.get(vsuffix, f"_{vsuffix}")  # one CTA a sample: as SE's fused_1cta
    group = f"{name} {mode} {device} {str(dtype)[6:]} B={B} C={C} {H}x{H}"
    run_benchmark(benchmark, step, device=device, group=group, impl=label, floor_seconds=floor_s, floor_what=what,
                  rounds=5 if device == "cpu" else 20, reset=grad_reset(x, module), graph=True)


# --- a whole training step: CUBS-ResNet-18 against plain torchvision ResNet-18 -------------------------

def cubs_resnet18(attention: str | None, impl: str, num_classes: int = 200) -> torch.nn.Module:
    """torchvision's ResNet-18 with `attention` after each basic block's body, before the add (SPEC
    "Placement"): bn2 becomes Sequential(bn2, attention). None gives the plain network."""
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=num_classes)
    if attention is not None:
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            for block in layer:
                c = block.bn2.num_features
                block.bn2 = torch.nn.Sequential(block.bn2, create_attention(attention, c, impl=impl))
    return model


# (input size, batch) per device; the CUDA sizes are the (64×64 at B=256, 224×224 at B=64).
TRAIN = {"cpu": [(64, 8)], "cuda": [(64, 256), (224, 64)]}
# "fused" is serial12 (the default placement); the other two placements on the fused blocks beside it.
TRAIN_MODELS = {"fused": ("cubs_serial12", "fused"), "fused_parallel": ("cubs_parallel", "fused"),
                "fused_serial21": ("cubs_serial21", "fused"), "reference": ("cubs_serial12", "reference"),
                "plain": (None, "fused")}


@pytest.mark.parametrize("device", BENCH_DEVICES)
@pytest.mark.parametrize("size", range(2), ids=lambda i: f"size{i}")
@pytest.mark.parametrize("impl", list(TRAIN_MODELS))
def test_resnet18_train_step(benchmark, device, size, impl):
    if size >= len(TRAIN[device]):
        pytest.skip(f"{device} runs {len(TRAIN[device])} sizes")
    S, B = TRAIN[device][size]
    attention, block_impl = TRAIN_MODELS[impl]
    torch.manual_seed(0)
    model = cubs_resnet18(attention, block_impl).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(B, 3, S, S, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 200, (B,), device=device)
    amp = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        with amp:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    group = f"resnet18 train step {device} {'bf16' if device == 'cuda' else 'fp32'} B={B} {S}x{S}"
    run_benchmark(benchmark, step, device=device, group=group, impl=impl, rounds=3 if device == "cpu" else 20,
                  reset=grad_reset(model), graph=True)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["images_per_s"] = B / stats.stats.mean
    if device == "cuda":
        benchmark.extra_info["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
