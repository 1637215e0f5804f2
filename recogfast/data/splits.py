"""Validation splits carved out of a training split, so that every choice a run makes (best epoch,
early stopping, the plateau schedule) is made without looking at the test split.

- :func:`split_by_image`: classification. A seeded, class-stratified fraction of each class's images
  (at least one image of every class with two or more; a class with one image stays in train).
- :func:`split_by_class`: retrieval. A seeded fraction of the *classes*: the val classes are disjoint
  from the train classes, as the test classes are, and val is scored like test (Recall@K, MAP@R).

Both return ``(train, val)`` as :class:`~recogfast.data.ImageList` views of the same files; labels
are renumbered ``0..num_classes-1`` in class order for the class split (the image split keeps them).
"""

from __future__ import annotations

import numpy as np

from recogfast.data.datasets import ImageList

__all__ = ["split_by_image", "split_by_class"]


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val fraction must lie strictly between 0 and 1, got {fraction}")


def _subset(ds: ImageList, idx, labels, classes, split: str) -> ImageList:
    out = ImageList([ds.files[i] for i in idx], labels, [ds.classes[c] for c in classes],
                    [ds.class_names[c] for c in classes], split=split, root=ds.root)
    out.default_image_size = ds.default_image_size
    return out


def split_by_image(ds: ImageList, fraction: float, seed: int = 0) -> tuple[ImageList, ImageList]:
    """Per class, ``round(fraction × n)`` images (at least 1 when the class has 2 or more, at most
    n − 1) go to val, drawn with ``seed``; the rest stay in train. Labels are unchanged."""
    _check_fraction(fraction)
    labels = np.asarray(ds.labels, dtype=np.int64)
    rng = np.random.default_rng([seed, 0x76616C])
    val_idx: list[int] = []
    for c in range(ds.num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            continue
        k = min(len(members) - 1, max(1, int(round(fraction * len(members)))))
        val_idx += rng.choice(members, k, replace=False).tolist()
    in_val = np.zeros(len(labels), dtype=bool)
    in_val[val_idx] = True
    train_idx, val_idx = np.flatnonzero(~in_val), np.flatnonzero(in_val)
    everything = list(range(ds.num_classes))
    return (_subset(ds, train_idx, labels[train_idx].tolist(), everything, "train"),
            _subset(ds, val_idx, labels[val_idx].tolist(), everything, "val"))


def split_by_class(ds: ImageList, fraction: float, seed: int = 0) -> tuple[ImageList, ImageList]:
    """``round(fraction × classes)`` classes (at least 2, so val can be scored, and at least 2 left
    for training) go to val with all their images, drawn with ``seed``. Each part's labels run over
    its own classes (in the original class order)."""
    _check_fraction(fraction)
    n = ds.num_classes
    if n < 4:
        raise ValueError(f"a class-disjoint val split needs at least 4 training classes, the split has {n}")
    k = min(n - 2, max(2, int(round(fraction * n))))
    rng = np.random.default_rng([seed, 0x636C73])
    val_classes = sorted(rng.choice(n, k, replace=False).tolist())
    train_classes = [c for c in range(n) if c not in set(val_classes)]
    labels = np.asarray(ds.labels, dtype=np.int64)
    parts = []
    for classes, split in ((train_classes, "train"), (val_classes, "val")):
        new = {c: i for i, c in enumerate(classes)}
        idx = [i for i, y in enumerate(labels.tolist()) if y in new]
        parts.append(_subset(ds, idx, [new[int(labels[i])] for i in idx], classes, split))
    return parts[0], parts[1]
