"""``--cuda-graphs`` (recogfast/engine/graphs.py) and ``--compile MODE``.

On the CPU: the refusal rules (a function of plain values), the CLI's one line, old configs' booleans, and the
captured step's logic without the capture (``CapturedStep(capture=False)``: static buffers and gradients, the
graph-safe optimizer, EMA and accumulation in the step, the batched divergence guard) against the eager loop.
On CUDA (skipped here): the captured run against the eager one, plain and CUBS, bf16, EMA and the schedule.
"""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from recogfast.cli import main
from recogfast.engine import (
    RunConfig, Trainer, TrainerOptions, build_optimizer, build_scheduler, run_train, seed_everything,
)
from recogfast.engine.graphs import CapturedStep, compile_mode, refusal
from recogfast.engine.loop import Diverged

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ------------------------------------------------------------------------------------- refusal rules
@pytest.mark.parametrize("kwargs, words", [
    (dict(device="cpu"), "needs a CUDA device, not 'cpu'"),
    (dict(device="cuda", amp="fp16"), "--amp fp16: the gradient scaler decides on the host"),
    (dict(device="cuda", compile="reduce-overhead"), "--compile reduce-overhead: that mode replays its own"),
    (dict(device="cuda", compile="max-autotune"), "--compile max-autotune: that mode replays its own"),
    (dict(device="cuda", distributed=True), "under torchrun: DDP's gradient all-reduce"),
    (dict(device="cuda", xbm=True), "--xbm: the cross-batch memory reads its fill level on the host"),
    (dict(device="cuda", optimizer="rmsprop"), "optimizer rmsprop has no graph-safe step here (SGD, Adam, AdamW do)"),
])
def test_refusals_name_why_in_one_line(kwargs, words):
    why = refusal(**kwargs)
    assert why is not None and words in why and "\n" not in why, why
    assert why.startswith("--cuda-graphs")


@pytest.mark.parametrize("kwargs", [
    dict(device="cuda"), dict(device="cuda:1", amp="bf16", compile="default", optimizer="sgd"),
    dict(device="cuda", amp="none", compile=True, optimizer="adamw"), dict(device="cuda", optimizer="Adam"),
])
def test_what_can_be_captured_is_not_refused(kwargs):
    assert refusal(**kwargs) is None


def test_an_optimizer_instance_is_judged_by_its_class():
    p = [nn.Parameter(torch.zeros(2))]
    assert refusal("cuda", optimizer=torch.optim.AdamW(p)) is None
    assert "optimizer RMSprop has no graph-safe step" in refusal("cuda", optimizer=torch.optim.RMSprop(p))


def test_compile_modes_and_old_booleans():
    assert [compile_mode(v) for v in (True, False, None, "none", "default", "reduce-overhead", "max-autotune")] == [
        "default", None, None, None, "default", "reduce-overhead", "max-autotune"]
    with pytest.raises(ValueError, match="--compile: expected one of none, default, reduce-overhead, max-autotune"):
        compile_mode("fast")


def test_run_config_refuses_in_one_line():
    with pytest.raises(ValueError, match=r"^--cuda-graphs: capturing the training step in a CUDA graph needs a CUDA "
                                         r"device, not 'cpu'$"):
        RunConfig(cuda_graphs=True, device="cpu").resolved()
    # the rules past the device, as the CPU can check them (resolved() does not look for the GPU)
    with pytest.raises(ValueError, match="--xbm: the cross-batch memory"):
        RunConfig(task="retrieval", cuda_graphs=True, device="cuda", xbm_size=64).resolved()
    with pytest.raises(ValueError, match="--amp fp16"):
        RunConfig(cuda_graphs=True, device="cuda", amp="fp16").resolved()
    with pytest.raises(ValueError, match="--compile: expected one of none, default"):
        RunConfig(compile="fast").resolved()
    assert RunConfig(compile=True).resolved().compile is True  # an old config's boolean still loads
    assert RunConfig(cuda_graphs=True, device="cuda", compile="default").resolved().cuda_graphs


def test_cli_cuda_graphs_on_the_cpu_is_one_line_exit_2(capsys, tmp_path):
    rc = main(["train", "classify", "--cuda-graphs", "--device", "cpu", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0] == ("recogfast: error: --cuda-graphs: capturing the training step in a CUDA graph needs a CUDA "
                      "device, not 'cpu'")
    assert not (tmp_path / "r").exists()


def test_cli_compile_flag_parses_modes_and_a_bare_flag():
    from recogfast.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["train", "classify"]).compile == "none"
    assert parser.parse_args(["train", "classify", "--compile"]).compile == "default"
    assert parser.parse_args(["train", "classify", "--compile", "max-autotune"]).compile == "max-autotune"
    assert parser.parse_args(["train", "classify", "--cuda-graphs"]).cuda_graphs is True


def test_an_old_config_with_compile_true_or_false_still_loads(tmp_path):
    from recogfast.cli.train import _read_run_config

    for old, new in ((True, "default"), (False, "none")):
        path = tmp_path / f"config-{old}.json"
        path.write_text(json.dumps({"task": "classify", "epochs": 2, "compile": old}))
        values = _read_run_config(str(path))
        assert values["compile"] == new and values["epochs"] == 2


# ------------------------------------------------------------------- the captured step, without capture
def _data(n=80, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    x = torch.randn(n, 3, 8, 8, generator=g) + labels.view(-1, 1, 1, 1).float() * 0.3
    return TensorDataset(x, labels)


def _model(classes=4, attention=None):
    # no bias before the BatchNorm (as in a ResNet): its gradient is rounding noise, which Adam amplifies
    layers = [nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()]
    if attention is not None:
        from recogfast.nn import create_attention

        layers.append(create_attention(attention, 8))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))


def _trainer(tmp_path, name, *, device="cpu", optimizer="sgd", accumulate=1, ema=None, amp="none", epochs=2,
             attention=None, lr=0.05, batch_size=16, data=None, cuda_graphs=False):
    seed_everything(0)
    model = _model(attention=attention)
    loader = DataLoader(data or _data(), batch_size=batch_size, shuffle=False)
    opt = build_optimizer(model, optimizer, lr=lr, weight_decay=1e-4)
    steps = -(-len(loader) // accumulate)
    sched, interval = build_scheduler(opt, "cosine", epochs, steps, warmup_epochs=1)
    options = TrainerOptions(epochs=epochs, progress=False, tensorboard=False, plots=False, accumulate=accumulate,
                             ema_decay=ema, amp=amp, channels_last=device != "cpu", cuda_graphs=cuda_graphs)
    return Trainer(model, nn.CrossEntropyLoss(label_smoothing=0.1), loader, None, opt, sched, interval,
                   out_dir=tmp_path / name, options=options, device=device)


def _emulated(trainer):
    """The captured step's buffers, optimizer, EMA, accumulation and guard, without the CUDA graph."""
    trainer.opt.cuda_graphs = True
    trainer.captured = CapturedStep(trainer, capture=False)
    trainer.rewrap = lambda: None  # keep it (a real run captures again after a rewrap)
    return trainer


def _weights(trainer):
    out = {f"model.{k}": v.detach().float().cpu() for k, v in trainer.model.state_dict().items()}
    if trainer.ema is not None:
        out.update({f"ema.{k}": v.detach().float().cpu() for k, v in trainer.ema.state_dict().items()})
    return out


def _close(a, b, rtol, atol):
    assert a.step_losses == pytest.approx(b.step_losses, rel=rtol, abs=atol)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=rtol, atol=atol, msg=k)


@pytest.mark.parametrize("optimizer, accumulate, ema", [("sgd", 1, None), ("adamw", 1, 0.9), ("sgd", 2, 0.8),
                                                        ("adamw", 3, None)])
def test_emulated_captured_run_matches_the_eager_run(tmp_path, optimizer, accumulate, ema):
    # 80 samples / 16 = 5 batches: with accumulate 2 and 3 the epoch's last group is shorter (its own mean)
    eager = _trainer(tmp_path, "eager", optimizer=optimizer, accumulate=accumulate, ema=ema)
    eager.fit()
    graphs = _emulated(_trainer(tmp_path, "graphs", optimizer=optimizer, accumulate=accumulate, ema=ema))
    summary = graphs.fit()
    assert len(graphs.step_losses) == 10 and graphs.global_step == eager.global_step == 2 * -(-5 // accumulate)
    _close(graphs, eager, rtol=1e-4, atol=1e-5)
    # the learning rate lives in a tensor the schedule fills; the log and the checkpoint hold floats
    assert isinstance(graphs.optimizer.param_groups[0]["lr"], torch.Tensor)
    assert graphs.optimizer.param_groups[0]["fused"] is True
    lr = summary["final"]["lr"]
    assert isinstance(lr, float) and lr == pytest.approx(eager.history[-1]["lr"])
    saved = torch.load(tmp_path / "graphs" / "last.pt", weights_only=False)
    group = saved["optimizer"]["param_groups"][0]
    assert isinstance(group["lr"], float) and group["fused"] in (None, False) and group["foreach"] is None
    assert all(isinstance(v, float) for v in saved["scheduler"]["_last_lr"])
    # the static gradients: the same tensors all along, zero after every optimizer step
    assert all(p.grad is not None and not p.grad.any() for p in graphs.model.parameters())


@pytest.mark.parametrize("attention", ["cubs_serial12", "cubs_parallel", "cubs_serial21"])
def test_emulated_captured_step_with_the_fused_cubs_blocks(tmp_path, attention):
    eager = _trainer(tmp_path, "eager", attention=attention, ema=0.9, accumulate=2)
    eager.fit()
    graphs = _emulated(_trainer(tmp_path, "graphs", attention=attention, ema=0.9, accumulate=2))
    graphs.fit()
    _close(graphs, eager, rtol=1e-4, atol=1e-5)


def test_the_trainer_refuses_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^--cuda-graphs: capturing the training step in a CUDA graph needs a CUDA "
                                         r"device, not 'cpu'$"):
        _trainer(tmp_path, "t", cuda_graphs=True)


def test_an_eager_run_resumes_a_captured_runs_checkpoint(tmp_path):
    graphs = _emulated(_trainer(tmp_path, "g", epochs=1))
    graphs.fit()
    eager = _trainer(tmp_path, "g", epochs=2)
    eager.fit(resume=True)
    assert eager.epoch == 2 and isinstance(eager.optimizer.param_groups[0]["lr"], float)
    assert eager.optimizer.param_groups[0]["fused"] in (None, False)


def test_a_short_batch_is_dropped_said_once_and_not_counted(tmp_path, capsys):
    graphs = _emulated(_trainer(tmp_path, "g", data=_data(n=72), epochs=1))  # 4 batches of 16, one of 8
    graphs.opt.progress = True
    row = graphs.train_one_epoch()
    out = capsys.readouterr().out
    assert out.count("note: --cuda-graphs drops a batch of 8 images (the captured step takes 16)") == 1
    assert row["steps"] == 4 and len(graphs.step_losses) == 4 and graphs.captured.dropped == 8
    assert graphs.global_step == 4  # the dropped batch ended its group alone: nothing pending to step


def test_the_guard_reads_losses_in_batches_and_names_the_step(tmp_path):
    graphs = _emulated(_trainer(tmp_path, "g", lr=float("nan"), epochs=1))
    with pytest.raises(Diverged, match=r"epoch 1, step 2 \(global step 2\): loss is nan \(--cuda-graphs reads the "
                                       r"step losses every 32 steps: steps 1-5 ran\); last finite loss 1\.\d+"):
        graphs.fit()
    assert len(graphs.step_losses) == 1  # the first step's loss was finite (NaN weights after its update)
    assert not (tmp_path / "g" / "last.pt").exists()


# ------------------------------------------------------------------------------------- CUDA: captured
@CUDA
@pytest.mark.parametrize("attention", [None, "cubs_serial12", "cubs_parallel", "cubs_serial21"])
@pytest.mark.parametrize("optimizer, accumulate, ema", [("sgd", 1, 0.9), ("adamw", 2, None)])
def test_cuda_captured_run_matches_the_eager_run(tmp_path, attention, optimizer, accumulate, ema):
    kw = dict(device="cuda", optimizer=optimizer, accumulate=accumulate, ema=ema, amp="bf16", attention=attention)
    eager = _trainer(tmp_path, "eager", **kw)
    eager.fit()
    graphs = _trainer(tmp_path, "graphs", cuda_graphs=True, **kw)
    graphs.fit()
    assert set(graphs.captured.graphs) == ({"micro", "final"} if accumulate > 1 else {"final"})
    assert graphs.global_step == eager.global_step
    # bf16 autocast: the fused optimizer and the in-graph EMA round differently from the eager ones
    _close(graphs, eager, rtol=2e-2, atol=2e-3)


@CUDA
def test_cuda_captured_step_does_not_sync(tmp_path):
    graphs = _trainer(tmp_path, "g", device="cuda", cuda_graphs=True, amp="bf16", ema=0.9, attention="cubs_serial12",
                      epochs=1)
    graphs.train_one_epoch()  # captures
    x, y = next(iter(graphs.train_loader))
    x, y = x.cuda().contiguous(memory_format=torch.channels_last), y.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a host sync in the step (replay, schedule, EMA) raises
    try:
        for _ in range(3):
            graphs.captured.step(x, y, final=True, group=1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(graphs.captured.loss).item()


@CUDA
def test_cuda_graphs_run_from_the_config(tmp_path):
    cfg = RunConfig(epochs=1, batch_size=16, images_per_class=4, steps_per_epoch=3, device="cuda", cuda_graphs=True,
                    model="resnet18", out=str(tmp_path / "run"), progress=False, num_workers=0, ema=0.99)
    summary, trainer = run_train(cfg)
    assert trainer.captured is not None and len(trainer.step_losses) == 3 and summary["epochs_run"] == 1
