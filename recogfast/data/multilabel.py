"""Multi-label datasets: PASCAL VOC 2007 and its embedded stand-in ShapesMulti (no download).

A multi-label list holds ``files`` and ``targets`` ([N, C] int8: 1 present, 0 absent, -1 present only
as ``difficult`` objects, which VOC's evaluation ignores). Both loader backends carry one integer per
sample, so ``labels[i]`` is the sample's own index ``i``: the loss and the metrics look its row of
``targets`` up (under DDP too: the indices travel with the gathered outputs).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import numpy as np

from recogfast.data.errors import DataError

__all__ = ["MultiLabelList", "VOC2007", "VOC_CLASSES", "split_multilabel"]

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
VOC_SPLITS = ("train", "val", "trainval", "test")


class MultiLabelList:
    """Image files with [N, C] targets in {1, 0, -1}; ``labels`` are the sample indices (see above)."""

    default_image_size = 224
    multilabel = True

    def __init__(self, files: Sequence[str], targets, classes: Sequence[str], split: str = "train",
                 root: str | None = None, ids: Sequence[str] | None = None):
        t = np.asarray(targets, dtype=np.int8)
        if t.ndim != 2 or t.shape != (len(files), len(classes)):
            raise ValueError(f"targets must be [{len(files)}, {len(classes)}], got {t.shape}")
        if t.size and (t.min() < -1 or t.max() > 1):
            raise ValueError("targets must hold 1 (present), 0 (absent) or -1 (difficult only)")
        self.files = [os.fspath(f) for f in files]
        self.targets = t
        self.classes = list(classes)
        self.class_names = list(classes)
        self.labels = list(range(len(self.files)))
        self.split, self.root = split, root
        self.ids = list(ids) if ids is not None else [os.path.splitext(os.path.basename(f))[0] for f in self.files]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.files[index], index

    def subset(self, idx, split: str) -> MultiLabelList:
        idx = list(idx)
        out = MultiLabelList([self.files[i] for i in idx], self.targets[idx], self.classes, split, self.root,
                             [self.ids[i] for i in idx])
        out.default_image_size = self.default_image_size
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, images={len(self)}, classes={self.num_classes}, "
                f"root={self.root!r})")


def split_multilabel(ds: MultiLabelList, fraction: float, seed: int = 0) -> tuple[MultiLabelList, MultiLabelList]:
    """A seeded ``round(fraction × N)`` of the images (at least 1, at most N − 1) as val, the rest train."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val fraction must lie strictly between 0 and 1, got {fraction}")
    n = len(ds)
    if n < 2:
        raise ValueError(f"a validation split needs at least 2 images, the split has {n}")
    k = min(n - 1, max(1, int(round(fraction * n))))
    val = np.sort(np.random.default_rng([seed, 0x6D6C]).permutation(n)[:k])
    keep = np.ones(n, dtype=bool)
    keep[val] = False
    return ds.subset(np.flatnonzero(keep), "train"), ds.subset(val, "val")


def _text(node, tag: str, path: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"VOC2007: {path}: an <object> has no <{tag}>", path)
    return child.text.strip()


def _line_of(path: str, text: str) -> int | None:
    """The first line of `path` that holds `text` (ElementTree keeps no line numbers)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return next((n for n, line in enumerate(f, 1) if text in line), None)


def read_voc_annotation(path: str, index: dict[str, int]) -> np.ndarray:
    """One ``Annotations/<id>.xml`` as a target row: 1 for a class with a non-difficult object, -1 for
    a class whose objects are all difficult, 0 otherwise (the VOC devkit's classification labels)."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(f"VOC2007: annotation file {path} not found", path) from None
    except (ET.ParseError, OSError) as err:
        raise DataError(f"VOC2007: cannot read annotation file {path}: {err}", path) from None
    row = np.zeros(len(index), dtype=np.int8)
    for obj in root.iter("object"):
        name = _text(obj, "name", path)
        if name not in index:
            line = _line_of(path, f">{name}<")
            where = f"{path}:{line}" if line else path
            raise DataError(f"VOC2007: {where}: unknown class name {name!r} (VOC has: {', '.join(index)})", path)
        difficult = obj.find("difficult")
        hard = difficult is not None and (difficult.text or "0").strip() == "1"
        c = index[name]
        if not hard:
            row[c] = 1
        elif row[c] == 0:
            row[c] = -1
    return row


class VOC2007(MultiLabelList):
    """PASCAL VOC 2007 classification: ``root`` is ``VOCdevkit/VOC2007`` (or a folder holding
    ``VOCdevkit/VOC2007`` or ``VOC2007``). ``split`` is one of train, val, trainval, test: the ids of
    ``ImageSets/Main/<split>.txt``; each image's labels come from ``Annotations/<id>.xml`` (20 classes,
    ``difficult`` objects ignored in the metric), the image is ``JPEGImages/<id>.jpg``. A problem (a
    missing list, annotation or image, an unknown class name) is a DataError naming the file (and line)."""

    def __init__(self, root: str | os.PathLike, split: str = "trainval"):
        if split not in VOC_SPLITS:
            raise ValueError(f"split must be one of {VOC_SPLITS}, got {split!r}")
        root = os.path.abspath(os.fspath(root))
        for sub in ("", "VOC2007", os.path.join("VOCdevkit", "VOC2007")):
            if os.path.isdir(os.path.join(root, sub, "ImageSets", "Main")):
                root = os.path.join(root, sub) if sub else root
                break
        else:
            missing = os.path.join(root, "ImageSets", "Main")
            raise DataError(f"VOC2007: {missing} not found (--data must be VOCdevkit/VOC2007)", missing)
        listing = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
        if not os.path.isfile(listing):
            raise DataError(f"VOC2007: image list {listing} not found", listing)
        ids = []
        with open(listing) as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 1:
                    raise DataError(f"VOC2007: {listing}:{lineno}: expected one image id, got {line.strip()!r}", listing)
                ids.append(parts[0])
        if not ids:
            raise DataError(f"VOC2007: image list {listing} is empty", listing)
        index = {name: i for i, name in enumerate(VOC_CLASSES)}
        targets = np.stack([read_voc_annotation(os.path.join(root, "Annotations", f"{i}.xml"), index) for i in ids])
        files = [os.path.join(root, "JPEGImages", f"{i}.jpg") for i in ids]
        for lineno, path in enumerate(files, 1):
            if not os.path.isfile(path):
                raise DataError(f"VOC2007: image {path} of {listing} (id {ids[lineno - 1]}) not found", path)
        super().__init__(files, targets, VOC_CLASSES, split=split, root=root, ids=ids)
