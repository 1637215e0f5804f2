"""Training engine: exact resume, early stopping, checkpoints, schedules, logs (small synthetic data)."""

import csv
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from recogfast.engine import (
    Trainer,
    TrainerOptions,
    WarmupCosine,
    atomic_save,
    build_optimizer,
    build_scheduler,
    load_checkpoint,
    seed_everything,
)
from recogfast.metrics import AccuracyMeter


class Killed(Exception):
    pass


def _data(n=96, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    x = torch.randn(n, 3, 8, 8, generator=g) + labels.view(-1, 1, 1, 1).float() * 0.3
    return TensorDataset(x, labels)


def _model(classes=4):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.2),  # dropout: uses the RNG
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes),
    )


def _evaluate(ds):
    def run(model):
        meter = AccuracyMeter((1,))
        for x, y in DataLoader(ds, batch_size=32):
            meter.update(model(x), y)
        return meter.compute()

    return run


def _trainer(tmp_path, schedule="cosine", epochs=4, patience=None, callbacks=(), amp="none", val=None, optimizer="sgd"):
    seed_everything(0)
    train, val = _data(), val or _data(seed=1)
    model = _model()
    loader = DataLoader(train, batch_size=16, shuffle=True)  # shuffling draws from the global torch RNG
    opt = build_optimizer(model, optimizer, lr=0.05, weight_decay=1e-4)
    sched, interval = build_scheduler(opt, schedule, epochs, len(loader), warmup_epochs=1, step_size=1, gamma=0.5, plateau_patience=0)
    options = TrainerOptions(epochs=epochs, monitor="top1", patience=patience, amp=amp, progress=False, tensorboard=False, plots=False, config={"x": 1})
    return Trainer(model, nn.CrossEntropyLoss(label_smoothing=0.1), loader, _evaluate(val), opt, sched, interval,
                   out_dir=tmp_path, options=options, callbacks=list(callbacks))


@pytest.mark.parametrize("schedule", ["cosine", "step", "plateau"])
def test_resume_gives_the_same_losses(tmp_path, schedule):
    full = _trainer(tmp_path / "full", schedule)
    full.fit()
    steps_per_epoch = len(full.step_losses) // 4

    def kill_in_epoch_3(trainer, event, **info):
        if event == "step" and trainer.epoch == 2 and info["step"] == 2:
            raise Killed

    run = _trainer(tmp_path / "killed", schedule, callbacks=[kill_in_epoch_3])
    with pytest.raises(Killed):
        run.fit()
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 2
    # A new process: fresh model and optimizer, another RNG state, then --resume.
    torch.manual_seed(12345)
    resumed = _trainer(tmp_path / "killed", schedule)
    torch.manual_seed(999)
    resumed.fit(resume=True)
    assert resumed.epoch == 4
    assert resumed.step_losses == full.step_losses[2 * steps_per_epoch :]  # bit-identical
    for a, b in zip(resumed.model.state_dict().values(), full.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [r["val_top1"] for r in resumed.history] == [r["val_top1"] for r in full.history]
    assert resumed.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"]


def test_early_stopping_and_best_checkpoint(tmp_path):
    # Random validation labels: accuracy cannot keep improving, so patience 1 stops the run early.
    noise = TensorDataset(torch.randn(64, 3, 8, 8), torch.randint(0, 4, (64,)))
    t = _trainer(tmp_path, epochs=30, patience=1, val=noise)
    summary = t.fit()
    assert summary["stopped_early"] and summary["epochs_run"] < 30
    vals = [r["val_top1"] for r in t.history]
    assert summary["best_value"] == max(vals) and t.history[summary["best_epoch"] - 1]["val_top1"] == max(vals)
    assert vals[-1] <= max(vals) and t.bad_epochs == 1
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == summary["best_epoch"]
    # outputs: CSV with one row per epoch, JSON summary
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert len(rows) == summary["epochs_run"] and "val_top1" in rows[0] and "train_loss" in rows[0]
    js = json.load(open(tmp_path / "summary.json"))
    assert js["stopped_early"] and js["best_epoch"] == summary["best_epoch"] and js["config"] == {"x": 1}
    # resuming a finished (early-stopped) run does not train further
    again = _trainer(tmp_path, epochs=30, patience=1, val=noise)
    again.fit(resume=True)
    assert again.step_losses == [] and again.epoch == summary["epochs_run"]


def test_learns_and_bf16_autocast(tmp_path):
    t = _trainer(tmp_path, epochs=6, amp="bf16", optimizer="adamw")
    t.fit()
    assert t.history[-1]["train_loss"] < t.history[0]["train_loss"]
    assert t.best_value >= 0.5  # 4 separable classes


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_save({"model": {"w": torch.ones(2)}}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"model": {}, "bad": Boom()}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary left behind
    (tmp_path / "junk.pt").write_text("garbage")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_warmup_cosine_shape():
    f = WarmupCosine(total=100, warmup=10, floor=0.0, start=0.0)
    assert f(0) == 0.0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0, abs=1e-12)
    vals = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    with pytest.raises(ValueError, match="schedule must be one of"):
        build_scheduler(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1), "linear", 1, 1)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer(nn.Linear(2, 2), "adam")


def test_plots_written(tmp_path):
    pytest.importorskip("matplotlib")
    t = _trainer(tmp_path, epochs=2)
    t.opt.plots = True
    summary = t.fit()
    assert sorted(p.rsplit("/", 1)[-1] for p in summary["plots"]) == ["loss.png", "metrics.png"]
    assert (tmp_path / "loss.png").stat().st_size > 1000 and (tmp_path / "metrics.png").is_file()


def test_fp16_autocast_with_grad_scaler(tmp_path):
    t = _trainer(tmp_path, epochs=1, amp="fp16")
    t.fit()
    assert all(torch.isfinite(torch.tensor(t.step_losses)))
    assert load_checkpoint(tmp_path / "last.pt")["scaler"]["scale"] > 0  # the scaler's state is checkpointed


def test_stop_training_callback(tmp_path):
    from recogfast.engine import StopTraining

    def stop(trainer, event, **info):
        if event == "step" and trainer.epoch == 1 and info["step"] == 1:
            raise StopTraining

    t = _trainer(tmp_path, epochs=4, callbacks=[stop])
    summary = t.fit()
    assert summary["epochs_run"] == 1 and len(t.step_losses) == len(t.train_loader) + 2
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1 and (tmp_path / "summary.json").is_file()


def test_progress_bar_is_tqdm_on_a_terminal_and_lines_in_logs():
    import io

    from recogfast.engine.logs import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    bar = Progress(4, "epoch 1/2", stream=term, interval=0)  # every update drawn
    assert bar.bar is not None  # tqdm
    for _ in range(4):
        bar.update(32, loss=1.25, lr=0.1)
    bar.close()
    text = term.getvalue()
    assert "epoch 1/2" in text and "4/4" in text and "loss=1.25" in text and "img/s=" in text
    log = io.StringIO()  # not a terminal: nothing for a short epoch (its epoch line follows)
    bar = Progress(4, "epoch 1/2", stream=log)
    for _ in range(4):
        bar.update(32, loss=1.25)
    bar.close()
    assert log.getvalue() == ""
    log = io.StringIO()  # a long one: plain lines, one per interval, never the last step's
    bar = Progress(4, "epoch 1/2", stream=log, interval=0)
    for _ in range(4):
        bar.update(32, loss=1.25)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 3 and lines[2].startswith("epoch 1/2 3/4  loss 1.25") and "\r" not in log.getvalue()
