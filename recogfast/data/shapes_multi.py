"""ShapesMulti: the embedded, generated stand-in for PASCAL VOC 2007 classification (no download).

20 object classes, each a (shape, hue) pair of Shapes196's shapes and hues (``circle_red``,
``triangle_yellow``...). An image holds 1–4 objects of random classes (a class may repeat), each with
a random size, position and rotation, on a desaturated gradient background with a few clutter blobs;
larger objects are drawn first, so small ones stay visible but may overlap. As in VOC, very small
objects are marked ``difficult``: a class whose objects in an image are all difficult is ignored there
(target -1), neither positive nor negative. Everything is a pure function of (seed, image index); the
images are rendered once as JPEG files into the cache folder, like Shapes196.

Sizes: ``20 × images_per_class`` trainval images and ``5 × images_per_class`` test images (default
800 and 200).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import numpy as np

from recogfast.data.multilabel import MultiLabelList
from recogfast.data.shapes import _HUE_VALUES, HUES, SHAPES, _polygon, _rgb, default_cache_dir

__all__ = ["ShapesMulti", "MULTI_CLASSES", "render_multi_image"]

# 20 distinct (shape, hue) pairs: hue = shape, shape + 2, shape + 4 (mod 7)
_PAIRS = [(k % 7, (k % 7 + 2 * (k // 7)) % 7) for k in range(20)]
MULTI_CLASSES = tuple(f"{SHAPES[s]}_{HUES[h]}" for s, h in _PAIRS)
_FORMAT_VERSION = 1
_SUPERSAMPLE = 2
_DIFFICULT_BELOW = 0.11  # object radius (fraction of the image side) under which an object is "difficult"


def render_multi_image(index: int, image_size: int = 64, seed: int = 0):
    """(PIL RGB image, target row [20] in {1, 0, -1}) of image `index`; a pure function of its arguments."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, index, 2007])
    n = image_size * _SUPERSAMPLE
    bg = np.array(_rgb(rng.random(), rng.uniform(0.0, 0.15), rng.uniform(0.45, 0.9)), dtype=np.float32)
    ramp = np.linspace(-1, 1, n, dtype=np.float32)
    gx, gy = rng.uniform(-12, 12, size=2)
    img = Image.fromarray(np.clip(bg + gx * ramp[None, :, None] + gy * ramp[:, None, None], 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):  # clutter: small blobs of any colour
        bx, by = rng.uniform(0, n, size=2)
        br = rng.uniform(0.03, 0.07) * n
        draw.ellipse([bx - br, by - br * rng.uniform(0.5, 1.0), bx + br, by + br],
                     fill=_rgb(rng.random(), rng.uniform(0.1, 0.5), rng.uniform(0.3, 1.0)))
    count = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.25, 0.1]))
    objects = [(int(rng.integers(20)), rng.uniform(0.08, 0.22), rng.random(2), rng.uniform(0, 2 * math.pi))
               for _ in range(count)]
    target = np.zeros(20, dtype=np.int8)
    for k, radius, (u, v), angle in sorted(objects, key=lambda o: -o[1]):
        s, h = _PAIRS[k]
        r = radius * n
        cx, cy = r + u * (n - 2 * r), r + v * (n - 2 * r)
        colour = _rgb(_HUE_VALUES[h] + rng.uniform(-0.02, 0.02), rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0))
        if SHAPES[s] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.polygon(_polygon(SHAPES[s], cx, cy, r, angle), fill=colour)
        if radius >= _DIFFICULT_BELOW:
            target[k] = 1
        elif target[k] == 0:
            target[k] = -1
    return img.resize((image_size, image_size), Image.Resampling.LANCZOS), target


class ShapesMulti(MultiLabelList):
    """The embedded multi-label set, rendered on first use into ``cache_dir`` (default
    ``$RECOGFAST_CACHE`` or ``~/.cache/recogfast``), atomically like Shapes196. ``split``: trainval
    (the first ``20 × images_per_class`` images) or test (the next ``5 × images_per_class``)."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, split: str = "trainval", images_per_class: int = 40,
                 image_size: int = 64, seed: int = 0):
        if split not in ("trainval", "test"):
            raise ValueError(f"split must be 'trainval' or 'test', got {split!r}")
        if images_per_class < 2:
            raise ValueError(f"images_per_class must be at least 2, got {images_per_class}")
        cache_dir = os.path.abspath(os.fspath(cache_dir) if cache_dir is not None else default_cache_dir())
        folder = os.path.join(cache_dir, f"shapes-multi-v{_FORMAT_VERSION}-seed{seed}-n{images_per_class}-px{image_size}")
        n_trainval, n_test = 20 * images_per_class, 5 * images_per_class
        manifest = os.path.join(folder, "manifest.json")
        if not os.path.isfile(manifest):
            self._render(folder, n_trainval + n_test, image_size, seed)
        with open(manifest) as f:
            targets = np.asarray(json.load(f)["targets"], dtype=np.int8)
        idx = range(n_trainval) if split == "trainval" else range(n_trainval, n_trainval + n_test)
        files = [os.path.join(folder, f"{i:05d}.jpg") for i in idx]
        super().__init__(files, targets[list(idx)], MULTI_CLASSES, split=split, root=folder)
        self.default_image_size = image_size

    @staticmethod
    def _render(folder: str, count: int, image_size: int, seed: int) -> None:
        parent = os.path.dirname(folder)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=os.path.basename(folder) + ".tmp-", dir=parent)
        try:
            targets = []
            for i in range(count):
                img, target = render_multi_image(i, image_size, seed)
                img.save(os.path.join(tmp, f"{i:05d}.jpg"), quality=92)
                targets.append(target.tolist())
            with open(os.path.join(tmp, "manifest.json"), "w") as f:
                json.dump({"classes": list(MULTI_CLASSES), "images": count, "image_size": image_size, "seed": seed,
                           "version": _FORMAT_VERSION, "targets": targets}, f)
            try:
                os.rename(tmp, folder)  # atomic: the folder appears complete or not at all
            except OSError:
                if not os.path.isfile(os.path.join(folder, "manifest.json")):
                    raise
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
