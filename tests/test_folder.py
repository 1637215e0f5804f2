"""`--dataset folder`: a user's own class folders (ImageFolder layout), split here or by train/val/test
subfolders, for classification and retrieval; its bad inputs are one line and exit 2."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from recogfast.cli import main
from recogfast.data import DataError, ImageFolder, folder_splits


def _make(root, classes: dict, ext="png"):
    """classes: name -> number of images (coloured 20×20 squares, a colour per class)."""
    for k, (name, n) in enumerate(sorted(classes.items())):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(n):
            rgb = ((40 * k) % 256, (90 + 7 * i) % 256, (200 - 30 * k) % 256)
            Image.new("RGB", (20, 20), rgb).save(os.path.join(root, name, f"{i:03d}.{ext}"))
    return str(root)


def _label_of(ds, path):
    return ds.classes[ds.labels[ds.files.index(path)]]


def test_one_set_of_class_folders_is_split_per_class_and_fixed(tmp_path):
    root = _make(tmp_path / "d", {"cat": 5, "dog": 10, "emu": 1})
    os.makedirs(tmp_path / "d" / "dog" / "more")
    Image.new("RGB", (20, 20)).save(tmp_path / "d" / "dog" / "more" / "x.JPG")  # nested, upper-case extension
    (tmp_path / "d" / "dog" / "notes.txt").write_text("not an image")
    whole = ImageFolder(root)
    assert whole.classes == ["cat", "dog", "emu"] and len(whole) == 17
    train, val, test = folder_splits(root, "classification")
    assert val is None and train.classes == test.classes == ["cat", "dog", "emu"]
    counts = np.bincount(test.labels, minlength=3).tolist()
    assert counts == [1, 2, 0]  # round(0.2 n), at least one of a class with two or more; emu's one stays in train
    assert sorted(train.files + test.files) == sorted(whole.files) and not set(train.files) & set(test.files)
    for ds in (train, test):  # a file keeps its folder's class
        assert all(_label_of(ds, f) == os.path.relpath(f, root).split(os.sep)[0] for f in ds.files)
    assert folder_splits(root, "classification")[2].files == test.files  # fixed, not seeded by the run


def test_retrieval_halves_the_classes(tmp_path):
    root = _make(tmp_path / "d", {f"c{i}": 3 for i in range(7)})
    train, val, test = folder_splits(root, "retrieval")
    assert val is None and train.num_classes == 4 and test.num_classes == 3
    assert not set(train.classes) & set(test.classes) and sorted(train.classes + test.classes) == [f"c{i}" for i in range(7)]
    assert sorted(set(test.labels)) == [0, 1, 2] and len(test) == 9  # each split over its own classes


def test_train_val_test_folders(tmp_path):
    _make(tmp_path / "d" / "train", {"a": 4, "b": 4, "c": 4})
    _make(tmp_path / "d" / "val", {"b": 2, "c": 1})
    _make(tmp_path / "d" / "test", {"a": 2, "c": 3})
    train, val, test = folder_splits(str(tmp_path / "d"), "classification")
    assert (len(train), len(val), len(test)) == (12, 3, 5)
    assert val.classes == test.classes == train.classes == ["a", "b", "c"]
    assert sorted(val.labels) == [1, 1, 2] and sorted(test.labels) == [0, 0, 2, 2, 2]  # by name, train's numbering


@pytest.mark.parametrize("layout, protocol, pattern", [
    ({"x.png": None, "a": 2, "b": 2}, "classification", "holds images outside class folders (e.g. x.png)"),
    ({"a": 2, "b": 0}, "classification", "holds no JPEG or PNG images"),
    ({"a": 3}, "classification", "needs at least 2 class folders"),
    ({"train/a": 2, "train/b": 2, "test/z": 1}, "classification", "class folder 'z' is not a training class"),
    ({"train/a": 2, "train/b": 2, "test/b": 1, "test/c": 1}, "retrieval", "class 'b' is in train/ too"),
    ({"val/a": 2, "val/b": 2}, "classification", "has val/ or test/ but no train/ folder"),
    ({"a": 2, "b": 2, "c": 2}, "retrieval", "retrieval needs at least 4 class folders"),
])
def test_bad_folders_are_one_data_error(tmp_path, layout, protocol, pattern):
    root = tmp_path / "d"
    root.mkdir()
    for name, n in layout.items():
        if n is None:
            Image.new("RGB", (8, 8)).save(root / name)
        else:
            os.makedirs(root / name)
            for i in range(n):
                Image.new("RGB", (8, 8)).save(root / name / f"{i}.png")
    with pytest.raises(DataError, match=pattern.replace("(", r"\(").replace(")", r"\)")):
        folder_splits(str(root), protocol)


def test_train_classify_and_retrieval_on_a_folder(tmp_path, capsys):
    root = _make(tmp_path / "d", {f"class {i}": 6 for i in range(8)}, ext="jpg")
    base = ["--dataset", "folder", "--data", root, "--model", "tinynet", "--image-size", "16", "--epochs", "1",
            "--workers", "0", "--device", "cpu", "--quiet", "--no-report", "--backend", "torchvision"]
    out = tmp_path / "cls"
    assert main(["train", "classify", *base, "--batch-size", "8", "--out", str(out)]) == 0
    s = json.load(open(out / "summary.json"))
    # 8 classes × 6: 1 of each (0.2 × 6 rounded) to test, then 1 of each of the 5 left to val (--val-fraction 0.1)
    assert s["config"]["train_images"] == 8 * 4 and s["config"]["val_images"] == 8 and "top1" in s["test"]
    out = tmp_path / "ret"
    assert main(["train", "retrieval", *base, "--batch-size", "4", "--m-per-class", "2", "--embedding-dim", "8",
                 "--val-fraction", "0", "--out", str(out)]) == 0
    s = json.load(open(out / "summary.json"))
    assert s["config"]["test_classes"] == 4 and "recall@1" in s["test"] and "map@r" in s["test"]
    # verification reads the folder run's test classes like any other run's
    assert main(["verify", str(out), "--num-pairs", "40", "--workers", "0", "--device", "cpu"]) == 0
    v = json.load(open(out / "verify-test.json"))
    assert v["test"]["pairs"] == 40 and 0.0 <= v["test"]["auc"] <= 1.0
    capsys.readouterr()
    os.makedirs(tmp_path / "d" / "empty class")
    assert main(["train", "classify", *base, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty class holds no JPEG or PNG images" in err[0], err
