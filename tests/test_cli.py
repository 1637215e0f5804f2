"""The `recogfast` command line: error paths (one line, exit 2), a tiny train → resume → eval cycle,
and a smoke run of the demo (a few steps; the learning itself is tested in test_learning.py)."""

import csv
import json
import os

import pytest
import torch

from recogfast.cli import main


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory):
    # 4 images per class: 3 train / 1 test for classification, 98 × 4 per retrieval split
    from recogfast.data import Shapes196

    folder = tmp_path_factory.mktemp("shapes")
    Shapes196(cache_dir=folder, images_per_class=4)
    return str(folder)


def _one_line_error(capsys, argv, pattern):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("recogfast: error: "), err
    assert pattern in err[0], err[0]


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["train", "classify", "--model", "resnet19"], "unknown model 'resnet19'; choose one of: tinynet"),
        (["train", "classify", "--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["train", "classify", "--dataset", "cars196", "--data", "/nonexistent/cars"], "data folder not found: /nonexistent/cars"),
        (["train", "classify", "--dataset", "tiny-imagenet"], "--data DIR is required for tiny-imagenet"),
        (["train", "retrieval", "--dataset", "tiny-imagenet", "--data", "."], "retrieval needs disjoint"),
        (["train", "classify", "--epochs", "0"], "--epochs: expected an integer >= 1, got 0"),
        (["train", "nonsense"], "invalid choice: 'nonsense'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["eval", "--checkpoint", "/nonexistent/best.pt"], "checkpoint not found: /nonexistent/best.pt"),
        (["train", "classify", "--weights", "/nonexistent/w.pth"], "weights file not found"),
        (["demo", "--model", "nope"], "unknown model 'nope'"),
        (["demo", "--tasks", "classify,nope"], "--tasks: unknown task 'nope'; choose from: classify, retrieval"),
        (["train", "classify", "--device", "tpu"], "device"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, pattern):
    _one_line_error(capsys, argv, pattern)


def test_unreadable_files_are_one_line_errors(capsys, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    _one_line_error(capsys, ["eval", "--checkpoint", str(junk)], "cannot read checkpoint")
    _one_line_error(capsys, ["train", "classify", "--resume", str(junk)], "cannot read checkpoint")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(capsys, ["train", "classify", "--dataset", "cars196", "--data", str(empty)], "cars_annos.mat")
    _one_line_error(capsys, ["train", "classify", "--dataset", "tiny-imagenet", "--data", str(empty)], "wnids.txt")
    _one_line_error(capsys, ["train", "classify", "--weights", str(junk), "--data", str(empty)], "cannot read weights file")


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "CPU kernels" in out and "cubs_resnet18_serial21" in out


def test_train_resume_eval(capsys, tmp_path, shapes_cache):
    out = tmp_path / "run"
    base = ["train", "classify", "--dataset", "shapes196", "--data", shapes_cache, "--images-per-class", "4",
            "--model", "tinynet", "--image-size", "16", "--batch-size", "32", "--steps-per-epoch", "2",
            "--workers", "0", "--optimizer", "adamw", "--out", str(out), "--quiet", "--device", "cpu"]
    assert main(base + ["--epochs", "1"]) == 0
    for name in ("last.pt", "best.pt", "log.csv", "summary.json"):
        assert (out / name).is_file(), name
    assert main(base + ["--epochs", "2", "--resume"]) == 0  # continues from epoch 1
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    summary = json.load(open(out / "summary.json"))
    assert summary["epochs_run"] == 2 and summary["global_step"] == 4
    assert summary["config"]["model"] == "tinynet" and "kernels" in summary["config"]
    # three splits: 1 of the 3 train images of each class is held out for validation (--val-fraction 0.1)
    assert summary["config"]["train_images"] == 2 * 196 and summary["config"]["val_images"] == 196
    assert summary["val"]["epoch"] == summary["best_epoch"] and summary["test"]["epoch"] == summary["best_epoch"]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--workers", "0", "--device", "cpu"]) == 0
    result = json.load(open(out / "eval-test.json"))  # written into the run folder; printed rounded
    printed = json.loads(capsys.readouterr().out)
    assert result["split"] == "test" and result["images"] == 196 and 0.0 <= result["top1"] <= 1.0
    assert printed["top1"] == round(result["top1"], 4)
    assert result["top1"] == pytest.approx(summary["test"]["top1"])  # the run's test line is best.pt on test
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--split", "val", "--workers", "0", "--device", "cpu"]) == 0
    val = json.load(open(out / "eval-val.json"))
    best_row = torch.load(out / "best.pt", weights_only=True)["history"][summary["best_epoch"] - 1]
    assert val["images"] == 196 and val["top1"] == pytest.approx(best_row["val_top1"])
    capsys.readouterr()
    assert main(["compare", str(out), str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and "tinynet" in table[1] and "val top1" in table[0] and "test top1" in table[0]
    _one_line_error(capsys, ["compare", str(tmp_path / "nowhere")], "cannot read")
    # Recall@K of the classifier's pooled features on the unseen-class split (with a note: it saw them)
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--features", "--workers", "0", "--device", "cpu"]) == 0
    feats = json.loads(capsys.readouterr().out)
    assert feats["features"] and feats["classes"] == 98 and 0.0 <= feats["recall@1"] <= feats["recall@8"] <= 1.0
    assert (out / "eval-test-features.json").is_file()


def test_demo_smoke(capsys, tmp_path, shapes_cache):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--data", shapes_cache, "--images-per-class", "4", "--image-size", "16",
               "--classify-epochs", "1", "--retrieval-epochs", "2", "--steps-per-epoch", "1", "--batch-size", "32",
               "--workers", "0", "--device", "cpu", "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    for needle in ("classification: chance", "classification: trained", "retrieval: raw pixels", "retrieval: untrained net",
                   "retrieval: trained (MS loss)", "kernels that ran", "cubs_spatial", "multilabel: label frequency",
                   "multilabel: trained (BCE)", "verification (retrieval)"):
        assert needle in text, needle
    result = json.load(open(out / "demo.json"))
    assert set(result["retrieval"]) >= {"raw_pixels", "untrained", "trained"}
    # the reported model is the last epoch's, scored on test once: no validation, no selection, and
    # no epoch line reads the test split
    rows = list(csv.DictReader(open(out / "retrieval" / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and not any(k.startswith("val_") for k in rows[0])
    summary = json.load(open(out / "retrieval" / "summary.json"))
    assert summary["val"] is None and summary["test"]["epoch"] == 2 and result["retrieval"]["epoch"] == 2
    assert result["retrieval"]["trained"]["recall@1"] == summary["test"]["recall@1"]
    assert "fused cpu/float32" in result["kernels"]["cubs_channel"]
    assert 0 < result["multilabel"]["label_frequency_map"] < 0.2 and 0 < result["multilabel"]["map"] <= 1
    v = json.load(open(out / "retrieval" / "verify-test.json"))
    assert result["verify"]["auc"] == v["test"]["auc"] and v["test"]["pairs"] == 6000
    assert len(v["test"]["kfold"]["fold_accuracy"]) == 10 and (out / "retrieval" / "roc-test.png").is_file()
    assert os.path.isfile(out / "retrieval" / "summary.json") and os.path.isfile(out / "classify" / "last.pt")


@pytest.mark.parametrize("argv", [["--help"], ["info", "--help"], ["compare", "--help"], ["train", "--help"]])
def test_help_does_not_import_torchvision_models_or_pipelines(argv):
    import subprocess
    import sys

    code = ("import sys\nfrom recogfast.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('torchvision', 'recogfast.models', 'recogfast.data', 'nvidia.dali') if m in sys.modules])"
            % (argv,))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300,
                         env={**os.environ, "PYTHONPATH": root})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-500:]


def test_train_flag_defaults_are_run_config_defaults():
    """A default is written once, in RunConfig: every train flag of a RunConfig field has RunConfig's default
    (except the flags whose None is resolved later from the task, dataset or run folder)."""
    import dataclasses

    from recogfast.cli import build_parser
    from recogfast.cli.train import DECIDED_LATER
    from recogfast.engine.build import RunConfig

    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    checked = 0
    for action in build_parser().train_parser._actions:
        if action.dest in defaults and action.dest not in DECIDED_LATER:
            assert action.default == defaults[action.dest], (action.option_strings, action.default)
            checked += 1
    assert checked >= 40


def test_resume_from_the_run_folder_alone(capsys, tmp_path, shapes_cache):
    """`--resume RUN` (or `--out RUN --resume`) takes RUN/config.json, not the defaults; a flag beside it that
    disagrees with the run is refused in one line naming it; --epochs may grow."""
    out = tmp_path / "run"
    assert main(["train", "classify", "--dataset", "shapes196", "--data", shapes_cache, "--images-per-class", "4",
                 "--model", "tinynet", "--image-size", "16", "--batch-size", "32", "--steps-per-epoch", "2",
                 "--workers", "0", "--optimizer", "adamw", "--out", str(out), "--quiet", "--device", "cpu",
                 "--epochs", "1", "--no-report"]) == 0
    _one_line_error(capsys, ["train", "classify", "--out", str(out), "--resume", "--image-size", "32"],
                    "--image-size is 32 here but 16 in")
    _one_line_error(capsys, ["train", "retrieval", "--resume", str(out)], "is a `train classify` run")
    _one_line_error(capsys, ["train", "classify", "--resume", str(out), "--out", str(tmp_path / "x")],
                    "two different run folders")
    capsys.readouterr()
    assert main(["train", "classify", "--resume", str(out), "--epochs", "2", "--quiet", "--no-report"]) == 0
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    summary = json.load(open(out / "summary.json"))
    assert summary["config"]["model"] == "tinynet" and summary["config"]["image_size"] == 16
    assert summary["config"]["optimizer"] == "adamw" and summary["global_step"] == 4
    # the same flags as the run's are accepted (they agree)
    assert main(["train", "classify", "--out", str(out), "--resume", "--epochs", "3", "--model", "tinynet",
                 "--image-size", "16", "--quiet", "--no-report"]) == 0
    assert json.load(open(out / "summary.json"))["epochs_run"] == 3
    # eval results are named by checkpoint: last.pt's never replaces best.pt's
    capsys.readouterr()
    for name in ("best.pt", "last.pt"):
        assert main(["eval", "--checkpoint", str(out / name), "--workers", "0", "--device", "cpu"]) == 0
    best, last = json.load(open(out / "eval-test.json")), json.load(open(out / "eval-test-last.json"))
    assert best["checkpoint"].endswith("best.pt") and last["checkpoint"].endswith("last.pt")


def test_demo_defaults_cpu_and_full():
    import argparse

    from recogfast.demo import _defaults, add_demo_args

    p = argparse.ArgumentParser()
    add_demo_args(p)
    cpu = _defaults(p.parse_args([]), "cpu")
    assert (cpu["image_size"], cpu["stem"], cpu["classify_epochs"], cpu["retrieval_epochs"]) == (32, "imagenet", 3, 4)
    full = _defaults(p.parse_args(["--full"]), "cpu")  # the longer recipe, one flag away
    assert (full["image_size"], full["stem"], full["classify_epochs"], full["multilabel_epochs"]) == (64, "small", 30, 30)
    assert _defaults(p.parse_args([]), "cuda") == full
