"""recogfast.data: datasets in their on-disk formats, both loader backends, the sampler, bad data.

Every dataset here is a tiny fake written by the test in the exact format of the real one (JPEGs,
val_annotations.txt, cars_annos.mat and the devkit .mat files via scipy.io.savemat). DALI cases skip
when DALI is not importable; everything runs on the CPU (DALI with device_id=None).
"""

import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from recogfast import data as rd
from recogfast.data import shapes as shapes_module
from recogfast.data.transforms import IMAGENET_MEAN, IMAGENET_STD

Image = pytest.importorskip("PIL.Image")
scipy_io = pytest.importorskip("scipy.io")

HAS_DALI = rd.dali_available()
BACKENDS = [
    "torchvision",
    pytest.param("dali", marks=pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed")),
]
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _loader(dataset, train, batch_size, size, backend, **kw):
    kw.setdefault("num_workers", 0 if backend == "torchvision" else 1)
    return rd.build_loader(dataset, train=train, batch_size=batch_size, image_size=size, backend=backend,
                           device="cpu", **kw)


def _pixels(images):
    """Normalised images back to 0..255 pixel units (float32, NCHW)."""
    return (images.float() * STD + MEAN) * 255


# --- writing fake files ---------------------------------------------------------------------------------


def smooth_image(h, w, seed):
    """A smooth RGB image (low-frequency waves): resampling differences stay small on it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [
        rng.uniform(60, 195) + rng.uniform(20, 50) * np.sin(2 * np.pi * (rng.uniform(0.3, 1.2) * x + rng.uniform(0.3, 1.2) * y)
                                                            + rng.uniform(0, 6))
        for _ in range(3)
    ]
    return Image.fromarray(np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8), "RGB")


def write_jpeg(path, h=24, w=32, seed=0, mode="RGB", colour=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.new("RGB", (w, h), colour) if colour is not None else smooth_image(h, w, seed)
    img.convert(mode).save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """tiny-imagenet-200 with 3 classes listed out of sorted order, 3 train images each, 5 val images."""
    root = tmp_path_factory.mktemp("tin") / "tiny-imagenet-200"
    wnids = ["n03000000", "n01000000", "n02000000"]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01000000\tfirst thing\nn02000000\tsecond thing\nn03000000\tthird, thing\n")
    for c, wnid in enumerate(wnids):
        for i in range(3):
            write_jpeg(str(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"), 16, 16, seed=10 * c + i,
                       mode="L" if (c, i) == (1, 2) else "RGB")  # one grayscale file, as in the real set
    val = [("val_0.JPEG", "n02000000"), ("val_1.JPEG", "n03000000"), ("val_2.JPEG", "n01000000"),
           ("val_3.JPEG", "n02000000"), ("val_4.JPEG", "n02000000")]
    lines = []
    for k, (name, wnid) in enumerate(val):
        write_jpeg(str(root / "val" / "images" / name), 16, 16, seed=100 + k)
        lines.append(f"{name}\t{wnid}\t0\t1\t15\t14")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def _struct_array(rows, fields):
    arr = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f in fields:
            arr[0, i][f] = np.array([[row[f]]]) if not isinstance(row[f], str) else row[f]
    return arr


# 196 classes, one image each, plus a second image for classes 1 and 150; the test flag alternates
# so it disagrees with the retrieval split on purpose.
CARS = [(c, (c % 2 == 0)) for c in range(1, 197)] + [(1, True), (150, False)]


@pytest.fixture(scope="module")
def cars_annos_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cars_annos")
    rows = []
    for k, (c, test) in enumerate(CARS):
        rel = f"car_ims/{k + 1:06d}.jpg"
        write_jpeg(str(root / rel), 8, 12, seed=k)
        rows.append({"relative_im_path": rel, "bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 10, "bbox_y2": 7,
                     "class": c, "test": int(test)})
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    names = np.array([f"Make {c} Model {c} 2012" for c in range(1, 197)], dtype=object).reshape(1, -1)
    scipy_io.savemat(str(root / "cars_annos.mat"), {"annotations": _struct_array(rows, fields), "class_names": names})
    return root


@pytest.fixture(scope="module")
def cars_devkit_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cars_devkit")
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    train, test = [], []
    for k, (c, is_test) in enumerate(CARS):
        rows, folder = (test, "cars_test") if is_test else (train, "cars_train")
        fname = f"{len(rows) + 1:05d}.jpg"
        write_jpeg(str(root / folder / fname), 8, 12, seed=k)
        rows.append({"bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 10, "bbox_y2": 7, "class": c, "fname": fname})
    (root / "devkit").mkdir()
    scipy_io.savemat(str(root / "devkit" / "cars_train_annos.mat"), {"annotations": _struct_array(train, fields)})
    scipy_io.savemat(str(root / "cars_test_annos_withlabels.mat"), {"annotations": _struct_array(test, fields)})
    names = np.array([f"Make {c} Model {c} 2012" for c in range(1, 197)], dtype=object).reshape(1, -1)
    scipy_io.savemat(str(root / "devkit" / "cars_meta.mat"), {"class_names": names})
    return root


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    """Images of several sizes and kinds, each with its own label (so labels identify samples)."""
    root = tmp_path_factory.mktemp("mixed")
    files = []
    for k, (h, w) in enumerate([(24, 32), (32, 24), (31, 45), (20, 20), (37, 29), (40, 61), (18, 27), (33, 33)]):
        files.append(write_jpeg(str(root / f"img{k}.jpg"), h, w, seed=k))
    files.append(write_jpeg(str(root / "gray.jpg"), 26, 30, seed=50, mode="L"))
    files.append(write_jpeg(str(root / "cmyk.jpg"), 30, 26, seed=51, mode="CMYK"))
    png = str(root / "photo.png")
    smooth_image(28, 35, 52).save(png)
    files.append(png)
    return files


def _identity_list(files):
    return rd.ImageList(files, list(range(len(files))), [f"c{i}" for i in range(len(files))])


# --- datasets ---------------------------------------------------------------------------------------


def test_tiny_imagenet_train(tiny_root):
    ds = rd.TinyImageNet(tiny_root, "train")
    assert ds.classes == ["n03000000", "n01000000", "n02000000"]  # the order of wnids.txt
    assert ds.class_names == ["third, thing", "first thing", "second thing"]
    assert len(ds) == 9 and ds.labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(os.path.basename(p).startswith(ds.classes[y]) for p, y in zip(ds.files, ds.labels))
    assert ds.default_image_size == 64
    # The parent folder works as root too.
    assert rd.TinyImageNet(tiny_root.parent, "train").files == ds.files


def test_tiny_imagenet_val_is_test(tiny_root):
    val = rd.TinyImageNet(tiny_root, "val")
    assert [os.path.basename(f) for f in val.files] == [f"val_{k}.JPEG" for k in range(5)]
    assert val.labels == [2, 0, 1, 2, 2]
    test = rd.TinyImageNet(tiny_root, "test")
    assert test.files == val.files and test.labels == val.labels
    with pytest.raises(ValueError, match="split"):
        rd.TinyImageNet(tiny_root, "unlabelled")


def _cars_expect(split, protocol):
    if protocol == "retrieval":
        lo, hi = (1, 98) if split == "train" else (99, 196)
        return [c - lo for c, _ in CARS if lo <= c <= hi]
    return [c - 1 for c, t in CARS if t == (split == "test")]


@pytest.mark.parametrize("layout", ["annos", "devkit"])
def test_cars196_splits(layout, cars_annos_root, cars_devkit_root):
    root = cars_annos_root if layout == "annos" else cars_devkit_root
    train = rd.Cars196(root, "train")
    test = rd.Cars196(root, "test")
    # Retrieval: classes 1-98 / 99-196 whatever the file's flag; each split has 98 classes.
    assert train.num_classes == test.num_classes == 98
    assert train.classes[0] == "Make 1 Model 1 2012" and test.classes[0] == "Make 99 Model 99 2012"
    assert test.classes[-1] == "Make 196 Model 196 2012"
    assert sorted(train.labels) == sorted(_cars_expect("train", "retrieval"))
    assert sorted(test.labels) == sorted(_cars_expect("test", "retrieval"))
    assert len(train) == 99 and len(test) == 99  # 98 + the extra image of class 1 / of class 150
    assert not set(train.files) & set(test.files)
    assert all(os.path.isfile(f) for f in train.files + test.files)
    for split in ("train", "test"):
        cls = rd.Cars196(root, split, protocol="classification")
        assert cls.num_classes == 196
        assert sorted(cls.labels) == sorted(_cars_expect(split, "classification"))
    assert train.default_image_size == 224


def test_cars196_layouts_agree(cars_annos_root, cars_devkit_root):
    """Both layouts describe the same images: same labels for the same pixels."""
    for split in ("train", "test"):
        a, b = rd.Cars196(cars_annos_root, split), rd.Cars196(cars_devkit_root, split)

        def key(ds):
            return sorted((y, open(f, "rb").read()) for f, y in zip(ds.files, ds.labels))

        assert key(a) == key(b)


def test_shapes196(tmp_path, monkeypatch):
    train = rd.Shapes196(tmp_path, "train", images_per_class=4, image_size=32, seed=3)
    test = rd.Shapes196(tmp_path, "test", images_per_class=4, image_size=32, seed=3)
    assert train.num_classes == test.num_classes == 98 and len(train) == len(test) == 98 * 4
    assert not set(train.classes) & set(test.classes)
    assert sorted(train.class_ids + test.class_ids) == list(range(196))
    assert train.labels == [k // 4 for k in range(98 * 4)]
    assert train.default_image_size == 32
    with Image.open(train.files[0]) as im:
        assert im.format == "JPEG" and im.size == (32, 32) and im.mode == "RGB"
    # Another seed permutes the classes differently.
    other = rd.Shapes196(tmp_path, "train", images_per_class=4, image_size=32, seed=4)
    assert other.classes != train.classes
    # Classification: 3/4 of each class's images train, the rest test, all 196 classes.
    cls_train = rd.Shapes196(tmp_path, "train", "classification", images_per_class=4, image_size=32, seed=3)
    cls_test = rd.Shapes196(tmp_path, "test", "classification", images_per_class=4, image_size=32, seed=3)
    assert (len(cls_train), len(cls_test), cls_train.num_classes) == (196 * 3, 196, 196)
    assert not set(cls_train.files) & set(cls_test.files)
    # The second run reuses the cache: rendering again would fail here.
    monkeypatch.setattr(shapes_module, "render_shape_image", lambda *a: pytest.fail("re-rendered the cache"))
    assert rd.Shapes196(tmp_path, "train", images_per_class=4, image_size=32, seed=3).files == train.files


def test_shapes196_deterministic_and_classes_differ():
    a = np.asarray(shapes_module.render_shape_image(17, 2, 32, seed=0))
    assert np.array_equal(a, np.asarray(shapes_module.render_shape_image(17, 2, 32, seed=0)))
    assert not np.array_equal(a, np.asarray(shapes_module.render_shape_image(17, 2, 32, seed=1)))
    assert not np.array_equal(a, np.asarray(shapes_module.render_shape_image(17, 3, 32, seed=0)))
    # The shape's hue is visible: mean colour of a "red" class vs a "blue" class.
    names = shapes_module._class_names()
    red, blue = names.index("square_red_solid"), names.index("square_blue_solid")
    r = np.mean([np.asarray(shapes_module.render_shape_image(red, i, 32)).reshape(-1, 3).mean(0) for i in range(6)], 0)
    b = np.mean([np.asarray(shapes_module.render_shape_image(blue, i, 32)).reshape(-1, 3).mean(0) for i in range(6)], 0)
    assert r[0] - r[2] > 15 and b[2] - b[0] > 15


def test_shapes196_interrupted_render_leaves_no_cache(tmp_path, monkeypatch):
    real = shapes_module.render_shape_image
    calls = []

    def flaky(*args):
        calls.append(args)
        if len(calls) == 50:
            raise KeyboardInterrupt  # the user stops the first run half-way
        return real(*args)

    monkeypatch.setattr(shapes_module, "render_shape_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        rd.Shapes196(tmp_path, images_per_class=2, image_size=16)
    assert os.listdir(tmp_path) == []  # neither a half-written cache nor a temporary folder
    monkeypatch.setattr(shapes_module, "render_shape_image", real)
    ds = rd.Shapes196(tmp_path, images_per_class=2, image_size=16)
    assert all(os.path.isfile(f) for f in ds.files)


# --- loaders --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [True, False])
def test_eval_output_format_and_normalisation(backend, channels_last, tmp_path):
    colours = [(200, 30, 90), (20, 240, 128), (128, 128, 128)]
    files = [write_jpeg(str(tmp_path / f"c{k}.jpg"), 20 + 3 * k, 30, colour=c) for k, c in enumerate(colours)]
    ds = _identity_list(files)
    batches = list(_loader(ds, False, 2, 16, backend, channels_last=channels_last))
    assert [tuple(x.shape) for x, _ in batches] == [(2, 3, 16, 16), (1, 3, 16, 16)]
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert images.dtype == torch.float32 and images.device.type == "cpu"
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2]
    assert images.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    expect = ((torch.tensor(colours, dtype=torch.float32) / 255).view(3, 3, 1, 1) - MEAN) / STD
    # A flat colour survives resize/crop exactly; JPEG chroma subsampling moves it by a few levels.
    assert (images - expect).abs().max() * 255 * STD.min() < 4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_output(backend, dtype, mixed_dir):
    ds = _identity_list(mixed_dir[:4])
    ref = torch.cat([x for x, _ in _loader(ds, False, 4, 16, backend)])
    out = torch.cat([x for x, _ in _loader(ds, False, 4, 16, backend, dtype=dtype)])
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.float(), ref, atol=0.02, rtol=0.01)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grayscale_png_cmyk_decode_to_rgb(backend, mixed_dir):
    gray, cmyk, png = mixed_dir[-3:]
    ds = _identity_list([gray, cmyk, png])
    images = _pixels(torch.cat([x for x, _ in _loader(ds, False, 3, 16, backend)]))
    assert images.shape == (3, 3, 16, 16)
    assert (images[0] - images[0].mean(0, keepdim=True)).abs().max() < 0.5  # gray: R = G = B
    for k, path in ((1, cmyk), (2, png)):
        with Image.open(path) as im:
            rgb = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float()
        # Colour means agree with PIL's decode (the crop covers most of the image).
        assert (images[k].mean((1, 2)) - rgb.mean((1, 2))).abs().max() < 8


@pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed")
@pytest.mark.parametrize("size", [16, 21, 28])
def test_eval_backends_agree_pixelwise(size, mixed_dir):
    """Same decoder (libjpeg-turbo on the CPU), same geometry: only resampling rounding differs."""
    ds = _identity_list(mixed_dir)
    tv = _pixels(torch.cat([x for x, _ in _loader(ds, False, 4, size, "torchvision")]))
    dali = _pixels(torch.cat([x for x, _ in _loader(ds, False, 4, size, "dali")]))
    diff = (tv - dali).abs()
    assert diff.max() <= 3 and diff.mean() <= 0.5, (diff.max(), diff.mean())


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_loader_epochs_shuffle_and_reproducibility(backend, mixed_dir):
    ds = _identity_list(mixed_dir)
    loader = _loader(ds, True, 4, 12, backend, seed=7)
    assert len(loader) == len(ds) // 4
    epochs = [[y.tolist() for _, y in loader] for _ in range(2)]
    for batches in epochs:
        assert len(batches) == 2 and all(len(b) == 4 for b in batches)  # drop_last in training
        assert len(set(sum(batches, []))) == 8
    assert epochs[0] != epochs[1]  # a new order each epoch
    again = _loader(ds, True, 4, 12, backend, seed=7)
    assert [y.tolist() for _, y in again] == epochs[0]  # reproducible per seed and epoch
    again.set_epoch(1)
    first = [(x, y) for x, y in again]
    assert [y.tolist() for _, y in first] == epochs[1]
    x = first[0][0]
    assert x.shape == (4, 3, 12, 12) and x.is_contiguous(memory_format=torch.channels_last)
    assert x.abs().max() < 3  # normalised range


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_order_in_both_backends(backend, mixed_dir):
    """The index order comes from the shared batch sampler, not from the backend."""
    ds = _identity_list(mixed_dir)
    order = [b for b in rd.ShuffleBatchSampler(len(ds), 3, shuffle=True, drop_last=True, seed=5)]
    assert [y.tolist() for _, y in _loader(ds, True, 3, 8, backend, seed=5)] == order


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [True, False])
def test_shards_disjoint(backend, train, mixed_dir):
    ds = _identity_list(mixed_dir)
    seen = []
    for shard in range(3):
        loader = _loader(ds, train, 2, 8, backend, shard_id=shard, num_shards=3, seed=1)
        seen.append([i for _, y in loader for i in y.tolist()])
    flat = sum(seen, [])
    assert len(flat) == len(set(flat))
    if train:
        assert len({len(s) for s in seen}) == 1  # equal steps per rank
    else:
        assert sorted(flat) == list(range(len(ds)))  # evaluation sees everything once


def test_auto_backend_says_what_it_chose(mixed_dir, caplog):
    with caplog.at_level(logging.INFO, logger="recogfast.data"):
        loader = rd.build_loader(_identity_list(mixed_dir), False, 4, 8, device="cpu", num_workers=1)
    assert loader.backend == ("dali" if HAS_DALI else "torchvision")
    assert f"chose '{loader.backend}'" in caplog.text


def test_build_loader_arguments(mixed_dir):
    ds = _identity_list(mixed_dir)
    with pytest.raises(ValueError, match="backend"):
        rd.build_loader(ds, True, 4, 8, backend="pil")
    with pytest.raises(ValueError, match="on_error"):
        rd.build_loader(ds, True, 4, 8, on_error="ignore")
    with pytest.raises(ValueError, match="dtype"):
        rd.build_loader(ds, True, 4, 8, dtype=torch.int8)
    with pytest.raises(ValueError, match="batch_size"):
        rd.build_loader(ds, True, 4, 8, sampler=rd.MPerClassSampler(ds.labels, 1, 2))
    if not HAS_DALI:
        with pytest.raises(ImportError, match="nvidia-dali"):
            rd.build_loader(ds, True, 4, 8, backend="dali")


# --- MPerClassSampler ------------------------------------------------------------------------------

LABELS = [c for c in range(12) for _ in range(5 + c % 3)] + [12, 12]  # class 12 has fewer than m images


def test_sampler_m_per_class():
    sampler = rd.MPerClassSampler(LABELS, m=3, batch_size=12, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 21 // 4  # 21 groups of 3 (1 or 2 per class), 4 per batch
    for b in batches:
        labels = [LABELS[i] for i in b]
        counts = {c: labels.count(c) for c in set(labels)}
        assert len(b) == 12 and sorted(counts.values()) == [3, 3, 3, 3]
    used = [i for b in batches for i in b if LABELS[i] != 12]
    assert len(used) == len(set(used))  # no image twice in an epoch (except the short class)


def test_sampler_reproducible_per_seed_and_epoch():
    a, b = rd.MPerClassSampler(LABELS, 2, 8, seed=1), rd.MPerClassSampler(LABELS, 2, 8, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(rd.MPerClassSampler(LABELS, 2, 8, seed=2)) != list(rd.MPerClassSampler(LABELS, 2, 8, seed=1))


def test_sampler_shards_disjoint():
    shards = [list(rd.MPerClassSampler(LABELS, 2, 8, seed=3, shard_id=s, num_shards=3)) for s in range(3)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) > 0
    flat = [i for s in shards for b in s for i in b if LABELS[i] != 12]
    assert len(flat) == len(set(flat))


def test_sampler_arguments():
    with pytest.raises(ValueError, match="multiple of m"):
        rd.MPerClassSampler(LABELS, 3, 8)
    with pytest.raises(ValueError, match="classes per batch"):
        rd.MPerClassSampler([0, 0, 1, 1], 2, 6)
    with pytest.raises(ValueError, match="shard_id"):
        rd.MPerClassSampler(LABELS, 2, 8, shard_id=2, num_shards=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampler_drives_both_backends(backend, mixed_dir):
    files = mixed_dir * 2  # 22 samples, 11 classes of 2
    ds = rd.ImageList(files, [k % 11 for k in range(22)], [f"c{k}" for k in range(11)])
    sampler = rd.MPerClassSampler(ds.labels, m=2, batch_size=6, seed=4)
    loader = _loader(ds, True, 6, 8, backend, sampler=sampler)
    got = [y.tolist() for _, y in loader]
    sampler.set_epoch(0)
    assert got == [[ds.labels[i] for i in b] for b in sampler]
    assert all(sorted({y.count(c) for c in y}) == [2] for y in got)


# --- bad data -------------------------------------------------------------------------------------


def _bad_file(kind, folder, good):
    path = str(folder / f"bad_{kind}.jpg")
    raw = open(good, "rb").read()
    if kind == "missing":
        return path
    content = {
        "empty": b"",
        "garbage": b"this is not an image" * 20,
        "truncated": raw[: len(raw) // 2],
        "bad_header": b"\xff\xd8\xff" + b"\x00\x13garbage-garbage" * 8 + b"\xff\xd9",
        # garbage inside the entropy-coded data, header and end marker intact: libjpeg-turbo (torchvision)
        # fails on its invalid markers, DALI would decode it with a warning; both must refuse it alike
        "garbage_mid": raw[: raw.find(b"\xff\xda") + 20] + bytes((i * 37) % 256 for i in range(len(raw) // 3))
        + raw[raw.find(b"\xff\xda") + 20 + len(raw) // 3:],
    }[kind]
    with open(path, "wb") as f:
        f.write(content)
    return path


BAD_KINDS = ["missing", "empty", "garbage", "truncated", "bad_header", "garbage_mid"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_file_raises_with_path(backend, kind, mixed_dir, tmp_path):
    bad = _bad_file(kind, tmp_path, mixed_dir[0])
    ds = _identity_list(mixed_dir[:5] + [bad] + mixed_dir[5:8])
    with pytest.raises(rd.DataError, match=os.path.basename(bad)) as info:
        for _ in _loader(ds, False, 3, 8, backend):
            pass
    assert info.value.path == bad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_file_skipped_and_counted(backend, kind, mixed_dir, tmp_path):
    bad = _bad_file(kind, tmp_path, mixed_dir[0])
    files = mixed_dir[:5] + [bad] + mixed_dir[5:8]
    ds = _identity_list(files)
    loader = _loader(ds, False, 3, 8, backend, on_error="skip")
    with pytest.warns(rd.SkippedSamplesWarning, match=r"skipped 1 unreadable sample.*" + os.path.basename(bad)):
        seen = [i for _, y in loader for i in y.tolist()]
    assert seen == [i for i in range(len(files)) if i != 5]
    assert [p for p, _ in loader.skipped] == [bad]
    with warnings.catch_warnings():  # a second epoch reports again, still without crashing
        warnings.simplefilter("ignore", rd.SkippedSamplesWarning)
        assert [i for _, y in loader for i in y.tolist()] == seen


def test_empty_class_folder(tiny_root, tmp_path):
    import shutil

    root = tmp_path / "tiny-imagenet-200"
    shutil.copytree(tiny_root, root)
    for f in (root / "train" / "n01000000" / "images").iterdir():
        f.unlink()
    with pytest.raises(rd.DataError, match="n01000000") as info:
        rd.TinyImageNet(root, "train")
    assert info.value.path.endswith(os.path.join("n01000000", "images"))
    with pytest.warns(UserWarning, match="skipped 1 problem"):
        ds = rd.TinyImageNet(root, "train", on_error="skip")
    assert ds.num_classes == 3 and sorted(set(ds.labels)) == [0, 2]


def test_malformed_val_annotations(tiny_root, tmp_path):
    import shutil

    root = tmp_path / "tiny-imagenet-200"
    shutil.copytree(tiny_root, root)
    ann = root / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_9.JPEG n01000000 0 0 1 1\nval_8.JPEG\tn09999999\t0\t0\t1\t1\n")
    with pytest.raises(rd.DataError, match=r"val_annotations.txt:6: malformed annotation.*6 tab-separated") as info:
        rd.TinyImageNet(root, "val")
    assert info.value.path == str(ann)
    with pytest.warns(UserWarning, match="skipped 2 problem"):
        assert len(rd.TinyImageNet(root, "val", on_error="skip")) == 5


@pytest.mark.parametrize("damage", ["garbage", "no_annotations", "missing_field", "bad_class"])
def test_malformed_cars_annotations(damage, tmp_path):
    path = tmp_path / "cars_annos.mat"
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    row = {"relative_im_path": "car_ims/000001.jpg", "bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 5, "bbox_y2": 5,
           "class": 3, "test": 0}
    if damage == "garbage":
        path.write_bytes(b"MATLAB 5.0 MAT-file, but then nothing useful" + bytes(200))
    elif damage == "no_annotations":
        scipy_io.savemat(str(path), {"something_else": np.arange(3)})
    elif damage == "missing_field":
        scipy_io.savemat(str(path), {"annotations": _struct_array([row], fields[:-2])})
    else:
        scipy_io.savemat(str(path), {"annotations": _struct_array([dict(row, **{"class": 197})], fields)})
    with pytest.raises(rd.DataError, match="cars_annos.mat") as info:
        rd.Cars196(tmp_path, "train")
    assert info.value.path == str(path)


def test_missing_dataset_root(tmp_path):
    with pytest.raises(rd.DataError, match="wnids.txt"):
        rd.TinyImageNet(tmp_path, "train")
    with pytest.raises(rd.DataError, match="cars_annos.mat"):
        rd.Cars196(tmp_path, "train")


def test_torchvision_augmentation_independent_of_workers(mixed_dir, tmp_path):
    """Augmentation is seeded per (seed, epoch, sample): worker count and set_epoch jumps do not matter."""
    ds = _identity_list(mixed_dir[:6])
    inline = _loader(ds, True, 3, 12, "torchvision", seed=2, num_workers=0)
    pooled = _loader(ds, True, 3, 12, "torchvision", seed=2, num_workers=2)
    a = [x for x, _ in inline]
    b = [x for x, _ in pooled]
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == 2
    pooled.set_epoch(0)
    assert all(torch.equal(x, y) for x, y in zip(a, (x for x, _ in pooled)))
    assert not torch.equal(a[0], next(iter(inline))[0])  # epoch 1 draws new crops
    # Errors cross the worker boundary with their path.
    bad = _bad_file("truncated", tmp_path, mixed_dir[0])
    with pytest.raises(rd.DataError, match="bad_truncated.jpg"):
        list(_loader(_identity_list(mixed_dir[:2] + [bad]), False, 3, 8, "torchvision", num_workers=2))


def _crop_windows(images):
    """(x0, width, y0, height, flipped) of each train crop of the coordinate image (R = x, G = y)."""
    px = _pixels(images)
    r, g = px[:, 0].mean(1), px[:, 1].mean(2)  # R along the width, G along the height
    n = r.shape[1]
    slope_x = (r[:, -1] - r[:, 0]) / (n - 1)
    slope_y = (g[:, -1] - g[:, 0]) / (n - 1)
    return slope_x.abs() * n, slope_y * n, slope_x < 0


def _reference_rrc_stats(rng, trials, size=256):
    """torchvision's RandomResizedCrop.get_params on a square image, in numpy."""
    areas, log_ratios = [], []
    for _ in range(trials):
        for _ in range(10):
            area = size * size * rng.uniform(0.08, 1.0)
            log_r = rng.uniform(np.log(3 / 4), np.log(4 / 3))
            w, h = round(np.sqrt(area * np.exp(log_r))), round(np.sqrt(area / np.exp(log_r)))
            if 0 < w <= size and 0 < h <= size:
                break
        else:
            w = h = size
        areas.append(w * h / size**2)
        log_ratios.append(np.log(w / h))
    return np.mean(areas), np.std(areas), np.mean(log_ratios), np.std(log_ratios)


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_crops_follow_the_scale_ratio_distribution(backend, tmp_path):
    """Crop windows read back from a coordinate image: area in [0.08, 1], ratio in [3/4, 4/3], the
    same moments as torchvision's sampler, flips half the time."""
    y, x = np.mgrid[0:256, 0:256]
    path = str(tmp_path / "coords.png")
    Image.fromarray(np.stack([x, y, np.full_like(x, 128)], -1).astype(np.uint8)).save(path)
    n = 240
    ds = rd.ImageList([path] * n, [0] * n, ["coords"])
    images = torch.cat([x for x, _ in _loader(ds, True, 48, 32, backend, seed=3)])
    width, height, flipped = _crop_windows(images)
    area = (width * height / 256**2).numpy()
    log_ratio = torch.log(width / height).numpy()
    assert area.min() > 0.06 and area.max() < 1.02
    assert np.abs(log_ratio).max() < np.log(4 / 3) + 0.06
    mean_a, std_a, mean_r, std_r = _reference_rrc_stats(np.random.default_rng(0), 20000)
    assert abs(area.mean() - mean_a) < 4 * std_a / np.sqrt(n)
    assert abs(log_ratio.mean() - mean_r) < 4 * std_r / np.sqrt(n)
    assert abs(log_ratio.std() - std_r) < 0.25 * std_r
    assert 0.35 < flipped.float().mean() < 0.65


@pytest.mark.parametrize("backend", BACKENDS)
def test_crop_scale_sets_the_smallest_crop_area(backend, tmp_path):
    """crop_scale=0.5: every crop window covers at least half the image (both backends), and the
    windows are larger on average than with the default 0.08."""
    y, x = np.mgrid[0:256, 0:256]
    path = str(tmp_path / "coords.png")
    Image.fromarray(np.stack([x, y, np.full_like(x, 128)], -1).astype(np.uint8)).save(path)
    ds = rd.ImageList([path] * 96, [0] * 96, ["coords"])
    areas = {}
    for scale in (0.08, 0.5):
        images = torch.cat([x for x, _ in _loader(ds, True, 48, 32, backend, seed=5, crop_scale=scale)])
        width, height, _ = _crop_windows(images)
        areas[scale] = (width * height / 256**2).numpy()
    assert areas[0.5].min() > 0.5 - 0.04 and areas[0.5].max() < 1.02
    assert areas[0.5].mean() > areas[0.08].mean() + 0.15
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="crop_scale"):
            _loader(ds, True, 48, 32, backend, crop_scale=bad)


def test_works_without_dali(mixed_dir, monkeypatch, caplog):
    """Where DALI is missing, auto falls back to torchvision (and says so); asking for DALI is an
    ImportError that names the package."""
    from recogfast.data import loaders

    monkeypatch.setattr(loaders, "dali_available", lambda: False)
    ds = _identity_list(mixed_dir[:3])
    with caplog.at_level(logging.INFO, logger="recogfast.data"):
        loader = rd.build_loader(ds, False, 3, 8, device="cpu", num_workers=0)
    assert loader.backend == "torchvision" and "DALI is not installed" in caplog.text
    assert [y.tolist() for _, y in loader] == [[0, 1, 2]]
    with pytest.raises(ImportError, match="nvidia-dali-cuda130"):
        rd.build_loader(ds, False, 3, 8, backend="dali")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a visible GPU")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [False, True])
def test_cuda_output(backend, train, mixed_dir):
    """On a GPU: images and labels arrive on the device; eval pixels match the CPU pipeline within the
    decoders' tolerance (nvJPEG's IDCT and colour conversion differ slightly from libjpeg-turbo)."""
    ds = _identity_list(mixed_dir)
    kw = {"num_workers": 2}
    gpu = list(rd.build_loader(ds, train, 4, 16, backend=backend, device="cuda", dtype=torch.bfloat16, **kw))
    for x, y in gpu:
        assert x.device.type == "cuda" and y.device.type == "cuda"
        assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
        assert x.shape[1:] == (3, 16, 16)
    if not train:
        cpu = torch.cat([x for x, _ in _loader(ds, False, 4, 16, "torchvision")])
        diff = (_pixels(torch.cat([x for x, _ in gpu]).float().cpu()) - _pixels(cpu)).abs()
        assert diff.mean() < 2.5 and diff.max() < 24, (diff.mean(), diff.max())


_FORK_AFTER_DALI = """
import gc, sys
import recogfast.data as rd
files = sys.argv[1:]
ds = rd.ImageList(files, list(range(len(files))), [f"c{i}" for i in range(len(files))])
dali = rd.build_loader(ds, train=False, batch_size=2, image_size=8, backend="dali", device="cpu", num_workers=1)
for _ in dali:
    pass
cycle = [dali]
cycle.append(cycle)  # the pipeline now dies only when the garbage collector runs
del dali, cycle
gc.disable()  # ... and it must not run here, before the fork


tv = rd.build_loader(ds, train=False, batch_size=2, image_size=8, backend="torchvision", device="cpu", num_workers=1)
orig = tv._loader.dataset.__class__.__getitem__
tv._loader.dataset.__class__.__getitem__ = lambda self, key: (gc.collect(), orig(self, key))[1]  # GC in the worker
print(sum(len(y) for _, y in tv))
"""


@pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed")
def test_forked_workers_never_finalise_an_inherited_dali_pipeline(mixed_dir):
    """A DALI pipeline still waiting for the garbage collector when the torchvision loader forks its workers
    must not be collected in a worker: its destructor would wait forever for the parent's executor threads."""
    out = subprocess.run([sys.executable, "-c", _FORK_AFTER_DALI, *mixed_dir[:4]], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "4"
