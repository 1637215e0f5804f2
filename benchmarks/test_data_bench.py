"""Input pipelines: images per second of the DALI and torchvision backends of recogfast.data, train
transform (random resized crop + flip + normalise), one full pass per round.

Datasets: the embedded Shapes196 JPEGs (64×64, train transform at 64) and generated photo-like
500×375 JPEGs (the Cars196 / ImageNet size class, train transform at 224).

Floor: full libjpeg-turbo decoding of every image (torchvision.io.decode_jpeg, measured here on one
core) spread perfectly over the cores the loader was given. A loader cannot beat it on the CPU except
by decoding less than the whole image (DALI's fused decode + random crop does ROI decoding); on the
GPU nvJPEG moves the decode off the cores, so there the ratio can fall well below 1. `extra_info`
records images/s and the CPU cores actually used (process + worker CPU time over wall time).

Goals on the H100 machine (16 cores): DALI ≥ 15,000 img/s for 500×375 → 224, ≥ 2× torchvision.

`test_augment_policy_*`: the same decode + train augmentation with each auto-augment policy (issue 31) at
64 px (Shapes196) and 224 px (the photos), DALI against torchvision with the same worker count. A DALI
policy pipeline is rebuilt each epoch (its seed), which costs 0.7-1.2 s of AutoGraph graph building on the
CPU: it is part of the time, as in training.
"""

import os
import time

import numpy as np
import pytest
import torch

from conftest import run_benchmark
from recogfast.data import ImageList, Shapes196, build_loader, dali_available
from recogfast.data.loaders import decode_rgb

HAS_CUDA = torch.cuda.is_available()
BACKENDS = ["torchvision", pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="DALI not installed"))]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU"))]
# Per device: (number of 500×375 photos, batch size); Shapes196 images per class.
PHOTOS = {"cpu": (96, 32), "cuda": (4096, 256)}
POLICIES = ("none", "randaugment", "trivialaugment", "autoaugment")
AUG_PHOTOS = {"cpu": 192, "cuda": 4096}  # per epoch at 224 px: enough to amortise DALI's per-epoch rebuild
SHAPES_PER_CLASS = {"cpu": 4, "cuda": 40}


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def _photo(h, w, seed):
    """A photo-like image: smooth large-scale structure, edges and sensor-like noise (JPEG size ~ real)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([rng.uniform(60, 190) + 50 * np.sin(x / rng.uniform(40, 160) + rng.uniform(0, 6))
                     * np.cos(y / rng.uniform(40, 160)) for _ in range(3)], -1)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        draw.rectangle([x0, y0, x0 + rng.uniform(20, 150), y0 + rng.uniform(20, 120)],
                       fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos500")
    n = max(PHOTOS["cpu"][0], AUG_PHOTOS["cpu"], PHOTOS["cuda"][0] if HAS_CUDA else 0)
    files = []
    for k in range(n):
        path = str(folder / f"{k:05d}.jpg")
        if k < 16:
            _photo(375, 500, k).save(path, quality=90)
        else:  # copies of the first 16: generating thousands of photos would dominate the run
            os.link(files[k % 16], path)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def _decode_seconds(files, samples=8) -> float:
    """Seconds for one core to fully decode one of these files (the floor's unit of work); best of 5
    passes, as the CI machine is shared."""
    blobs = [open(f, "rb").read() for f in files[:samples]]
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for b in blobs:
            decode_rgb(b)  # libjpeg-turbo decoding is single-threaded
        best = min(best, (time.perf_counter() - t0) / len(blobs))
    return best


def _cpu_seconds() -> float:
    """CPU time of this process (DALI's threads included) and of its live children (DataLoader
    workers persist, so RUSAGE_CHILDREN, which counts exited children only, would miss them)."""
    tick = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == me or int(fields[1]) == me:  # fields[1] is the parent pid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def _bench(benchmark, dataset, backend, device, size, batch_size, group, augment=None, impl=None):
    workers = _cores()
    decode_s = _decode_seconds(dataset.files)  # before the loader's threads and workers exist
    loader = build_loader(dataset, train=True, batch_size=batch_size, image_size=size, backend=backend,
                          device=device, num_workers=workers, augment=augment)
    n = len(loader) * batch_size
    usage = {}

    def epoch():
        for images, _ in loader:
            pass
        if device == "cuda":
            torch.cuda.synchronize()

    epoch()  # first pass: pipeline build, worker start, page cache
    c0, t0 = _cpu_seconds(), time.perf_counter()
    epoch()
    usage["cores_used"] = (_cpu_seconds() - c0) / (time.perf_counter() - t0)
    floor = n * decode_s / workers
    run_benchmark(benchmark, epoch, device=device, group=group, impl=impl or backend, floor_seconds=floor,
                  floor_what=f"full libjpeg-turbo decode of {n} images on {workers} core(s)", rounds=3,
                  events=False)
    mean = benchmark.extra_info.get("mean_ms")
    if mean:
        benchmark.extra_info["images_per_s"] = n / (mean / 1e3)
    benchmark.extra_info.update(usage, cores_given=workers, images=n)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_photos_500x375_train_224(benchmark, photo_files, backend, device):
    n, batch = PHOTOS[device]
    ds = ImageList(photo_files[:n], [k % 10 for k in range(n)], [str(k) for k in range(10)])
    _bench(benchmark, ds, backend, device, 224, batch, f"data train 500x375->224 {device} n={n}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes196_train_64(benchmark, shapes_root, backend, device):
    ds = Shapes196(shapes_root, "train", images_per_class=SHAPES_PER_CLASS[device])
    _bench(benchmark, ds, backend, device, 64, 64 if device == "cpu" else 256,
           f"data train shapes196 64->64 {device} n={len(ds)}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy", POLICIES)
def test_augment_policy_photos_224(benchmark, photo_files, policy, backend, device):
    from recogfast.data.augment import Augment

    n, batch = AUG_PHOTOS[device], PHOTOS[device][1]
    ds = ImageList(photo_files[:n], [k % 10 for k in range(n)], [str(k) for k in range(10)])
    _bench(benchmark, ds, backend, device, 224, batch, f"augment {policy} 500x375->224 {device} n={n}",
           augment=Augment(auto_augment=policy), impl=f"{backend} {policy}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy", POLICIES)
def test_augment_policy_shapes196_64(benchmark, shapes_root, policy, backend, device):
    from recogfast.data.augment import Augment

    ds = Shapes196(shapes_root, "train", images_per_class=SHAPES_PER_CLASS[device])
    _bench(benchmark, ds, backend, device, 64, 64 if device == "cpu" else 256,
           f"augment {policy} shapes196 64->64 {device} n={len(ds)}", augment=Augment(auto_augment=policy),
           impl=f"{backend} {policy}")
