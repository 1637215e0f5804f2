"""The engine's training step, eager against ``recogfast train --cuda-graphs`` (recogfast.engine.graphs), for
plain torchvision ResNet-18 and CUBS-ResNet-18 in each placement (serial12 "fused", "fused_parallel",
"fused_serial21"): what a training run pays per step, not a hand-written step.

- ``<model>``: the trainer's eager step (``Trainer._eager_steps``: zero_grad, autocast forward, loss, its one
  ``float(loss)`` sync for the divergence guard, backward, optimizer step);
- ``<model>_graphs``: the captured step (``CapturedStep.step``: copy into the static buffers, one replay of
  forward + loss + backward + fused SGD step; the guard reads the losses every 32 steps, not here).

Both: SGD with Nesterov momentum, channels_last, bf16 autocast on CUDA; 64×64 at B=256 and 224×224 at B=64.
The first call's seconds (``first_call_s``) hold the warm-up and the capture. The closing table's "x fused"
column compares with the eager serial12 step; tools/gpu_results.py reads the CUBS / plain ratio of the
captured steps (goal >= 0.85x). On the CPU only the eager steps of plain and serial12 run (fp32, 64×64, B=8):
CUDA graphs need CUDA.
"""

import pytest
import torch
from torch import nn

from conftest import BENCH_DEVICES, run_benchmark
from test_cubs_bench import TRAIN, TRAIN_MODELS, cubs_resnet18

MODELS = [m for m in TRAIN_MODELS if m != "reference"]


def _trainer(model, device, captured: bool, out_dir):
    from recogfast.engine import Trainer, TrainerOptions, build_optimizer

    opt = build_optimizer(model, "sgd", lr=0.01, weight_decay=5e-4)
    options = TrainerOptions(epochs=1, amp="bf16" if device == "cuda" else "none", channels_last=True,
                             cuda_graphs=captured, progress=False, tensorboard=False, plots=False)
    return Trainer(model, nn.CrossEntropyLoss(), [], None, opt, out_dir=out_dir, options=options, device=device)


@pytest.mark.parametrize("device", BENCH_DEVICES)
@pytest.mark.parametrize("size", range(2), ids=lambda i: f"size{i}")
@pytest.mark.parametrize("mode", ["eager", "graphs"])
@pytest.mark.parametrize("name", MODELS)
def test_engine_train_step(benchmark, device, size, mode, name, tmp_path):
    if size >= len(TRAIN[device]):
        pytest.skip(f"{device} runs {len(TRAIN[device])} sizes")
    if mode == "graphs" and device != "cuda":
        pytest.skip("--cuda-graphs needs CUDA: the CPU runs the eager steps only")
    if device == "cpu" and name not in ("plain", "fused"):
        pytest.skip("the CPU runs plain and serial12 only (make bench on 2 cores)")
    S, B = TRAIN[device][size]
    attention, block_impl = TRAIN_MODELS[name]
    torch.manual_seed(0)
    trainer = _trainer(cubs_resnet18(attention, block_impl), device, mode == "graphs", tmp_path)
    x = torch.randn(B, 3, S, S, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 200, (B,), device=device)
    trainer.train_model.train()
    if mode == "graphs":
        captured = trainer._captured()

        def step():
            captured.step(x, y, final=True, group=1)
    else:
        from recogfast.engine.logs import Progress

        trainer.train_loader = [(x, y)]
        bar = Progress(1, "", enabled=False)

        def step():
            trainer._eager_steps(bar, 1)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    impl = name if mode == "eager" else f"{name}_graphs"
    group = f"engine train step {device} {'bf16' if device == 'cuda' else 'fp32'} B={B} {S}x{S}"
    why = ("the step is a CUDA-graph replay already: events_ms is replay time" if mode == "graphs" else
           "the eager engine step reads the loss on the host (its divergence guard), which a capture refuses")
    run_benchmark(benchmark, step, device=device, group=group, impl=impl, rounds=3 if device == "cpu" else 20,
                  graph=why)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["images_per_s"] = B / stats.stats.mean
        if "events_ms" in benchmark.extra_info:
            benchmark.extra_info["images_per_s_events"] = B / benchmark.extra_info["events_ms"] * 1e3
    if device == "cuda":
        benchmark.extra_info["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
