"""Every bad command line is one line on stderr, exit 2, no traceback; RunConfig (the Python API)
refuses the same values with the same message (recogfast/engine/validate.py holds the ranges)."""

import pytest
import torch

from recogfast.cli import main
from recogfast.engine import RunConfig

# (argv after `train classify`, RunConfig fields or None (a CLI-only check), the message's start)
RANGE_CASES = [
    (["--weight-decay", "-1"], {"weight_decay": -1.0}, "--weight-decay: expected a number >= 0, got -1.0"),
    (["--weight-decay", "inf"], {"weight_decay": float("inf")}, "--weight-decay: expected a number >= 0, got inf"),
    (["--warmup-epochs", "-1"], {"warmup_epochs": -1.0}, "--warmup-epochs: expected a number >= 0, got -1.0"),
    (["--gamma", "0", "--schedule", "step"], {"gamma": 0.0, "schedule": "step"}, "--gamma: expected a number in (0, 1), got 0.0"),
    (["--workers", "-1"], {"num_workers": -1}, "--workers: expected an integer in [0, 256], got -1"),
    (["--amp", "fp16", "--device", "cpu"], {"amp": "fp16", "device": "cpu"}, "--amp fp16: fp16 autocast with a gradient scaler needs a CUDA device"),
    (["--label-smoothing", "2"], {"label_smoothing": 2.0}, "--label-smoothing: expected a number in [0, 1), got 2.0"),
    (["--image-size", "1"], {"image_size": 1}, "--image-size: expected an integer in [16, 4096], got 1"),
    (["--lr", "-0.1"], {"lr": -0.1}, "--lr: expected a number > 0, got -0.1"),
    (["--lr", "0"], {"lr": 0.0}, "--lr: expected a number > 0, got 0.0"),
    (["--momentum", "1.5"], {"momentum": 1.5}, "--momentum: expected a number in [0, 1), got 1.5"),
    (["--epochs", "0"], {"epochs": 0}, "--epochs: expected an integer >= 1, got 0"),
    (["--batch-size", "0"], {"batch_size": 0}, "--batch-size: expected an integer >= 1, got 0"),
    (["--crop-scale", "0"], {"crop_scale": 0.0}, "--crop-scale: expected a number in (0, 1], got 0.0"),
    (["--val-fraction", "1"], {"val_fraction": 1.0}, "--val-fraction: expected a number in [0, 1), got 1.0"),
    (["--min-delta", "-1"], {"min_delta": -1.0}, "--min-delta: expected a number >= 0, got -1.0"),
    (["--plateau-patience", "-1"], {"plateau_patience": -1}, "--plateau-patience: expected an integer >= 0, got -1"),
    (["--step-size", "0"], {"step_size": 0}, "--step-size: expected an integer >= 1, got 0"),
    (["--patience", "0"], {"patience": 0}, "--patience: expected an integer >= 1, got 0"),
    (["--steps-per-epoch", "0"], {"steps_per_epoch": 0}, "--steps-per-epoch: expected an integer >= 1, got 0"),
    (["--seed", "-1"], {"seed": -1}, "--seed: expected an integer in [0, 2**63), got -1"),
    (["--embedding-dim", "0"], {"embedding_dim": 0}, "--embedding-dim: expected an integer >= 1, got 0"),
    (["--images-per-class", "1"], {"images_per_class": 1}, "--images-per-class: expected an integer >= 2, got 1"),
    (["--ms-alpha", "0"], {"ms_alpha": 0.0}, "--ms-alpha: expected a number > 0, got 0.0"),
    (["--ms-base", "5"], {"ms_base": 5.0}, "--ms-base: expected a number in [-1, 1] (a cosine similarity), got 5.0"),
    # augmentation (recogfast.data.augment)
    (["--hflip", "1.5"], {"hflip": 1.5}, "--hflip: expected a probability in [0, 1], got 1.5"),
    (["--hflip", "-0.1"], {"hflip": -0.1}, "--hflip: expected a probability in [0, 1], got -0.1"),
    (["--vflip", "2"], {"vflip": 2.0}, "--vflip: expected a probability in [0, 1], got 2.0"),
    (["--reprob", "-1"], {"reprob": -1.0}, "--reprob: expected a probability in [0, 1], got -1.0"),
    (["--color-jitter", "-0.4"], {"color_jitter": -0.4}, "--color-jitter: expected a number >= 0 (0 = off), got -0.4"),
    (["--color-jitter", "inf"], {"color_jitter": float("inf")}, "--color-jitter: expected a number >= 0 (0 = off), got inf"),
    (["--auto-augment", "randaugment", "--aa-magnitude", "31"], {"auto_augment": "randaugment", "aa_magnitude": 31},
     "--aa-magnitude: expected an integer in [0, 30] (RandAugment's 31 magnitude bins), got 31"),
    (["--auto-augment", "randaugment", "--aa-num-ops", "0"], {"auto_augment": "randaugment", "aa_num_ops": 0},
     "--aa-num-ops: expected an integer >= 1, got 0"),
    (["--auto-augment", "trivialaugment", "--aa-magnitude", "5"], {"auto_augment": "trivialaugment", "aa_magnitude": 5},
     "--aa-magnitude: RandAugment's (--auto-augment randaugment), not trivialaugment's"),
    (["--aa-num-ops", "3"], {"aa_num_ops": 3}, "--aa-num-ops: RandAugment's (--auto-augment randaugment), not none's"),
]
RETRIEVAL_CASES = [
    (["--xbm", "-5"], {"xbm_size": -5}, "--xbm: expected an integer >= 0 (0 = off), got -5"),
    (["--m-per-class", "1"], {"m_per_class": 1}, "--m-per-class: expected an integer >= 2"),
]


def _err(capsys, argv, rc=2):
    got = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert got == rc, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert len(lines) == 1 and lines[0].startswith("recogfast: error: "), lines
    return lines[0][len("recogfast: error: "):]


@pytest.mark.parametrize("task, argv, fields, message",
                         [("classify", *c) for c in RANGE_CASES] + [("retrieval", *c) for c in RETRIEVAL_CASES])
def test_bad_numbers_same_message_cli_and_api(capsys, tmp_path, task, argv, fields, message):
    out = tmp_path / "run"
    text = _err(capsys, ["train", task, "--out", str(out), *argv])
    assert text.startswith(message), text
    with pytest.raises(ValueError) as info:
        RunConfig(task=task, out=str(out), **fields).resolved()
    assert str(info.value) == text
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("argv, message", [
    (["--auto-augment", "augmix"], "argument --auto-augment: invalid choice: 'augmix'"),
    (["--aa-magnitude", "4.5"], "argument --aa-magnitude: invalid int value: '4.5'"),
    (["--aa-num-ops", "two"], "argument --aa-num-ops: invalid int value: 'two'"),
    (["--hflip", "half"], "argument --hflip: invalid float value: 'half'"),
])
def test_bad_augmentation_words_are_one_line(capsys, tmp_path, argv, message):
    text = _err(capsys, ["train", "classify", "--out", str(tmp_path / "run"), *argv])
    assert text.startswith(message), text


def test_api_refuses_wrong_augmentation_types():
    with pytest.raises(ValueError, match=r"^--auto-augment: expected one of none, randaugment, trivialaugment, "
                                         r"autoaugment, got 'augmix'$"):
        RunConfig(auto_augment="augmix").resolved()
    with pytest.raises(ValueError, match=r"^--aa-magnitude: expected an integer in \[0, 30\].*, got 4.5$"):
        RunConfig(auto_augment="randaugment", aa_magnitude=4.5).resolved()
    with pytest.raises(ValueError, match=r"^--hflip: expected a probability in \[0, 1\], got 'yes'$"):
        RunConfig(hflip="yes").resolved()
    ok = RunConfig(auto_augment="randaugment", aa_magnitude=0, aa_num_ops=1, hflip=0, vflip=1, reprob=1.0,
                   color_jitter=3.0).resolved()
    assert (ok.aa_magnitude, ok.aa_num_ops, ok.hflip, ok.vflip) == (0, 1, 0, 1)


def test_api_refuses_wrong_types():
    with pytest.raises(ValueError, match=r"--epochs: expected an integer >= 1, got 2.5"):
        RunConfig(epochs=2.5).resolved()
    with pytest.raises(ValueError, match=r"--optimizer: expected one of sgd, adamw, got 'adam'"):
        RunConfig(optimizer="adam").resolved()


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory):
    from recogfast.data import Shapes196

    folder = tmp_path_factory.mktemp("shapes")
    Shapes196(cache_dir=folder, images_per_class=4)
    return str(folder)


def _base(shapes_cache, out, task="classify"):
    return ["train", task, "--data", shapes_cache, "--images-per-class", "4", "--model", "tinynet",
            "--image-size", "16", "--batch-size", "32", "--steps-per-epoch", "1", "--epochs", "1", "--workers", "0",
            "--quiet", "--device", "cpu", "--out", str(out)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_cache):
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(_base(shapes_cache, out)) == 0
    return out


def test_out_folder_errors(capsys, tmp_path, shapes_cache):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "cannot be created or written: Not a directory" in _err(capsys, _base(shapes_cache, blocker / "run"))
    assert "is a file, not a folder" in _err(capsys, _base(shapes_cache, blocker))
    assert "--out: " in _err(capsys, _base(shapes_cache, "/proc/recogfast-no/run"))
    assert "--out: " in _err(capsys, _base(shapes_cache, "/sys/recogfast-no"))
    with pytest.raises(ValueError, match="--out: the run folder .* cannot be created"):
        from recogfast.engine import build_trainer

        build_trainer(RunConfig(out=str(blocker / "run"), device="cpu"))


def test_resume_errors(capsys, tmp_path, shapes_cache, trained):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "--resume: nothing to resume" in _err(capsys, _base(shapes_cache, empty) + ["--resume"])
    assert not (empty / "config.json").exists()
    ckpt = str(trained / "last.pt")
    cases = [(["--model", "resnet18"], "model is 'tinynet' there, 'resnet18' here"),
             (["--image-size", "32"], "image_size is 16 there, 32 here")]
    for extra, message in cases:
        assert message in _err(capsys, _base(shapes_cache, tmp_path / "other") + extra + ["--resume", ckpt])
    retrieval = _base(shapes_cache, tmp_path / "r", task="retrieval") + ["--resume", ckpt]
    assert "task is 'classify' there, 'retrieval' here" in _err(capsys, retrieval)
    # the Python API: the same refusal, and a fresh folder is not taken for a resumable one
    from recogfast.engine import ResumeError, build_trainer

    cfg = RunConfig(data=shapes_cache, images_per_class=4, model="tinynet", image_size=16, batch_size=32,
                    num_workers=0, device="cpu", progress=False, out=str(tmp_path / "api"), epochs=1)
    with pytest.raises(ResumeError, match="nothing to resume"):
        build_trainer(cfg).fit(resume=True)


def test_partial_weights(capsys, tmp_path, shapes_cache, trained):
    stem_only = tmp_path / "stem.pth"  # a 7×7 ImageNet stem and nothing else: nothing of tinynet loads
    torch.save({"conv1.weight": torch.randn(64, 3, 7, 7)}, stem_only)
    text = _err(capsys, _base(shapes_cache, tmp_path / "a") + ["--weights", str(stem_only)])
    assert "only 0 of the backbone's" in text and "--weights-partial" in text and "1 unused: conv1" in text
    assert main(_base(shapes_cache, tmp_path / "b") + ["--weights", str(stem_only), "--weights-partial"]) == 0
    # a classifier's best.pt into a retrieval run: the backbone loads whole, the classifier is dropped
    assert main(_base(shapes_cache, tmp_path / "c", task="retrieval") + ["--weights", str(trained / "best.pt")]) == 0
    assert "loaded" in capsys.readouterr().out
    wrong = tmp_path / "wrong.pth"  # shapes that differ outside the stem / classifier
    state = torch.load(trained / "best.pt", weights_only=True)["model"]
    key = next(k for k, v in state.items() if v.ndim == 4 and not k.startswith("fc."))
    state[key] = torch.zeros(1, 1, 1, 1)
    torch.save(state, wrong)
    assert "does not fit the model" in _err(capsys, _base(shapes_cache, tmp_path / "d") + ["--weights", str(wrong)])
