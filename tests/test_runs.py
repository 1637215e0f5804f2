"""Runs a user can trust: val picks the checkpoint and test is read once, at the end; no run that
trains nothing; run folders are never overwritten silently and are reproducible from config.json;
Task 4's chain (a classifier on classes 1-98, its feature Recall@K on 99-196, then the MS loss from
it) on Shapes196 and on a Cars196-format stand-in; compare formats."""

import csv
import json
import os
import stat

import numpy as np
import pytest
import torch

from recogfast.cli import main
from recogfast.engine import RunConfig, build_trainer, load_checkpoint
from recogfast.tasks import classify


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory):
    from recogfast.data import Shapes196

    folder = tmp_path_factory.mktemp("shapes")
    Shapes196(cache_dir=folder, images_per_class=4)
    return str(folder)


def _base(cache, task="classify", model="tinynet"):
    return ["train", task, "--dataset", "shapes196", "--data", cache, "--images-per-class", "4", "--model", model,
            "--image-size", "16", "--batch-size", "32", "--steps-per-epoch", "2", "--workers", "0",
            "--optimizer", "adamw", "--quiet", "--device", "cpu"]


def _error(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("recogfast: error: "), (rc, err)
    return err[0]


def test_best_checkpoint_follows_val_and_test_is_read_once(tmp_path, shapes_cache, monkeypatch):
    """Val prefers epoch 2, test would prefer epoch 1: best.pt, the summary and the test line are epoch 2's."""
    fingerprints = {}  # weights checksum -> epoch
    val_script = {1: 0.2, 2: 0.6, 3: 0.4}
    test_would_prefer = {1: 0.9, 2: 0.1, 3: 0.5}
    test_calls = []

    def checksum(model):
        return round(float(sum(p.detach().double().sum() for p in model.parameters())), 6)

    def fake_eval(loader, label_smoothing=0.0):
        split = loader.dataset.split

        def run(model):
            if split == "val":
                return {"top1": val_script[len(fingerprints) + 1], "top5": 1.0, "loss": 1.0}
            test_calls.append(fingerprints[checksum(model)])
            return {"top1": test_would_prefer[fingerprints[checksum(model)]], "top5": 1.0, "loss": 1.0}

        return run

    def record(trainer, event, **info):
        if event == "epoch":
            fingerprints[checksum(trainer.model)] = trainer.epoch

    monkeypatch.setattr(classify, "classification_eval", fake_eval)
    cfg = RunConfig(task="classify", dataset="shapes196", data=shapes_cache, images_per_class=4, model="tinynet",
                    image_size=16, batch_size=32, steps_per_epoch=2, epochs=3, optimizer="adamw", num_workers=0,
                    device="cpu", backend="torchvision", out=str(tmp_path), progress=False)
    trainer = build_trainer(cfg, callbacks=[record])
    summary = trainer.fit()
    assert len(fingerprints) == 3 and test_calls == [2]  # test read once, on epoch 2's weights
    assert summary["val"]["epoch"] == 2 and summary["val"]["top1"] == 0.6
    assert summary["test"] == {"epoch": 2, "chosen_by": "best val top1", "top1": 0.1, "top5": 1.0, "loss": 1.0}
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2 and load_checkpoint(tmp_path / "last.pt")["epoch"] == 3
    assert checksum(trainer.model) in fingerprints and fingerprints[checksum(trainer.model)] == 3  # back to last
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [float(r["val_top1"]) for r in rows] == [0.2, 0.6, 0.4] and not any("test" in k for k in rows[0])
    mode = {name: stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in ("last.pt", "best.pt")}
    assert mode["last.pt"] == mode["best.pt"]  # checkpoints all get the same file mode


def test_cli_prints_val_best_and_one_test_line(capsys, tmp_path, shapes_cache):
    argv = [a for a in _base(shapes_cache) if a != "--quiet"]
    assert main(argv + ["--epochs", "2", "--steps-per-epoch", "50", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "--steps-per-epoch 50 is more than an epoch holds (12 steps): each epoch runs 12 steps" in out
    # the start says which data backend and why, and which kernels this model calls (tinynet: none)
    assert "data: train 392 images / 196 classes, val 196 / 196, test 196 / 196; " in out and " backend (" in out
    assert "kernels: none (this model calls no fused op)" in out
    assert out.count("epoch 2/2  train_loss") == 1 and "val_top1" in out
    summary = json.load(open(tmp_path / "r" / "summary.json"))
    assert out.count("TEST") == 1 and f"TEST (epoch {summary['test']['epoch']}, best val top1)" in out
    assert f"best val top1 {summary['best_value']:.4f} at epoch {summary['val']['epoch']}" in out
    assert json.load(open(tmp_path / "r" / "config.json"))["val_fraction"] == 0.1
    assert summary["config"]["kernels"] == {} and summary["global_step"] == 2 * 12  # 392 // 32 a epoch


def test_no_validation_means_last_epoch(capsys, tmp_path, shapes_cache):
    assert main(_base(shapes_cache) + ["--epochs", "2", "--val-fraction", "0", "--out", str(tmp_path / "r")]) == 0
    summary = json.load(open(tmp_path / "r" / "summary.json"))
    assert summary["val"] is None and summary["test"]["epoch"] == 2 and summary["config"]["train_images"] == 3 * 196
    assert "no validation split: the result is the last epoch (2)" in capsys.readouterr().out
    assert "needs a validation split" in _error(capsys, _base(shapes_cache) + ["--val-fraction", "0", "--patience", "2"])
    assert "plateau needs a validation" in _error(capsys, _base(shapes_cache) + ["--val-fraction", "0", "--schedule", "plateau"])
    assert "--split test" in _error(capsys, ["eval", "--checkpoint", str(tmp_path / "r" / "best.pt"), "--split", "val"])


def test_zero_step_run_is_refused_before_anything_is_built(capsys, tmp_path, shapes_cache):
    out = tmp_path / "r"
    argv = _base(shapes_cache) + ["--batch-size", "512", "--out", str(out)]
    msg = _error(capsys, argv)
    assert "392 images" in msg and "196 images for validation" in msg and "--batch-size 512" in msg, msg
    assert not out.exists()  # no run folder pretends to be a result
    msg = _error(capsys, _base(shapes_cache, "retrieval") + ["--batch-size", "512", "--out", str(out)])
    assert "83 classes" in msg and "15 classes for validation" in msg and "128 distinct classes" in msg, msg
    assert not out.exists()


def test_run_folders_are_never_overwritten(capsys, tmp_path, shapes_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = _base(shapes_cache) + ["--epochs", "1", "--val-fraction", "0"]
    assert main(argv) == 0 and main(argv) == 0  # without --out: a new numbered folder
    assert os.path.isfile("runs/classify-shapes196-tinynet/summary.json")
    assert os.path.isfile("runs/classify-shapes196-tinynet-2/summary.json")
    before = open("runs/classify-shapes196-tinynet/log.csv").read()
    msg = _error(capsys, argv + ["--out", "runs/classify-shapes196-tinynet"])
    assert "already holds a run" in msg and "--overwrite" in msg
    assert open("runs/classify-shapes196-tinynet/log.csv").read() == before
    for name in ("eval-test.json", "verify-test.json", "roc-test.png"):
        open(f"runs/classify-shapes196-tinynet/{name}", "w").write("{}")
    assert main(argv + ["--out", "runs/classify-shapes196-tinynet", "--overwrite"]) == 0
    for name in ("eval-test.json", "verify-test.json", "roc-test.png"):  # the old run's outputs are gone
        assert not os.path.exists(f"runs/classify-shapes196-tinynet/{name}"), name


def test_config_round_trip_gives_the_same_log(capsys, tmp_path, shapes_cache):
    a, b, c = (str(tmp_path / n) for n in "abc")
    assert main(_base(shapes_cache) + ["--epochs", "2", "--lr", "0.003", "--out", a]) == 0
    assert main(["train", "classify", "--config", f"{a}/config.json", "--out", b, "--quiet"]) == 0

    def log(folder):
        return [{k: v for k, v in r.items() if k not in ("epoch_s", "train_img_per_s")}
                for r in csv.DictReader(open(f"{folder}/log.csv"))]

    assert log(a) == log(b) and len(log(a)) == 2
    assert json.load(open(f"{b}/config.json")) == {**json.load(open(f"{a}/config.json")), "out": b}
    assert main(["train", "classify", "--config", f"{a}/config.json", "--out", c, "--epochs", "1", "--quiet"]) == 0
    assert len(log(c)) == 1 and log(c)[0] == log(a)[0]  # a flag overrides the file
    assert "is for `train classify`" in _error(capsys, ["train", "retrieval", "--config", f"{a}/config.json"])
    (tmp_path / "bad.json").write_text('{"epochs": 1, "colour": "red"}')
    assert "unknown setting(s) colour" in _error(capsys, ["train", "classify", "--config", str(tmp_path / "bad.json")])


def test_compare_formats(capsys, tmp_path, shapes_cache):
    assert main(_base(shapes_cache) + ["--epochs", "1", "--out", str(tmp_path / "r")]) == 0
    s = json.load(open(tmp_path / "r" / "summary.json"))
    capsys.readouterr()
    for fmt in ("table", "md"):
        assert main(["compare", str(tmp_path / "r"), "--format", fmt]) == 0
        text = capsys.readouterr().out
        assert f"{s['test']['top1']:.4f}" in text and f"{s['val']['top1']:.4f}" in text and "M " in text
    assert main(["compare", str(tmp_path / "r"), "--format", "csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))  # numbers as numbers, for a spreadsheet
    assert rows[0]["model"] == "tinynet" and rows[0]["val epoch"] == "1" and int(rows[0]["params"]) == s["config"]["params"]
    assert float(rows[0]["test top1"]) == s["test"]["top1"] and float(rows[0]["val top1"]) == s["val"]["top1"]
    assert float(rows[0]["img/s"]) > 0 and float(rows[0]["wall s"]) == s["seconds"]


def test_task4_chain_on_shapes196(capsys, tmp_path, shapes_cache):
    cls, ms = str(tmp_path / "cls"), str(tmp_path / "ms")
    assert main(_base(shapes_cache) + ["--protocol", "retrieval", "--epochs", "1", "--out", cls]) == 0
    s = json.load(open(f"{cls}/summary.json"))
    assert s["config"]["num_classes"] == 98 and s["config"]["test_classes"] == 98
    assert s["config"]["train_images"] + s["config"]["val_images"] == 98 * 4 and "top1" in s["val"]
    assert set(s["test"]) >= {"recall@1", "recall@2", "recall@4", "recall@8", "map@r"}  # features, classes 99-196
    capsys.readouterr()
    assert main(["eval", "--checkpoint", f"{cls}/best.pt", "--workers", "0", "--device", "cpu", "--baselines"]) == 0
    again = json.load(open(f"{cls}/eval-test-features.json"))
    assert again["classes"] == 98 and again["recall@1"] == pytest.approx(s["test"]["recall@1"])
    assert set(again["baselines"]) == {"untrained", "raw_pixels"} and again["baselines"]["raw_pixels"]["num_queries"] == 98 * 4
    assert main(_base(shapes_cache, "retrieval") + ["--weights", f"{cls}/best.pt", "--embedding-dim", "32",
                                                     "--epochs", "1", "--out", ms]) == 0
    out = capsys.readouterr().out
    assert "new (not in the checkpoint): embedding" in out and "unused: fc" in out  # head cropped, 512-d... added
    r = json.load(open(f"{ms}/summary.json"))
    assert r["config"]["val_classes"] == 15 and r["config"]["num_classes"] == 83 and "recall@1" in r["test"]
    assert list(r["config"]["kernels"]) == ["ms_loss"]
    assert main(["eval", "--checkpoint", f"{ms}/best.pt", "--split", "val", "--workers", "0", "--device", "cpu"]) == 0
    val = json.load(open(f"{ms}/eval-val.json"))  # the run's own val classes, scored as in training
    assert val["classes"] == 15 and val["images"] == 15 * 4 and val["recall@1"] == pytest.approx(r["val"]["recall@1"])


def _cars_standin(root, per_class=3):
    """cars_annos.mat as the real file has it: a 1×N MATLAB struct array, uint8 classes and test flags."""
    from PIL import Image
    from scipy import io as scipy_io

    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    arr = np.zeros((1, 196 * per_class), dtype=[(f, object) for f in fields])
    (root / "car_ims").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(196 * per_class):
        c = k // per_class + 1
        rel = f"car_ims/{k + 1:06d}.jpg"
        pixels = (rng.random((12, 16, 3)) * 60 + np.array([c, 255 - c, (7 * c) % 256]) * 0.7).astype(np.uint8)
        Image.fromarray(pixels).save(root / rel, quality=90)
        row = {"relative_im_path": np.array([rel]), "bbox_x1": np.array([[1]], np.uint8), "bbox_y1": np.array([[1]], np.uint8),
               "bbox_x2": np.array([[15]], np.uint8), "bbox_y2": np.array([[11]], np.uint8),
               "class": np.array([[c]], np.uint8), "test": np.array([[k % 2]], np.uint8)}
        for f in fields:
            arr[0, k][f] = row[f]
    names = np.array([f"Make {c} Model {c} 2012" for c in range(1, 197)], dtype=object).reshape(1, -1)
    scipy_io.savemat(str(root / "cars_annos.mat"), {"annotations": arr, "class_names": names})
    return str(root)


def test_task4_chain_on_a_cars196_standin(capsys, tmp_path):
    data = _cars_standin(tmp_path / "stanford_cars")
    base = ["--dataset", "cars196", "--data", data, "--model", "tinynet", "--image-size", "16", "--workers", "0",
            "--device", "cpu", "--quiet", "--optimizer", "adamw", "--epochs", "1"]
    assert main(["train", "classify", "--protocol", "retrieval", "--batch-size", "64", "--out", str(tmp_path / "cls")] + base) == 0
    s = json.load(open(tmp_path / "cls" / "summary.json"))
    assert s["config"]["num_classes"] == 98 and s["config"]["test_images"] == 98 * 3  # classes 99-196
    assert s["config"]["val_images"] == 98 and "recall@8" in s["test"] and "map@r" in s["test"]
    assert main(["train", "retrieval", "--weights", str(tmp_path / "cls" / "best.pt"), "--batch-size", "36",
                 "--m-per-class", "3", "--embedding-dim", "16", "--out", str(tmp_path / "ms")] + base) == 0
    r = json.load(open(tmp_path / "ms" / "summary.json"))
    assert r["config"]["val_classes"] == 15 and r["global_step"] >= 1 and r["test"]["epoch"] == r["val"]["epoch"]
    model = torch.load(tmp_path / "ms" / "best.pt", weights_only=True)["model"]
    assert model["embedding.weight"].shape[0] == 16 and not any(k.startswith("fc.") for k in model)


def test_imagenet_weights_offline_message_and_cached_file(capsys, tmp_path, monkeypatch, shapes_cache):
    from recogfast.models import create_model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    msg = _error(capsys, _base(shapes_cache, model="resnet18") + ["--weights", "imagenet", "--out", str(tmp_path / "r")])
    assert f"resnet18-f37072fd.pth is not in {folder}" in msg and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert "name resolution" in msg and not (tmp_path / "r").exists()
    assert "no ImageNet weights for 'tinynet'" in _error(capsys, _base(shapes_cache) + ["--weights", "imagenet"])
    # the file in the hub cache (as torchvision's download leaves it) is used as is
    import torchvision

    reference = torchvision.models.resnet18().state_dict()
    folder.mkdir(parents=True, exist_ok=True)  # made by the failed download attempt
    torch.save(reference, folder / "resnet18-f37072fd.pth")
    model = create_model("cubs_resnet18_serial12", num_classes=98, stem="small", weights="imagenet")
    report = model.load_report
    assert report.path == str(folder / "resnet18-f37072fd.pth")
    assert torch.equal(model.state_dict()["layer3.1.conv2.weight"], reference["layer3.1.conv2.weight"])
    assert any(".attn." in k for k in report.new) and "fc.weight" in report.replaced and "conv1.weight" in report.replaced
