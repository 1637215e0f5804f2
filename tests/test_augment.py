"""recogfast.data.augment: the train augmentation choices in both backends (docs/SPEC.md, "Augmentation").

The defaults draw today's images bit for bit; every other option is checked statistically on both backends
over a few thousand tiny images (flip rates inside a binomial interval, the jitter's factors, the erased
area), as the libraries' random streams differ; a resumed run draws what an uninterrupted one draws.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pytest
import torch

from recogfast import data as rd
from recogfast.data.augment import ERASE_RATIO, ERASE_SCALE, Augment
from recogfast.data.transforms import IMAGENET_MEAN, IMAGENET_STD

Image = pytest.importorskip("PIL.Image")

HAS_DALI = rd.dali_available()
BACKENDS = ["torchvision",
            pytest.param("dali", marks=pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed"))]
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
FOUR_SIGMA = 4.0


def _pixels(images):
    return (images.float() * STD + MEAN) * 255


def _draws(path, n, backend, size=16, batch=250, **kw):
    """`n` train draws of one image file (one epoch, CPU), as normalised float32 NCHW."""
    ds = rd.ImageList([path] * n, [0] * n, ["x"])
    loader = rd.build_loader(ds, train=True, batch_size=min(batch, n), image_size=size, backend=backend, device="cpu",
                             num_workers=0 if backend == "torchvision" else 1, seed=kw.pop("seed", 3), **kw)
    return torch.cat([x.contiguous() for x, _ in loader])


def _png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return str(path)


def _within_binomial(hits, n, p):
    return abs(hits / n - p) <= FOUR_SIGMA * math.sqrt(p * (1 - p) / n) + 1e-12


# --- defaults: today's images ------------------------------------------------------------------------------
GOLDEN_SIZES = [(40, 48), (48, 40), (36, 36), (50, 30), (33, 47), (45, 45)]
# sha256 (first 16 hex digits) of two epochs of the default train loader (seed 11, 32 px, batches of 3) over the
# GOLDEN_SIZES images, computed with the code before the augmentation options existed (torchvision 0.29.1,
# nvidia-dali 2.4.0): the defaults must draw exactly these images.
GOLDEN = {"torchvision": "f6bd5ebde890904b", "dali": "2caba6c38738efd0"}
GOLDEN_VERSIONS = {"torchvision": "0.29", "dali": "2.4."}


def _golden_files(tmp_path):
    files = []
    for k, (h, w) in enumerate(GOLDEN_SIZES):
        rng = np.random.default_rng(k)
        y, x = np.mgrid[0:h, 0:w]
        files.append(_png(tmp_path / f"g{k}.png", np.stack([x * 255 // w, y * 255 // h, rng.integers(0, 256, (h, w))], -1)))
    return files


def _digest(loader, epochs=2):
    h = hashlib.sha256()
    for _ in range(epochs):
        for x, y in loader:
            h.update(x.contiguous().numpy().tobytes())
            h.update(y.numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("augment", [None, Augment()])
def test_defaults_draw_todays_images_bit_for_bit(backend, augment, tmp_path):
    import torchvision

    version = torchvision.__version__ if backend == "torchvision" else __import__("nvidia.dali").dali.__version__
    if not version.startswith(GOLDEN_VERSIONS[backend]):
        pytest.skip(f"the golden digest was taken with {backend} {GOLDEN_VERSIONS[backend]}*, not {version}")
    files = _golden_files(tmp_path)
    ds = rd.ImageList(files, list(range(len(files))), [str(i) for i in range(len(files))])
    loader = rd.build_loader(ds, train=True, batch_size=3, image_size=32, backend=backend, device="cpu", seed=11,
                             num_workers=0 if backend == "torchvision" else 1, augment=augment)
    assert _digest(loader) == GOLDEN[backend]


def test_default_torchvision_transform_is_todays_compose():
    """Independent of library versions: the default ops are today's RandomResizedCrop + RandomHorizontalFlip(0.5),
    and an option that is off adds no op (an op of p=0 would still draw and shift every later draw)."""
    from torchvision.transforms import v2

    from recogfast.data.augment import train_transform

    ops = train_transform(32).transforms
    assert [type(op) for op in ops] == [v2.RandomResizedCrop, v2.RandomHorizontalFlip] and ops[1].p == 0.5
    assert [type(op) for op in train_transform(32, augment=Augment(hflip=0)).transforms] == [v2.RandomResizedCrop]
    full = Augment(vflip=0.1, auto_augment="randaugment", aa_magnitude=5, aa_num_ops=3, color_jitter=0.2, reprob=0.3)
    ops = train_transform(32, augment=full).transforms
    assert [type(op) for op in ops] == [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.RandomVerticalFlip,
                                        v2.RandAugment, v2.ColorJitter, v2.RandomErasing]
    assert (ops[3].num_ops, ops[3].magnitude, ops[4].brightness, ops[4].saturation) == (3, 5, (0.8, 1.2), (0.8, 1.2))
    image = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    torch.manual_seed(0)
    a = train_transform(32)(image)
    torch.manual_seed(0)
    b = v2.Compose([v2.RandomResizedCrop(32, scale=(0.08, 1), ratio=(3 / 4, 4 / 3), antialias=True),
                    v2.RandomHorizontalFlip(0.5)])(image)
    assert torch.equal(a, b)


def test_augment_refuses_out_of_range_values():
    for kw, message in [({"hflip": 1.5}, "hflip must be a probability in \\[0, 1\\], got 1.5"),
                        ({"vflip": -0.1}, "vflip must be a probability"), ({"reprob": "0.5"}, "reprob must be"),
                        ({"color_jitter": -1}, "color_jitter must be a number >= 0"),
                        ({"auto_augment": "augmix"}, "auto_augment must be one of none, randaugment"),
                        ({"auto_augment": "randaugment", "aa_magnitude": 31}, "aa_magnitude must be an integer in \\[0, 30\\]"),
                        ({"auto_augment": "randaugment", "aa_num_ops": 1.5}, "aa_num_ops must be an integer >= 1"),
                        ({"aa_magnitude": 4}, "aa_magnitude is RandAugment's")]:
        with pytest.raises(ValueError, match=message):
            Augment(**kw)
    with pytest.raises(TypeError, match="augment must be"):
        rd.build_loader(rd.ImageList(["x.png"], [0], ["x"]), True, 1, 16, augment={"hflip": 0})


# --- flips ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coords(tmp_path_factory):
    """R grows along the width, G along the height: a flip reverses the slope's sign."""
    y, x = np.mgrid[0:32, 0:32]
    return _png(tmp_path_factory.mktemp("coords") / "coords.png", np.stack([x * 8, y * 8, np.full_like(x, 128)], -1))


def _flipped(images):
    px = _pixels(images)
    r, g = px[:, 0].mean(1), px[:, 1].mean(2)
    return r[:, -1] < r[:, 0], g[:, -1] < g[:, 0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hflip, vflip", [(0.3, 0.7), (0.0, 1.0), (1.0, 0.0)])
def test_flip_rates_are_binomial(backend, hflip, vflip, coords):
    n = 2000
    h, v = _flipped(_draws(coords, n, backend, augment=Augment(hflip=hflip, vflip=vflip)))
    assert _within_binomial(int(h.sum()), n, hflip), h.float().mean()
    assert _within_binomial(int(v.sum()), n, vflip), v.float().mean()
    assert _within_binomial(int((h & v).sum()), n, hflip * vflip)  # drawn independently


# --- colour jitter -------------------------------------------------------------------------------------------
def _uniform_moments(s):
    low, high = max(0.0, 1 - s), 1 + s
    return (low + high) / 2, (high - low) / math.sqrt(12), low, high


@pytest.mark.parametrize("backend", BACKENDS)
def test_color_jitter_brightness_and_contrast_factors(backend, tmp_path):
    """Grey halves of 108 and 148 (mean 128: the contrast pivot of both libraries here): the image's mean is
    128·b and the halves' gap 40·b·c, with b and c ~ U(1-S, 1+S). Saturation leaves grey alone."""
    s, n = 0.4, 1000
    image = np.full((32, 32, 3), 108)
    image[:, 16:] = 148
    path = _png(tmp_path / "halves.png", image)
    px = _pixels(_draws(path, n, backend, crop_scale=1.0, augment=Augment(hflip=0, color_jitter=s))).double()
    b = px.mean((1, 2, 3)) / 128
    c = (px[..., 12:].mean((1, 2, 3)) - px[..., :4].mean((1, 2, 3))) / (40 * b)
    mean, std, low, high = _uniform_moments(s)
    for name, f in (("brightness", b), ("contrast", c)):
        # the uint8 rounding of a gap of 40·b·c pixel levels: about ±0.06 on c at b = 0.6
        assert f.min() > low - 0.07 and f.max() < high + 0.07, (name, f.min(), f.max())
        assert abs(f.mean() - mean) < FOUR_SIGMA * std / math.sqrt(n), (name, f.mean())
        assert abs(f.std() - std) < 0.1 * std, (name, f.std())
    assert (px.std(1) < 1.5).all()  # R = G = B: still grey
    plain = _pixels(_draws(path, 50, backend, crop_scale=1.0, augment=Augment(hflip=0))).double()
    assert (plain.mean((1, 2, 3)) - 128).abs().max() < 1  # without jitter: no shift at all


@pytest.mark.parametrize("backend", BACKENDS)
def test_color_jitter_saturation_factor(backend, tmp_path):
    """A flat colour: its chroma (distance from its own grey) scales by b·c·s in both libraries (torchvision's
    contrast pivots on the image's mean grey, DALI's on 128, but both scale the chroma by c)."""
    s, n = 0.3, 1000
    colour = np.array([150.0, 110.0, 125.0])
    path = _png(tmp_path / "flat.png", np.broadcast_to(colour, (24, 24, 3)))
    px = _pixels(_draws(path, n, backend, crop_scale=1.0, augment=Augment(hflip=0, color_jitter=s))).double()
    rgb = px.mean((2, 3))
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    chroma = (rgb - (rgb @ weights)[:, None]).norm(dim=1)
    base = torch.tensor(colour) - torch.tensor(colour) @ weights
    ratio = chroma / base.norm()
    mean, std, low, high = _uniform_moments(s)
    product_std = math.sqrt((std**2 + 1) ** 3 - 1)  # three independent factors of mean 1
    assert ratio.min() > low**3 - 0.03 and ratio.max() < high**3 + 0.03, (ratio.min(), ratio.max())
    assert abs(ratio.mean() - 1) < FOUR_SIGMA * product_std / math.sqrt(n) + 0.02, ratio.mean()
    assert abs(ratio.std() - product_std) < 0.2 * product_std, ratio.std()


# --- random erasing ------------------------------------------------------------------------------------------
def _erased_area_reference(rng, trials, size, redraw):
    """Mean erased fraction of a size×size image: torchvision draws again (10 tries) when the rectangle does not
    fit, DALI clips it to the image (docs/SPEC.md)."""
    total = 0.0
    for _ in range(trials):
        for _ in range(10 if redraw else 1):
            area = rng.uniform(*ERASE_SCALE)
            ratio = math.exp(rng.uniform(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])))
            h, w = math.sqrt(area * ratio), math.sqrt(area / ratio)
            if redraw:
                h, w = round(h * size) / size, round(w * size) / size
                if h < 1 and w < 1:
                    total += h * w
                    break
            else:
                total += min(h, 1) * min(w, 1)
    return total / trials


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_erasing_rate_area_and_fill(backend, tmp_path):
    p, n, size = 0.5, 2000, 32
    path = _png(tmp_path / "flat.png", np.full((24, 24, 3), 200))
    images = _draws(path, n, backend, size=size, augment=Augment(hflip=0, reprob=p))
    erased = images.abs().amax(1) < 0.02  # the fill is the mean colour: 0 once normalised
    assert (images.abs().amax(1)[~erased] > 1.0).all()  # anything else is the flat 200 (≈ 1.3 normalised)
    fraction = erased.flatten(1).float().mean(1)
    hits = int((fraction > 0).sum())
    assert _within_binomial(hits, n, p), hits / n
    reference = _erased_area_reference(np.random.default_rng(0), 20000, size, redraw=backend == "torchvision")
    observed = fraction[fraction > 0]
    sem = observed.std().item() / math.sqrt(len(observed))
    # pixel rounding of the rectangle's edges: up to about one row and column of 32
    assert abs(observed.mean().item() - reference) < FOUR_SIGMA * sem + 0.015, (observed.mean(), reference)
    assert observed.min() > ERASE_SCALE[0] * 0.5 and observed.max() < 0.36


# --- auto-augment policies -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smooth(tmp_path_factory):
    y, x = np.mgrid[0:32, 0:32] / 32
    image = np.stack([90 + 80 * np.sin(6 * x), 100 + 70 * np.cos(5 * y), 60 + 120 * x * y], -1)
    return _png(tmp_path_factory.mktemp("smooth") / "smooth.png", image)


@pytest.mark.parametrize("backend", BACKENDS)
def test_policies_change_most_images_by_a_similar_amount(backend, smooth):
    """Against the same crop without a policy (crop_scale 1: the whole image): RandAugment and TrivialAugment
    change nearly every image, AutoAugment's ImageNet sub-policies (applied with probabilities) most; the
    mean change, and RandAugment's growth with --aa-magnitude, are the same in both libraries' terms. At
    magnitude 0 only 2 of RandAugment's 14 ops (equalize, auto-contrast) act in either library: with 2 ops an
    image is left alone with probability (12/14)²."""
    n = 200
    plain = _pixels(_draws(smooth, 8, backend, crop_scale=1.0, augment=Augment(hflip=0)))[0]
    change = {}
    for policy, kw, at_least in (("randaugment", {"aa_magnitude": 0}, 0.0), ("randaugment", {"aa_magnitude": 30}, 0.9),
                                 ("trivialaugment", {}, 0.65), ("autoaugment", {}, 0.5)):
        px = _pixels(_draws(smooth, n, backend, crop_scale=1.0, batch=100,
                            augment=Augment(hflip=0, auto_augment=policy, **kw)))
        diff = (px - plain).abs().mean((1, 2, 3))
        assert (diff > 1.0).float().mean() >= at_least, (policy, kw, (diff > 1.0).float().mean())
        change[policy, kw.get("aa_magnitude")] = diff.mean().item()
        if kw.get("aa_magnitude") == 0:
            assert _within_binomial(int((diff > 1.0).sum()), n, 1 - (12 / 14) ** 2), (diff > 1.0).float().mean()
    assert change["randaugment", 30] > 3 * change["randaugment", 0], change
    # mean |change| in pixel levels, the average of the two libraries (measured: torchvision 7.9, 48.3, 23.7, 29.3;
    # DALI 9.5, 50.8, 25.9, 29.7): each library within 30 % of it
    both = {("randaugment", 0): 8.7, ("randaugment", 30): 49.5, ("trivialaugment", None): 24.8,
            ("autoaugment", None): 29.5}
    for key, expected in both.items():
        assert abs(change[key] - expected) < 0.3 * expected, (key, change[key], expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_policy_draws_are_seeded_per_epoch(backend, smooth):
    aug = Augment(auto_augment="trivialaugment", color_jitter=0.2, vflip=0.5, reprob=0.5)
    ds = rd.ImageList([smooth] * 16, [0] * 16, ["x"])

    def epochs(loader, *which):
        out = []
        for e in which:
            loader.set_epoch(e)
            out.append(torch.cat([x for x, _ in loader]))
        return out

    kw = dict(train=True, batch_size=8, image_size=16, backend=backend, device="cpu", seed=4, augment=aug,
              num_workers=0 if backend == "torchvision" else 1)
    e0, e1 = epochs(rd.build_loader(ds, **kw), 0, 1)
    (again,) = epochs(rd.build_loader(ds, **kw), 1)  # a resumed run starts at its epoch
    assert torch.equal(e1, again) and not torch.equal(e0, e1)


# --- runs: config.json, --config, resume -----------------------------------------------------------------------
AUG_FIELDS = {"hflip": 0.0, "vflip": 0.5, "auto_augment": "randaugment", "aa_magnitude": 7, "aa_num_ops": 1,
              "color_jitter": 0.2, "reprob": 0.25}


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    rd.Shapes196(cache_dir=folder, images_per_class=4)
    return str(folder)


def test_cli_records_the_augmentation_and_config_repeats_it(tmp_path, shapes_cache, capsys):
    import json

    from recogfast.cli import main

    base = ["train", "classify", "--data", shapes_cache, "--images-per-class", "4", "--model", "tinynet",
            "--image-size", "16", "--batch-size", "32", "--steps-per-epoch", "1", "--epochs", "1", "--workers", "0",
            "--device", "cpu", "--backend", "torchvision"]
    flags = ["--hflip", "0", "--vflip", "0.5", "--auto-augment", "randaugment", "--aa-magnitude", "7",
             "--aa-num-ops", "1", "--color-jitter", "0.2", "--reprob", "0.25"]
    line = ("augment: random resized crop (scale 0.08-1), vflip 0.5, randaugment (ops 1, magnitude 7/30), "
            "color jitter 0.2, random erasing 0.25")
    assert main(base + flags + ["--out", str(tmp_path / "a")]) == 0
    assert line in capsys.readouterr().out.splitlines()
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert {k: saved[k] for k in AUG_FIELDS} == AUG_FIELDS
    assert main(["train", "classify", "--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b")]) == 0
    assert line in capsys.readouterr().out.splitlines()
    again = json.loads((tmp_path / "b" / "config.json").read_text())
    assert {k: again[k] for k in AUG_FIELDS} == AUG_FIELDS
    assert main(base + ["--out", str(tmp_path / "c")]) == 0  # the defaults: today's flip only
    assert "augment: random resized crop (scale 0.08-1), hflip 0.5" in capsys.readouterr().out.splitlines()


class Killed(Exception):
    pass


@pytest.mark.parametrize("backend, policy", [("torchvision", "randaugment"), pytest.param(
    "dali", "trivialaugment", marks=pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed"))])
def test_resumed_run_draws_the_same_augmentation(tmp_path, shapes_cache, backend, policy):
    """Killed after its first epoch and resumed, a run with every option on repeats the uninterrupted run's
    losses (they depend on every augmented pixel) and log."""
    import csv

    from recogfast.engine import RunConfig, run_train

    fields = dict(AUG_FIELDS, auto_augment=policy) if policy == "randaugment" else \
        dict(AUG_FIELDS, auto_augment=policy, aa_magnitude=None, aa_num_ops=None)

    def cfg(out):
        return RunConfig(dataset="shapes196", data=shapes_cache, images_per_class=4, model="tinynet", image_size=16,
                         batch_size=32, epochs=3, steps_per_epoch=2, optimizer="adamw", lr=1e-3, num_workers=1,
                         device="cpu", backend=backend, out=str(out), progress=False, **fields)

    def log(out):
        return [{k: v for k, v in r.items() if k not in ("epoch_s", "train_img_per_s")}
                for r in csv.DictReader(open(out / "log.csv"))]

    _, full = run_train(cfg(tmp_path / "full"))

    def kill(trainer, event, **info):
        if event == "epoch" and trainer.epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        run_train(cfg(tmp_path / "run"), callbacks=[kill])
    torch.manual_seed(777)
    _, resumed = run_train(cfg(tmp_path / "run"), resume=True)
    assert len(full.step_losses) == 6 and resumed.step_losses == full.step_losses[2:]
    assert log(tmp_path / "run") == log(tmp_path / "full")
    _, plain = run_train(dataclasses.replace(cfg(tmp_path / "plain"), **dataclasses.asdict(Augment())))
    assert plain.step_losses[:2] != full.step_losses[:2]  # the options did change what the model saw
