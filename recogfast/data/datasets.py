"""Image-list datasets: each one is a list of file paths, integer labels and class names.

Both loader backends (DALI and torchvision) read the same list, so a dataset never decodes anything
itself; ``dataset[i]`` is ``(path, label)``. Labels index ``dataset.classes`` (for a retrieval split
they run over that split's classes only). On-disk formats: docs/SPEC.md, "Datasets".
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

from recogfast.data.errors import DataError, check_on_error

__all__ = ["ImageList", "TinyImageNet", "Cars196"]


class ImageList:
    """A labelled list of image files; the common base of the datasets in this package.

    Attributes: ``files`` (absolute paths), ``labels`` (ints in ``range(len(classes))``), ``classes``
    (class ids in label order), ``class_names`` (human-readable, same order), ``split``, and
    ``default_image_size`` (the training resolution the dataset is meant for).
    """

    default_image_size = 224

    def __init__(
        self,
        files: Sequence[str],
        labels: Sequence[int],
        classes: Sequence[str],
        class_names: Sequence[str] | None = None,
        split: str = "train",
        root: str | None = None,
    ):
        if len(files) != len(labels):
            raise ValueError(f"files and labels differ in length: {len(files)} vs {len(labels)}")
        self.files = [os.fspath(f) for f in files]
        self.labels = [int(label) for label in labels]
        self.classes = list(classes)
        self.class_names = list(class_names) if class_names is not None else list(self.classes)
        self.split = split
        self.root = root
        bad = [label for label in self.labels if not 0 <= label < len(self.classes)]
        if bad:
            raise ValueError(f"labels must lie in [0, {len(self.classes)}), found {bad[0]}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.files[index], self.labels[index]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, images={len(self)}, classes={self.num_classes}, "
            f"root={self.root!r})"
        )


def _check_split(split: str, allowed: Sequence[str]) -> str:
    if split not in allowed:
        raise ValueError(f"split must be one of {tuple(allowed)}, got {split!r}")
    return split


def _list_images(folder: str) -> list[str]:
    exts = (".jpeg", ".jpg", ".png")
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(exts))


class TinyImageNet(ImageList):
    """Tiny ImageNet (``tiny-imagenet-200/``): 200 classes of 64×64 images.

    ``root`` is the ``tiny-imagenet-200`` folder or its parent. ``split="train"`` reads
    ``train/<wnid>/images/``; ``"val"`` (alias ``"test"``: the official test split has no labels, so
    the labelled val split is the test set) reads ``val/val_annotations.txt``. Class order is the order
    of ``wnids.txt``; ``class_names`` come from ``words.txt`` when present.

    ``on_error="raise"`` (default) makes an empty class folder or a malformed annotation line an error
    that names the file; ``"skip"`` warns with the count and goes on without them.
    """

    default_image_size = 64

    def __init__(self, root: str | os.PathLike, split: str = "train", on_error: str = "raise"):
        _check_split(split, ("train", "val", "test"))
        check_on_error(on_error)
        root = os.path.abspath(os.fspath(root))
        if not os.path.isfile(os.path.join(root, "wnids.txt")) and os.path.isfile(
            os.path.join(root, "tiny-imagenet-200", "wnids.txt")
        ):
            root = os.path.join(root, "tiny-imagenet-200")
        wnids_path = os.path.join(root, "wnids.txt")
        if not os.path.isfile(wnids_path):
            raise DataError(f"Tiny ImageNet: {wnids_path} not found (root must be tiny-imagenet-200 or its parent)", wnids_path)
        with open(wnids_path) as f:
            wnids = [line.strip() for line in f if line.strip()]
        if len(set(wnids)) != len(wnids):
            raise DataError(f"Tiny ImageNet: duplicate class ids in {wnids_path}", wnids_path)
        names = self._read_words(os.path.join(root, "words.txt"))
        class_names = [names.get(w, w) for w in wnids]
        index = {w: i for i, w in enumerate(wnids)}
        files: list[str] = []
        labels: list[int] = []
        problems: list[tuple[str, str]] = []
        if split == "train":
            for i, wnid in enumerate(wnids):
                folder = os.path.join(root, "train", wnid, "images")
                names_in = _list_images(folder) if os.path.isdir(folder) else []
                if not names_in:
                    problems.append((folder, f"class folder {folder} is missing or holds no images"))
                    continue
                files += [os.path.join(folder, n) for n in names_in]
                labels += [i] * len(names_in)
        else:
            ann_path = os.path.join(root, "val", "val_annotations.txt")
            if not os.path.isfile(ann_path):
                raise DataError(f"Tiny ImageNet: annotation file {ann_path} not found", ann_path)
            with open(ann_path) as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    parts = line.rstrip("\r\n").split("\t")
                    why = None
                    if len(parts) != 6:
                        why = f"expected 6 tab-separated fields, found {len(parts)}"
                    elif parts[1] not in index:
                        why = f"unknown class id {parts[1]!r}"
                    elif not all(p.strip().lstrip("-").isdigit() for p in parts[2:]):
                        why = "bounding box is not four integers"
                    if why is not None:
                        problems.append((ann_path, f"{ann_path}:{lineno}: malformed annotation ({why}): {line.strip()[:80]!r}"))
                        continue
                    files.append(os.path.join(root, "val", "images", parts[0]))
                    labels.append(index[parts[1]])
        if problems:
            if on_error == "raise":
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise DataError(f"Tiny ImageNet: {problems[0][1]}{more}", problems[0][0])
            warnings.warn(f"Tiny ImageNet: skipped {len(problems)} problem(s) (on_error='skip'); first: {problems[0][1]}")
        super().__init__(files, labels, wnids, class_names, split=split, root=root)

    @staticmethod
    def _read_words(path: str) -> dict[str, str]:
        if not os.path.isfile(path):
            return {}
        out = {}
        with open(path) as f:
            for line in f:
                wnid, _, words = line.rstrip("\r\n").partition("\t")
                if wnid:
                    out[wnid] = words.strip() or wnid
        return out


def _loadmat(path: str):
    import scipy.io

    try:
        return scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as err:  # scipy raises ValueError, TypeError, OSError... for damaged files
        raise DataError(f"Cars196: cannot read annotation file {path}: {type(err).__name__}: {err}", path) from err


def _mat_records(path: str, fields: Sequence[str]) -> tuple[list[dict], dict]:
    """The ``annotations`` struct array of a Cars196 .mat file as dicts of ``fields``, and the whole file."""
    import numpy as np

    mat = _loadmat(path)
    if "annotations" not in mat:
        raise DataError(f"Cars196: {path} has no 'annotations' struct array", path)
    ann = np.atleast_1d(mat["annotations"])
    records = []
    for i, a in enumerate(ann):
        rec = {}
        for name in fields:
            if not hasattr(a, name):
                raise DataError(f"Cars196: {path}: annotation {i} has no field {name!r}", path)
            value = getattr(a, name)
            if isinstance(value, np.ndarray):
                if value.size != 1:
                    raise DataError(f"Cars196: {path}: annotation {i} field {name!r} is not a scalar", path)
                value = value.item()
            rec[name] = value
        records.append(rec)
    return records, mat


def _class_of(rec: dict, i: int, path: str) -> int:
    c = rec["class"]
    try:
        c_int = int(c)
    except (TypeError, ValueError):
        c_int = -1
    if c_int != c or not 1 <= c_int <= 196:
        raise DataError(f"Cars196: {path}: annotation {i} has class {c!r}, expected an integer in 1..196", path)
    return c_int


class Cars196(ImageList):
    """Stanford Cars (196 classes), from ``cars_annos.mat`` + ``car_ims/`` or from the devkit layout.

    ``protocol="retrieval"`` (default): classes 1–98 are ``split="train"``, 99–196 ``"test"``
    (8,054 and 8,131 images in the full set), whatever the file's own train/test flag says; labels run
    over the split's 98 classes. ``protocol="classification"``: the file's own flag, 196 labels.

    ``root`` holds ``cars_annos.mat`` and ``car_ims/``, or ``devkit/`` with ``cars_train/`` and
    ``cars_test/`` (``cars_test_annos_withlabels.mat`` in ``root`` or ``devkit/``); a ``stanford_cars``
    subfolder of ``root`` is accepted too. Annotation problems are errors that name the file.
    """

    default_image_size = 224

    def __init__(self, root: str | os.PathLike, split: str = "train", protocol: str = "retrieval"):
        _check_split(split, ("train", "test"))
        if protocol not in ("retrieval", "classification"):
            raise ValueError(f"protocol must be 'retrieval' or 'classification', got {protocol!r}")
        root = os.path.abspath(os.fspath(root))
        if not self._has_layout(root) and self._has_layout(os.path.join(root, "stanford_cars")):
            root = os.path.join(root, "stanford_cars")
        if os.path.isfile(os.path.join(root, "cars_annos.mat")):
            entries, class_names = self._read_annos(root)
        elif os.path.isfile(os.path.join(root, "devkit", "cars_train_annos.mat")):
            entries, class_names = self._read_devkit(root)
        else:
            raise DataError(
                f"Cars196: found neither {os.path.join(root, 'cars_annos.mat')} nor the devkit layout "
                f"({os.path.join(root, 'devkit', 'cars_train_annos.mat')})",
                root,
            )
        # entries: (path, class 1..196, is_test)
        if protocol == "retrieval":
            lo, hi = (1, 98) if split == "train" else (99, 196)
            keep = [(p, c - lo) for p, c, _ in entries if lo <= c <= hi]
            classes = class_names[lo - 1 : hi]
        else:
            want_test = split == "test"
            keep = [(p, c - 1) for p, c, t in entries if t == want_test]
            classes = class_names
        files = [p for p, _ in keep]
        labels = [c for _, c in keep]
        super().__init__(files, labels, classes, classes, split=split, root=root)
        self.protocol = protocol

    @staticmethod
    def _has_layout(root: str) -> bool:
        return os.path.isfile(os.path.join(root, "cars_annos.mat")) or os.path.isfile(
            os.path.join(root, "devkit", "cars_train_annos.mat")
        )

    @staticmethod
    def _names(mat: dict, key: str, path: str) -> list[str]:
        import numpy as np

        if key not in mat:
            return [f"class_{i:03d}" for i in range(1, 197)]
        names = [str(n) for n in np.atleast_1d(mat[key]).ravel()]
        if len(names) != 196:
            raise DataError(f"Cars196: {path}: '{key}' lists {len(names)} classes, expected 196", path)
        return names

    def _read_annos(self, root: str):
        path = os.path.join(root, "cars_annos.mat")
        fields = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
        records, mat = _mat_records(path, fields)
        entries = []
        for i, r in enumerate(records):
            rel = r["relative_im_path"]
            if not isinstance(rel, str) or not rel:
                raise DataError(f"Cars196: {path}: annotation {i} has no relative_im_path string", path)
            entries.append((os.path.join(root, rel), _class_of(r, i, path), bool(int(r["test"]))))
        return entries, self._names(mat, "class_names", path)

    def _read_devkit(self, root: str):
        fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
        train_path = os.path.join(root, "devkit", "cars_train_annos.mat")
        test_path = next(
            (p for p in (os.path.join(root, "cars_test_annos_withlabels.mat"),
                         os.path.join(root, "devkit", "cars_test_annos_withlabels.mat")) if os.path.isfile(p)),
            None,
        )
        if test_path is None:
            raise DataError(
                f"Cars196: devkit layout without test labels: cars_test_annos_withlabels.mat not found in {root} "
                f"or {os.path.join(root, 'devkit')}",
                os.path.join(root, "cars_test_annos_withlabels.mat"),
            )
        entries = []
        for path, folder, is_test in ((train_path, "cars_train", False), (test_path, "cars_test", True)):
            records, _ = _mat_records(path, fields)
            for i, r in enumerate(records):
                if not isinstance(r["fname"], str) or not r["fname"]:
                    raise DataError(f"Cars196: {path}: annotation {i} has no fname string", path)
                entries.append((os.path.join(root, folder, r["fname"]), _class_of(r, i, path), is_test))
        meta_path = os.path.join(root, "devkit", "cars_meta.mat")
        names = self._names(_loadmat(meta_path), "class_names", meta_path) if os.path.isfile(meta_path) else (
            [f"class_{i:03d}" for i in range(1, 197)]
        )
        return entries, names
