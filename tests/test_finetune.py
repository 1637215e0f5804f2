"""The fine-tuning recipe: frozen stages (parameters and BatchNorm statistics untouched by a step, also
after model.train()), a head learning-rate factor, weight EMA (torch's AveragedModel) against its
closed form, gradient accumulation against one larger batch (fp64, no BatchNorm), MixUp/CutMix soft
labels, and exact resume with all of them on."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from recogfast.engine import RunConfig, Trainer, TrainerOptions, build_optimizer, build_scheduler, load_checkpoint
from recogfast.engine.finetune import Freezer, batch_mix, scored_weights
from recogfast.models import create_model
from test_engine import Killed, _data, _evaluate, _model
from test_runs import shapes_cache  # noqa: F401,F811  (the fixture)


def test_freeze_leaves_frozen_weights_and_bn_statistics_bit_identical():
    model = create_model("resnet18", num_classes=5, stem="small")
    opt = build_optimizer(model, "sgd", lr=0.5, weight_decay=1e-2, head_lr_mult=10.0)  # before freezing: holds all
    freezer = Freezer(model, "layer1")
    frozen = ("conv1.", "bn1.", "layer1.")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()  # the frozen BatchNorm layers stay in eval mode
    assert not model.bn1.training and not model.layer1[1].bn2.training and model.layer2[0].bn1.training
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    after = model.state_dict()
    for name, value in after.items():
        if name.startswith(frozen):
            assert torch.equal(value, before[name]), name  # weights, running_mean/var, num_batches_tracked
    assert not torch.equal(after["layer2.0.bn1.running_mean"], before["layer2.0.bn1.running_mean"])
    assert not torch.equal(after["layer2.0.conv1.weight"], before["layer2.0.conv1.weight"])
    assert all(p.grad is None for p in freezer.parameters())
    # the head's groups run at 10x the rate
    rates = sorted({g["lr"] for g in opt.param_groups if g["params"]})
    assert rates == [0.5, 5.0]
    head = {id(p) for p in model.fc.parameters()}
    assert all(g["lr"] == 5.0 for g in opt.param_groups for p in g["params"] if id(p) in head)
    freezer.set_frozen(False)  # --unfreeze-at: everything trains again, BatchNorm too
    model.train()
    assert model.bn1.training and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="TinyNet has no conv1"):
        Freezer(create_model("tinynet", num_classes=5), "stem")


def _run(tmp_path, epochs=3, callbacks=(), accumulate=1, ema=None, mix=None, evaluate=True):
    torch.manual_seed(0)
    model, train = _model(), _data()
    loader = DataLoader(train, batch_size=16, shuffle=True)
    opt = build_optimizer(model, "sgd", lr=0.05, weight_decay=1e-4)
    steps = -(-len(loader) // accumulate)
    sched, interval = build_scheduler(opt, "cosine", epochs, steps, warmup_epochs=1)
    options = TrainerOptions(epochs=epochs, progress=False, tensorboard=False, plots=False, accumulate=accumulate,
                             ema_decay=ema, config={"ema": ema, "accumulate": accumulate})
    return Trainer(model, nn.CrossEntropyLoss(), loader, _evaluate(_data(seed=1)) if evaluate else None, opt, sched,
                   interval, out_dir=tmp_path, options=options, callbacks=list(callbacks), batch_transform=mix)


def test_ema_equals_the_closed_form_and_is_what_val_scores(tmp_path):
    decay, weights, scored = 0.8, [], []

    def record(trainer, event, **info):
        if event == "step" and info["optimizer_step"]:
            weights.append({k: v.detach().double().clone() for k, v in trainer.model.state_dict().items()
                            if v.is_floating_point()})

    t = _run(tmp_path, epochs=1, callbacks=[record], ema=decay)
    real_eval = t.evaluate_fn
    t.evaluate_fn = lambda m: (scored.append(m), real_eval(m))[1]
    t.fit()
    k = len(weights)
    assert k == 6 and scored == [t.ema.module]
    ema = t.ema.module.state_dict()
    for name in weights[0]:
        # AveragedModel starts from the weights after the first step, then ema = d * ema + (1 - d) * w
        closed = decay ** (k - 1) * weights[0][name] + sum(
            (1 - decay) * decay ** (k - 1 - j) * weights[j][name] for j in range(1, k))
        torch.testing.assert_close(ema[name].double(), closed, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ema["6.weight"], t.model.state_dict()["6.weight"])
    saved = scored_weights(load_checkpoint(tmp_path / "last.pt"))  # what recogfast eval / export load
    assert all(torch.equal(saved[n], v) for n, v in ema.items())


def test_accumulation_gives_the_gradient_of_one_larger_batch():
    torch.manual_seed(0)
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randint(0, 3, (64,))
    init = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    grads = {}

    def run(batch, accumulate, steps):
        model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()
        model.load_state_dict(init.state_dict())
        loader = DataLoader(TensorDataset(x, y), batch_size=batch)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the gradients compared at the same weights
        options = TrainerOptions(epochs=1, progress=False, tensorboard=False, plots=False, accumulate=accumulate,
                                 steps_per_epoch=steps)

        def grab(trainer, event, **info):
            if event == "step" and info["optimizer_step"]:
                grads.setdefault(batch, []).append([p.grad.clone() for p in model.parameters()])

        t = Trainer(model, nn.CrossEntropyLoss(), loader, None, opt, out_dir="/nonexistent-unused", options=options,
                    callbacks=[grab])
        t.is_main = False  # no files
        t.train_one_epoch()
        return t, model

    small, small_model = run(4, 4, 6)  # 6 batches of 4: one group of 4, then a short group of 2
    big, big_model = run(16, 1, 1)
    pair, _ = run(8, 1, 3)
    assert small.global_step == 2 and len(small.step_losses) == 6
    for a, b in zip(grads[4][0], grads[16][0]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    for a, b in zip(grads[4][1], grads[8][2]):  # the short group: the mean over its 2 batches (rows 16..23)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert len(grads[4]) == 2


def test_mixup_and_cutmix_soft_labels_sum_to_one():
    torch.manual_seed(0)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 5
    images, soft = batch_mix(5, mixup=0.4)(x, y)
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    lam = float(soft[0, y[0]]) if y[0] != y[-1] else None
    if lam is not None:  # MixUp mixes each image with the previous one in the batch: lam x + (1 - lam) x'
        torch.testing.assert_close(images, lam * x + (1 - lam) * x.roll(1, 0))
    images, soft = batch_mix(5, cutmix=1.0)(x, y)
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    own = (images == x).all(1).float().mean((1, 2))  # the share of each image's pixels that are its own
    rows = [i for i in range(8) if y[i] != y[i - 1]]
    torch.testing.assert_close(soft[rows, y[rows]], own[rows])
    assert batch_mix(5) is None
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)(torch.randn(8, 5), soft)  # probabilities as targets
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="--mixup: classification only, not retrieval"):
        RunConfig(task="retrieval", mixup=0.2).resolved()
    with pytest.raises(ValueError, match="--unfreeze-at needs --freeze"):
        RunConfig(unfreeze_at=3).resolved()
    with pytest.raises(ValueError, match=r"--ema: expected a number in \(0, 1\)"):
        RunConfig(ema=1.0).resolved()


def test_resume_is_exact_with_ema_accumulation_and_mixup(tmp_path):
    def kw():
        return dict(accumulate=4, ema=0.9, mix=batch_mix(4, mixup=0.4, cutmix=1.0))  # 6 batches: groups of 4 + 2

    full = _run(tmp_path / "full", **kw())
    full.fit()

    def kill(trainer, event, **info):
        if event == "step" and trainer.epoch == 2 and info["step"] == 4:  # mid-group in epoch 3
            raise Killed

    run = _run(tmp_path / "killed", callbacks=[kill], **kw())
    with pytest.raises(Killed):
        run.fit()
    torch.manual_seed(12345)  # another process
    resumed = _run(tmp_path / "killed", **kw())
    resumed.fit(resume=True)
    assert resumed.step_losses == full.step_losses[12:] and resumed.global_step == full.global_step == 6
    for a, b in zip(list(resumed.model.state_dict().values()) + list(resumed.ema.state_dict().values()),
                    list(full.model.state_dict().values()) + list(full.ema.state_dict().values())):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [r["val_top1"] for r in resumed.history] == [r["val_top1"] for r in full.history]


def test_cli_fine_tuning_run_and_refusals(tmp_path, shapes_cache, capsys, monkeypatch):
    from recogfast.cli import main
    from test_runs import _base, _error

    monkeypatch.setattr("recogfast.report.after.report_after_training", lambda *a, **k: None)  # not under test here
    out = tmp_path / "ft"
    argv = _base(shapes_cache, model="resnet18") + [
        "--steps-per-epoch", "1", "--epochs", "2", "--stem", "imagenet", "--no-channels-last", "--freeze", "layer2", "--unfreeze-at", "2",
        "--head-lr-mult", "5", "--ema", "0.9", "--accumulate", "2", "--mixup", "0.2", "--cutmix", "1.0",
        "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "TEST (epoch" in text
    import json

    saved = json.load(open(out / "config.json"))
    assert (saved["freeze"], saved["unfreeze_at"], saved["ema"], saved["accumulate"], saved["mixup"]) == \
        ("layer2", 2, 0.9, 2, 0.2)
    last = load_checkpoint(out / "last.pt")
    assert last["global_step"] == 2 and int(last["ema"]["n_averaged"]) == 2  # one optimizer step an epoch
    base = _base(shapes_cache) + ["--out", str(tmp_path / "x")]
    assert "--mixup: classification only, not retrieval" in _error(capsys, base[:1] + ["retrieval"] + base[2:] + ["--mixup", "0.2"])
    assert "TinyNet has no conv1" in _error(capsys, base + ["--freeze", "stem"])
    assert "--unfreeze-at needs --freeze" in _error(capsys, base + ["--unfreeze-at", "3"])
    assert "--accumulate: expected an integer >= 1, got 0" in _error(capsys, base + ["--accumulate", "0"])
