"""Shapes196: the embedded, generated stand-in for Cars196 (no download). See docs/SPEC.md.

196 classes = 7 shapes × 7 hues × 4 fills. Each image has a random position, size, rotation,
background colour, a few clutter blobs and a small hue jitter, and is fully determined by
(seed, class, image index). The images are rendered once as JPEG files into a cache folder, so the
same file readers and pipelines run as for the real datasets.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
import tempfile

import numpy as np

from recogfast.data.datasets import ImageList

__all__ = ["Shapes196", "SHAPES", "HUES", "FILLS", "render_shape_image"]

SHAPES = ("circle", "triangle", "square", "diamond", "pentagon", "hexagon", "star")
HUES = ("red", "orange", "yellow", "green", "cyan", "blue", "magenta")
FILLS = ("solid", "stripes", "dots", "ring")
_HUE_VALUES = (0.0, 0.08, 0.16, 0.33, 0.5, 0.64, 0.83)  # distinct colour names, not an even circle
_FORMAT_VERSION = 3  # bump when the drawing changes, so old caches are not reused
_SUPERSAMPLE = 2


def _class_names() -> list[str]:
    return [f"{s}_{h}_{f}" for s in SHAPES for h in HUES for f in FILLS]


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = angle + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    sides = {"triangle": 3, "square": 4, "diamond": 4, "pentagon": 5, "hexagon": 6}[shape]
    scale_x = 0.7 if shape == "diamond" else 1.0  # a diamond is a squeezed, rotated square
    base = math.pi / 4 if shape == "square" else -math.pi / 2
    pts = []
    for k in range(sides):
        a = base + 2 * math.pi * k / sides
        x, y = r * math.cos(a) * scale_x, r * math.sin(a)
        pts.append((cx + x * math.cos(angle) - y * math.sin(angle), cy + x * math.sin(angle) + y * math.cos(angle)))
    return pts


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def render_shape_image(class_index: int, image_index: int, image_size: int = 64, seed: int = 0):
    """One Shapes196 image as a PIL RGB image; a pure function of its arguments."""
    from PIL import Image, ImageDraw

    if not 0 <= class_index < 196:
        raise ValueError(f"class_index must lie in [0, 196), got {class_index}")
    shape = SHAPES[class_index // 28]
    hue = _HUE_VALUES[(class_index // 4) % 7]
    fill = FILLS[class_index % 4]
    rng = np.random.default_rng([seed, class_index, image_index, 196])
    n = image_size * _SUPERSAMPLE

    # Background: a desaturated colour of any hue, plus a soft gradient so it is not flat.
    bg = np.array(_rgb(rng.random(), rng.uniform(0.0, 0.15), rng.uniform(0.45, 0.9)), dtype=np.float32)
    ramp = np.linspace(-1, 1, n, dtype=np.float32)
    gx, gy = rng.uniform(-12, 12, size=2)
    canvas = bg + (gx * ramp[None, :, None] + gy * ramp[:, None, None])
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)

    # Clutter blobs: small ellipses of random colour, drawn under the shape.
    for _ in range(int(rng.integers(1, 4))):
        bx, by = rng.uniform(0, n, size=2)
        br = rng.uniform(0.04, 0.1) * n
        colour = _rgb(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.3, 1.0))
        draw.ellipse([bx - br, by - br * rng.uniform(0.5, 1.0), bx + br, by + br], fill=colour)

    # The shape: random size, position and rotation; hue jitter ±0.02.
    r = rng.uniform(0.28, 0.42) * n
    cx, cy = rng.uniform(r, n - r, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    colour = _rgb(hue + rng.uniform(-0.02, 0.02), rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0))
    mask = Image.new("L", (n, n), 0)
    mdraw = ImageDraw.Draw(mask)

    def outline(target, radius: float, value: int):
        if shape == "circle":
            target.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=value)
        else:
            target.polygon(_polygon(shape, cx, cy, radius, angle), fill=value)

    outline(mdraw, r, 255)
    if fill == "ring":
        outline(mdraw, r * 0.55, 0)
    pattern = Image.new("RGB", (n, n), colour)
    if fill in ("stripes", "dots"):
        # The pattern shows the background through the shape, so the fill reads at 32×32 too.
        hole = Image.new("L", (n, n), 0)
        hdraw = ImageDraw.Draw(hole)
        period = n / rng.uniform(5.0, 7.0)
        if fill == "stripes":
            ca, sa = math.cos(angle), math.sin(angle)
            for k in range(-12, 13):
                off = k * period
                px, py = cx + off * ca, cy + off * sa
                w = period * 0.25
                quad = [(px - w * ca - n * sa, py - w * sa + n * ca), (px + w * ca - n * sa, py + w * sa + n * ca),
                        (px + w * ca + n * sa, py + w * sa - n * ca), (px - w * ca + n * sa, py - w * sa - n * ca)]
                hdraw.polygon(quad, fill=255)
            pattern_mask = Image.eval(hole, lambda v: 255 - v)
        else:
            dot = period * 0.3
            for i in range(-1, int(n / period) + 2):
                for j in range(-1, int(n / period) + 2):
                    x, y = i * period + (j % 2) * period / 2, j * period
                    hdraw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=255)
            pattern_mask = hole
        from PIL import ImageChops

        # A border in the shape's colour keeps the silhouette readable through the pattern (a dot grid
        # alone hides whether it is a pentagon or a hexagon at 32×32).
        inner = Image.new("L", (n, n), 0)
        outline(ImageDraw.Draw(inner), r * 0.82, 255)
        mask = ImageChops.subtract(mask, ImageChops.subtract(inner, pattern_mask))
    img.paste(pattern, (0, 0), mask)
    return img.resize((image_size, image_size), Image.Resampling.LANCZOS)


def default_cache_dir() -> str:
    base = os.environ.get("RECOGFAST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "recogfast"
    )
    return base


class Shapes196(ImageList):
    """The embedded Shapes196 dataset, rendered on first use into ``cache_dir``.

    ``cache_dir`` defaults to ``$RECOGFAST_CACHE`` or ``~/.cache/recogfast``; the images go to a
    subfolder named after (seed, images_per_class, image_size). Rendering writes to a temporary folder
    and renames it into place in one step, so an interrupted first run never leaves a half-written
    cache and concurrent first runs (DDP ranks) do not clash; later runs reuse it.

    ``protocol="retrieval"``: a permutation of the classes drawn from ``seed`` gives 98 train and 98
    test classes; ``"classification"``: per class the first 3/4 of the images (30 of 40) train, the
    rest test.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike | None = None,
        split: str = "train",
        protocol: str = "retrieval",
        images_per_class: int = 40,
        image_size: int = 64,
        seed: int = 0,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if protocol not in ("retrieval", "classification"):
            raise ValueError(f"protocol must be 'retrieval' or 'classification', got {protocol!r}")
        if images_per_class < 2:
            raise ValueError(f"images_per_class must be at least 2, got {images_per_class}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {image_size}")
        cache_dir = os.path.abspath(os.fspath(cache_dir) if cache_dir is not None else default_cache_dir())
        folder = os.path.join(
            cache_dir, f"shapes196-v{_FORMAT_VERSION}-seed{seed}-n{images_per_class}-px{image_size}"
        )
        if not os.path.isfile(os.path.join(folder, "manifest.json")):
            self._render(folder, images_per_class, image_size, seed)
        names = _class_names()
        if protocol == "retrieval":
            perm = np.random.default_rng([seed, 98]).permutation(196)
            chosen = sorted(int(c) for c in (perm[:98] if split == "train" else perm[98:]))
            per_class = [(c, range(images_per_class)) for c in chosen]
        else:
            n_train = int(round(images_per_class * 0.75))
            chosen = list(range(196))
            rng = range(n_train) if split == "train" else range(n_train, images_per_class)
            per_class = [(c, rng) for c in chosen]
        files, labels = [], []
        for label, (c, images) in enumerate(per_class):
            files += [os.path.join(folder, names[c], f"{i:04d}.jpg") for i in images]
            labels += [label] * len(images)
        classes = [names[c] for c in chosen]
        super().__init__(files, labels, classes, classes, split=split, root=folder)
        self.protocol = protocol
        self.class_ids = chosen  # index into the 196 classes, for each label
        self.default_image_size = image_size

    @staticmethod
    def _render(folder: str, images_per_class: int, image_size: int, seed: int) -> None:
        parent = os.path.dirname(folder)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=os.path.basename(folder) + ".tmp-", dir=parent)
        try:
            for c, name in enumerate(_class_names()):
                os.mkdir(os.path.join(tmp, name))
                for i in range(images_per_class):
                    render_shape_image(c, i, image_size, seed).save(
                        os.path.join(tmp, name, f"{i:04d}.jpg"), quality=92
                    )
            with open(os.path.join(tmp, "manifest.json"), "w") as f:
                json.dump({"classes": 196, "images_per_class": images_per_class, "image_size": image_size,
                           "seed": seed, "version": _FORMAT_VERSION}, f)
            try:
                os.rename(tmp, folder)  # atomic: the folder appears complete or not at all
            except OSError:
                if not os.path.isfile(os.path.join(folder, "manifest.json")):
                    raise  # not a lost race with another process: a real error
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
