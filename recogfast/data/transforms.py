"""Augmentation parameters (docs/SPEC.md, "Augmentation") and the torchvision-side transforms.

The eval geometry is written out here rather than taken from ``v2.Resize`` / ``v2.CenterCrop`` so it
matches DALI's ``fn.resize(resize_shorter=...)`` and ``fn.crop(crop_pos=0.5)`` to the pixel: the long
side and the crop offset are rounded half up (torchvision truncates the long side and rounds the
offset half to even, which moves the crop by one pixel on some sizes).
"""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRAIN_SCALE = (0.08, 1.0)
TRAIN_RATIO = (3.0 / 4.0, 4.0 / 3.0)
FLIP_PROB = 0.5  # the default of --hflip (recogfast.data.augment)
EVAL_RESIZE_RATIO = 8.0 / 7.0


def eval_resize_size(size: int) -> int:
    """Shorter side before the eval center crop: ``size * 8/7`` rounded (64 → 73, 224 → 256)."""
    return int(size * EVAL_RESIZE_RATIO + 0.5)


def resized_shape(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(H, W) after scaling the shorter side to ``shorter``, long side rounded half up (as DALI)."""
    if height <= width:
        return shorter, max(1, int(width * shorter / height + 0.5))
    return max(1, int(height * shorter / width + 0.5)), shorter


def center_crop_offset(length: int, size: int) -> int:
    """Top/left offset of a centered window of ``size`` in ``length`` (half rounded up, as DALI)."""
    return (length - size + 1) // 2


def eval_transform(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, H, W] → resize shorter side to size·8/7 (bilinear, antialiased) → center crop."""
    import torchvision.transforms.v2.functional as F

    h, w = image.shape[-2:]
    image = F.resize(image, list(resized_shape(h, w, eval_resize_size(size))), antialias=True)
    h, w = image.shape[-2:]
    top, left = center_crop_offset(h, size), center_crop_offset(w, size)
    return image[..., top : top + size, left : left + size]


def check_crop_scale(crop_scale: float) -> float:
    """The smallest area fraction of the train crop, in (0, 1]."""
    crop_scale = float(crop_scale)
    if not 0.0 < crop_scale <= 1.0:
        raise ValueError(f"crop_scale must lie in (0, 1], got {crop_scale}")
    return crop_scale


def normalize_batch(images: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """uint8 [B, 3, H, W] (any device) → (x/255 - mean)/std in ``dtype``, channels_last if asked."""
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)  # a no-op for loader batches
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).mul_(255).view(1, 3, 1, 1)
    inv_std = torch.tensor(IMAGENET_STD, device=images.device).mul_(255).reciprocal_().view(1, 3, 1, 1)
    return images.float().sub_(mean).mul_(inv_std).to(dtype)


def input_description(size: int) -> dict:
    """What a model expects at `size`, for a deployment that has no recogfast: plain values (the task adds
    what the model returns: recogfast.tasks.preprocessing)."""
    return {
        "input": "RGB, float32 [N, 3, size, size], (pixel / 255 - mean) / std",
        "size": size,
        "resize_shorter": eval_resize_size(size),
        "resize": "bilinear, antialiased; the longer side rounded half up",
        "crop": "centre, offset (length - size + 1) // 2",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
