"""Training guards: a diverged run stops at that step with one line and exit 3, and the checkpoints
keep the last finished epoch (never NaN weights)."""

import json

import pytest
import torch

from recogfast.cli import main
from recogfast.engine import Diverged, RunConfig, run_train


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory):
    from recogfast.data import Shapes196

    folder = tmp_path_factory.mktemp("shapes")
    Shapes196(cache_dir=folder, images_per_class=4)
    return str(folder)


def _argv(shapes_cache, out, *extra):
    return ["train", "classify", "--data", shapes_cache, "--images-per-class", "4", "--model", "tinynet",
            "--image-size", "16", "--batch-size", "32", "--steps-per-epoch", "2", "--workers", "0", "--quiet",
            "--device", "cpu", "--out", str(out), *extra]


def _finite(path):
    state = torch.load(path, weights_only=True)["model"]
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


@pytest.mark.parametrize("extra, what", [(["--lr", "nan"], "loss is nan"), (["--lr", "1e6", "--epochs", "2"], "")])
def test_cli_divergence_is_exit_3_one_line(capsys, tmp_path, shapes_cache, extra, what):
    out = tmp_path / "run"
    assert main(_argv(shapes_cache, out, *extra)) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recogfast: error: training diverged at epoch 1"), err
    assert what in err[0] and "last finite loss" in err[0] and "lr " in err[0] and "--lr" in err[0]
    for name in ("last.pt", "best.pt"):  # nothing finished: nothing written, certainly no NaN weights
        assert not (out / name).exists() or _finite(out / name)
    assert "diverged" in json.load(open(out / "summary.json"))


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, shapes_cache):
    def blow_up(trainer, event, **info):  # after a good epoch 1, a learning rate that diverges
        if event == "epoch" and info["row"]["epoch"] == 1:
            for group in trainer.optimizer.param_groups:
                group["lr"] = float("nan")

    cfg = RunConfig(data=shapes_cache, images_per_class=4, model="tinynet", image_size=16, batch_size=32,
                    steps_per_epoch=2, num_workers=0, progress=False, device="cpu", out=str(tmp_path / "run"),
                    epochs=3, schedule="none", optimizer="adamw")
    with pytest.raises(Diverged, match=r"epoch 2, step 2 .*last finite loss [0-9.]+, lr nan; last.pt keeps epoch 1"):
        run_train(cfg, callbacks=[blow_up])
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and _finite(tmp_path / "run" / "last.pt") and _finite(tmp_path / "run" / "best.pt")
    summary = json.load(open(tmp_path / "run" / "summary.json"))
    assert summary["epochs_run"] == 1 and "epoch 2" in summary["diverged"]


def test_nan_validation_output_stops_the_run(tmp_path, shapes_cache):
    """Metrics refuse NaN logits (FloatingPointError): the trainer turns it into the same stop."""
    cfg = RunConfig(data=shapes_cache, images_per_class=4, model="tinynet", image_size=16, batch_size=32,
                    steps_per_epoch=1, num_workers=0, progress=False, device="cpu", out=str(tmp_path / "run"),
                    epochs=2, schedule="none")

    from recogfast.engine import build_trainer

    trainer = build_trainer(cfg)
    real = trainer.evaluate_fn

    def evaluate(model):
        if trainer.epoch == 1:
            from recogfast.metrics import accuracy

            accuracy(torch.full((4, 10), float("nan")), torch.tensor([0, 1, 2, 3]))
        return real(model)

    trainer.evaluate_fn = evaluate
    with pytest.raises(Diverged, match="epoch 2: validation: accuracy: logits contain NaN"):
        trainer.fit()
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1


def test_bad_files_are_found_before_the_first_step(capsys, tmp_path, shapes_cache):
    """A truncated test image (read only at the end of a run) stops the run before training, naming
    the file; --on-error skip trains without it."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(shapes_cache, cache)
    bad = sorted(cache.rglob("0003.jpg"))[:2]  # the last image of a class: a test image
    bad[0].write_bytes(bad[0].read_bytes()[:200])
    bad[1].write_bytes(b"")
    out = tmp_path / "run"
    assert main(_argv(str(cache), out, "--epochs", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad image file" in err[0] and str(bad[0]) in err[0] and "2 bad files" in err[0], err
    assert not (out / "last.pt").exists() and not (out / "log.csv").exists()
    assert main(_argv(str(cache), out, "--epochs", "1", "--on-error", "skip")) == 0
    assert "2 unreadable image files will be skipped" in capsys.readouterr().out


def test_fp16_scaler_still_skips_overflowing_gradients(tmp_path):
    """AMP's GradScaler skips a step whose gradients overflow (and lowers its scale): the loss is
    finite, so the divergence guard lets the run go on."""
    from test_engine import _trainer

    class InfGrad(torch.autograd.Function):  # identity forward; an inf gradient on the 3rd step
        calls = 0

        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            InfGrad.calls += 1
            return g * float("inf") if InfGrad.calls == 3 else g

    t = _trainer(tmp_path, epochs=2, amp="fp16")
    loss = t.loss_fn
    t.loss_fn = lambda out, y: loss(InfGrad.apply(out), y)
    t.fit()
    assert t.epoch == 2 and t.scaler.get_scale() < 65536.0  # one skipped step halved the scale
    assert all(bool(torch.isfinite(p).all()) for p in t.model.parameters())
