"""The train-time augmentation choices (docs/SPEC.md, "Augmentation"), the same order and meaning in both
backends, each step a library op:

    random resized crop → horizontal / vertical flip → auto-augment policy → colour jitter → normalise → erase

torchvision: ``transforms.v2`` (``RandomHorizontalFlip``, ``RandomVerticalFlip``, ``RandAugment``,
``TrivialAugmentWide``, ``AutoAugment``, ``ColorJitter``, ``RandomErasing``) on the uint8 image in the
loader's workers. DALI: ``fn.flip`` / ``crop_mirror_normalize``'s mirror with ``fn.random.coin_flip``,
``nvidia.dali.auto_aug`` (``rand_augment``, ``trivial_augment_wide``, ``auto_augment``), ``fn.color_twist``
and ``fn.erase``. Where the libraries differ (the jitter's op order and contrast pivot, an oversized erase
rectangle) SPEC.md says how, and tests/test_augment.py checks the allowed difference statistically.

The defaults (horizontal flip p=0.5, nothing else) build exactly today's pipelines, op for op, so a run with
default options draws bit-identical images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from recogfast.data.transforms import IMAGENET_MEAN, TRAIN_RATIO, TRAIN_SCALE, check_crop_scale

POLICIES = ("none", "randaugment", "trivialaugment", "autoaugment")
RANDAUGMENT_DEFAULTS = {"aa_num_ops": 2, "aa_magnitude": 9}  # torchvision's (DALI's rand_augment takes both)
MAGNITUDE_BINS = 31  # both libraries' default: --aa-magnitude lies in [0, 30]
POLICY_FILL = 128  # the pixel value shears, rotations and translations pad with (DALI's default; set in torchvision)
# Largest translation of a policy, as torchvision's: RandAugment / AutoAugment 150/331 of the side, TrivialAugment 32 px
TRANSLATE_REL = 150.0 / 331.0
TRIVIAL_TRANSLATE_PX = 32
ERASE_SCALE = (0.02, 0.33)  # torchvision's RandomErasing defaults (timm's: 0.02, 1/3)
ERASE_RATIO = (0.3, 3.3)
# The erased rectangle holds the ImageNet mean colour: 0 once normalised (torchvision erases the uint8 image in
# its worker, before the batch is normalised, with the mean rounded to a pixel value: within 0.01 of 0 after).
ERASE_FILL_UINT8 = tuple(round(255 * m) for m in IMAGENET_MEAN)


def _probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _integer(name: str, value, low: int, high: int | None = None):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        words = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {words}, got {value!r}")
    return value


@dataclass(frozen=True)
class Augment:
    """The train augmentation after the random resized crop (RunConfig's flags of the same names)."""

    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float = 0.0  # brightness, contrast and saturation strength S: factors in [max(0, 1-S), 1+S]
    auto_augment: str = "none"
    aa_magnitude: int | None = None  # RandAugment only (None: 9)
    aa_num_ops: int | None = None  # RandAugment only (None: 2)
    reprob: float = 0.0  # random erasing probability

    def __post_init__(self):
        _probability("hflip", self.hflip)
        _probability("vflip", self.vflip)
        _probability("reprob", self.reprob)
        jitter = self.color_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0.0 <= jitter < math.inf:
            raise ValueError(f"color_jitter must be a number >= 0 (0 = off), got {jitter!r}")
        if self.auto_augment not in POLICIES:
            raise ValueError(f"auto_augment must be one of {', '.join(POLICIES)}, got {self.auto_augment!r}")
        _integer("aa_magnitude", self.aa_magnitude, 0, MAGNITUDE_BINS - 1)
        _integer("aa_num_ops", self.aa_num_ops, 1)
        for name in ("aa_magnitude", "aa_num_ops"):
            if getattr(self, name) is not None and self.auto_augment != "randaugment":
                raise ValueError(f"{name} is RandAugment's (auto_augment='randaugment'), not {self.auto_augment!r}'s")

    @classmethod
    def of(cls, cfg) -> Augment:
        """The augmentation of a RunConfig (or anything with its fields)."""
        return cls(**{name: getattr(cfg, name) for name in cls.__dataclass_fields__})

    @property
    def num_ops(self) -> int:
        return RANDAUGMENT_DEFAULTS["aa_num_ops"] if self.aa_num_ops is None else self.aa_num_ops

    @property
    def magnitude(self) -> int:
        return RANDAUGMENT_DEFAULTS["aa_magnitude"] if self.aa_magnitude is None else self.aa_magnitude

    @property
    def changes_pixels(self) -> bool:
        """A policy or jitter runs between the flips and the normalisation."""
        return self.auto_augment != "none" or self.color_jitter > 0

    def describe(self) -> str:
        """One line for the run's start: every step in force, in order."""
        steps = []
        if self.hflip:
            steps.append(f"hflip {self.hflip:g}")
        if self.vflip:
            steps.append(f"vflip {self.vflip:g}")
        if self.auto_augment == "randaugment":
            steps.append(f"randaugment (ops {self.num_ops}, magnitude {self.magnitude}/{MAGNITUDE_BINS - 1})")
        elif self.auto_augment != "none":
            steps.append(self.auto_augment)
        if self.color_jitter:
            steps.append(f"color jitter {self.color_jitter:g}")
        if self.reprob:
            steps.append(f"random erasing {self.reprob:g}")
        return ", ".join(steps) if steps else "no flip, policy, jitter or erasing"

    # --- torchvision ---------------------------------------------------------------------------------
    def torchvision_ops(self) -> list:
        """The ``transforms.v2`` ops after the crop, on a uint8 [3, H, W] image. A step that is off is left
        out (a flip of p=0 would still draw a number and shift every later draw)."""
        from torchvision.transforms import v2

        ops = []
        if self.hflip:
            ops.append(v2.RandomHorizontalFlip(self.hflip))
        if self.vflip:
            ops.append(v2.RandomVerticalFlip(self.vflip))
        if self.auto_augment == "randaugment":
            ops.append(v2.RandAugment(num_ops=self.num_ops, magnitude=self.magnitude,
                                      num_magnitude_bins=MAGNITUDE_BINS, fill=POLICY_FILL))
        elif self.auto_augment == "trivialaugment":
            ops.append(v2.TrivialAugmentWide(num_magnitude_bins=MAGNITUDE_BINS, fill=POLICY_FILL))
        elif self.auto_augment == "autoaugment":
            ops.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, fill=POLICY_FILL))
        if self.color_jitter:
            s = float(self.color_jitter)
            ops.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s))
        if self.reprob:
            ops.append(v2.RandomErasing(self.reprob, scale=ERASE_SCALE, ratio=ERASE_RATIO, value=list(ERASE_FILL_UINT8)))
        return ops

    # --- DALI ----------------------------------------------------------------------------------------
    def dali_pixels(self, images, size: int):
        """uint8 HWC images (size × size) → (images flipped / augmented, ``mirror`` for crop_mirror_normalize).

        Without a policy or jitter the horizontal flip stays crop_mirror_normalize's mirror, drawn by the same
        coin as before this option existed (the default pipeline is unchanged); the vertical flip is ``fn.flip``
        (a flip commutes with the per-pixel normalisation). Otherwise both flips are one ``fn.flip`` first."""
        from nvidia.dali import fn, types

        hcoin = fn.random.coin_flip(probability=self.hflip) if self.hflip else 0
        vcoin = fn.random.coin_flip(probability=self.vflip) if self.vflip else 0
        if not self.changes_pixels:
            if self.vflip:
                images = fn.flip(images, horizontal=0, vertical=vcoin)
            return images, hcoin
        if self.hflip or self.vflip:
            images = fn.flip(images, horizontal=hcoin, vertical=vcoin)
        if self.auto_augment == "randaugment":
            from nvidia.dali.auto_aug import rand_augment

            images = rand_augment.rand_augment(
                images, n=self.num_ops, m=self.magnitude, num_magnitude_bins=MAGNITUDE_BINS, shape=(size, size),
                max_translate_rel=TRANSLATE_REL, fill_value=POLICY_FILL, interp_type=types.INTERP_NN)
        elif self.auto_augment == "trivialaugment":
            from nvidia.dali.auto_aug import trivial_augment

            images = trivial_augment.trivial_augment_wide(
                images, num_magnitude_bins=MAGNITUDE_BINS, max_translate_abs=TRIVIAL_TRANSLATE_PX,
                fill_value=POLICY_FILL, interp_type=types.INTERP_NN)
        elif self.auto_augment == "autoaugment":
            from nvidia.dali.auto_aug import auto_augment

            images = auto_augment.auto_augment(images, policy_name="image_net", shape=(size, size),
                                               max_translate_rel=TRANSLATE_REL, fill_value=POLICY_FILL,
                                               interp_type=types.INTERP_NN)
        if self.color_jitter:
            s = float(self.color_jitter)

            def factor():
                return fn.random.uniform(range=[max(0.0, 1.0 - s), 1.0 + s])

            images = fn.color_twist(images, brightness=factor(), contrast=factor(), saturation=factor())
        return images, 0

    def dali_erase(self, images):
        """Random erasing of the normalised images (CHW or HWC): with probability ``reprob`` a rectangle of
        area fraction U(ERASE_SCALE) and log-uniform aspect ratio in ERASE_RATIO is set to 0 (the mean colour).
        A rectangle taller or wider than the image is clipped to it (torchvision draws again instead)."""
        if not self.reprob:
            return images
        from nvidia.dali import fn, math as dmath, types

        area = fn.random.uniform(range=list(ERASE_SCALE))
        ratio = dmath.exp(fn.random.uniform(range=[math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])]))
        on = fn.cast(fn.random.coin_flip(probability=self.reprob), dtype=types.FLOAT)
        height = dmath.min(dmath.sqrt(area * ratio), 1.0)
        width = dmath.min(dmath.sqrt(area / ratio), 1.0)
        shape = fn.stack(height, width) * on  # an empty rectangle erases nothing
        anchor = fn.random.uniform(range=[0.0, 1.0], shape=2) * (1.0 - fn.stack(height, width))
        return fn.erase(images, anchor=anchor, shape=shape, normalized_anchor=True, normalized_shape=True,
                        axis_names="HW", fill_value=0.0)


def train_transform(size: int, crop_scale: float = TRAIN_SCALE[0], augment=None):
    """uint8 [3, H, W] → RandomResizedCrop(size, (crop_scale, 1), ratio) → the steps of ``augment``
    (recogfast.data.augment.Augment; default: horizontal flip p=0.5) on the uint8 image."""
    from torchvision.transforms import v2

    augment = Augment() if augment is None else augment
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(check_crop_scale(crop_scale), 1.0), ratio=TRAIN_RATIO, antialias=True),
        *augment.torchvision_ops(),
    ])
