"""A user's own images in class folders (``--dataset folder --data DIR``), the layout of torchvision's
``ImageFolder``: one folder per class, named after it, holding its JPEG / PNG images (subfolders too).

``DIR`` is either split already, ``DIR/train/<class>/…`` with optional ``DIR/val/`` and ``DIR/test/``, or
one set of class folders ``DIR/<class>/…`` that is split here, seeded and fixed (the split seed of a run
moves val only, never test):

- protocol "classification": test = ``TEST_FRACTION`` of each class's images (at least one of a class
  with two or more); every split's labels index the train classes (sorted names);
- protocol "retrieval": the classes are permuted with a fixed seed and halved, train on the first half,
  test on the second (class-disjoint, as Cars196's 1–98 / 99–196); each split's labels run over its own
  classes. With ``train/`` and ``test/`` folders the two must then share no class.

Strict as the built-in readers: a missing or empty class folder, images outside class folders, fewer
than two classes, a test or val class that train lacks (classification) or shares (retrieval) are each a
one-line :class:`DataError` naming the folder.
"""

from __future__ import annotations

import os

import numpy as np

from recogfast.data.datasets import ImageList
from recogfast.data.errors import DataError
from recogfast.data.splits import _subset, split_by_image

__all__ = ["ImageFolder", "folder_splits", "TEST_FRACTION"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TEST_FRACTION = 0.2
_TEST_SEED = 0x74657374  # fixed: the test split of a folder never depends on a run's seeds


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _class_folders(root: str, least: int = 2) -> list[str]:
    """The class folder names of `root`, sorted; DataError for images beside them or no classes."""
    if not os.path.isdir(root):
        raise DataError(f"image folder not found: {root}", root)
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    stray = [e.name for e in entries if e.is_file() and _is_image(e.name)]
    if stray:
        raise DataError(f"{root} holds images outside class folders (e.g. {stray[0]}): put each class's images in a "
                        f"folder named after the class", os.path.join(root, stray[0]))
    classes = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    if len(classes) < least:
        raise DataError(f"{root} needs at least {least} class folder{'s' * (least > 1)} (one per class, holding its images), found "
                        f"{len(classes)}", root)
    return classes


def _images_of(folder: str) -> list[str]:
    found = []
    for top, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(top, n) for n in sorted(names) if _is_image(n)]
    if not found:
        raise DataError(f"class folder {folder} holds no JPEG or PNG images", folder)
    return found


class ImageFolder(ImageList):
    """Class folders under `root` as an :class:`ImageList`; labels follow `classes` (default: the sorted
    folder names). A folder outside `classes` is an error."""

    default_image_size = 224

    def __init__(self, root: str | os.PathLike, split: str = "train", classes: list[str] | None = None):
        root = os.path.abspath(os.fspath(root))
        found = _class_folders(root, 2 if classes is None else 1)  # val/ or test/ may hold one class
        classes = list(found) if classes is None else list(classes)
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"{root}: class folder {unknown[0]!r} is not a training class (train has "
                            f"{len(classes)} classes)", os.path.join(root, unknown[0]))
        index = {name: i for i, name in enumerate(classes)}
        files, labels = [], []
        for name in found:
            images = _images_of(os.path.join(root, name))
            files += images
            labels += [index[name]] * len(images)
        super().__init__(files, labels, classes, split=split, root=root)


def _split_images(ds: ImageList) -> tuple[ImageList, ImageList]:
    """(train, test): TEST_FRACTION of each class's images to test (at least 1 of a class with 2+), the
    classification val split's rule (recogfast.data.splits.split_by_image) with a fixed seed."""
    train, test = split_by_image(ds, TEST_FRACTION, _TEST_SEED)
    test.split = "test"
    return train, test


def _split_classes(ds: ImageList) -> tuple[ImageList, ImageList]:
    """(train, test): a fixed permutation of the classes halved (test gets the smaller half)."""
    if ds.num_classes < 4:
        raise DataError(f"{ds.root}: retrieval needs at least 4 class folders (2 to train, 2 to test), found "
                        f"{ds.num_classes}", ds.root)
    order = np.random.default_rng(_TEST_SEED).permutation(ds.num_classes)
    half = (ds.num_classes + 1) // 2
    parts = []
    for classes, split in ((sorted(order[:half].tolist()), "train"), (sorted(order[half:].tolist()), "test")):
        new = {c: i for i, c in enumerate(classes)}  # each part's labels over its own classes
        idx = [i for i, y in enumerate(ds.labels) if y in new]
        parts.append(_subset(ds, idx, [new[ds.labels[i]] for i in idx], classes, split))
    return parts[0], parts[1]


def folder_splits(root: str | os.PathLike, protocol: str = "classification"):
    """(train, val or None, test) of a user's image folder (module docstring); val is None unless the
    folder has its own ``val/`` (the caller then carves val out of train with --val-fraction)."""
    root = os.fspath(root)
    sub = {name: os.path.join(root, name) for name in ("train", "val", "test")}
    if not os.path.isdir(sub["train"]):
        if os.path.isdir(sub["val"]) or os.path.isdir(sub["test"]):
            raise DataError(f"{root} has val/ or test/ but no train/ folder", root)
        whole = ImageFolder(root, "all")
        train, test = _split_classes(whole) if protocol == "retrieval" else _split_images(whole)
        return train, None, test
    if protocol == "retrieval":  # each split over its own classes, which train must not share
        train = ImageFolder(sub["train"], "train")
        out = {}
        for name in ("val", "test"):
            if os.path.isdir(sub[name]):
                out[name] = ImageFolder(sub[name], name)
                shared = sorted(set(out[name].classes) & set(train.classes))
                if shared:
                    raise DataError(f"{sub[name]}: retrieval tests on classes unseen in training, but class {shared[0]!r} "
                                    f"is in train/ too", os.path.join(sub[name], shared[0]))
        if "test" not in out:
            train, out["test"] = _split_classes(train)
        return train, out.get("val"), out["test"]
    train = ImageFolder(sub["train"], "train")
    val = ImageFolder(sub["val"], "val", classes=train.classes) if os.path.isdir(sub["val"]) else None
    if os.path.isdir(sub["test"]):
        test = ImageFolder(sub["test"], "test", classes=train.classes)
    else:
        train, test = _split_images(train)
    return train, val, test
