"""The report's "what the model sees": the first training batch of the run's seed, through the run's own
augmentation and backend (random resized crop, flips, policy, jitter, erasing), drawn as a grid. A flip
that is wrong for the data (digits, text, signs) shows at a glance."""

from __future__ import annotations

from pathlib import Path

import torch

from recogfast.report import figures as fg

SHOWN = 16


def augmented_section(saved: dict, folder: Path, n: int = SHOWN) -> dict:
    """{"file": the grid, "augment": the steps in words, "backend": the loader's} for the run whose config
    (summary.json's) is `saved`. The batch is the run's first (seed, epoch 0), read on the CPU; the images
    are un-normalised for display."""
    from recogfast.data.augment import Augment
    from recogfast.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from recogfast.engine import build
    from recogfast.engine.evaluate import _config

    cfg = _config(saved, device="cpu")
    cfg.weights, cfg.amp, cfg.progress = None, "none", False
    cfg = cfg.resolved()
    train_ds, _, _ = build.build_datasets(cfg)
    loader = build.build_train_loader(cfg, train_ds, device="cpu", num_workers=1, channels_last=False,
                                backend=cfg.backend)
    images, labels = next(iter(loader))
    images, labels = images[:n].float(), labels[:n]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = ((images * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    names = train_ds.class_names
    targets = getattr(train_ds, "targets", None)  # multi-label sets: the label is the sample's index
    if targets is not None:
        captions = [",".join(names[c] for c in torch.as_tensor(targets[int(i)]).gt(0).nonzero().flatten().tolist())[:16]
                    for i in labels]
    else:
        captions = [str(names[int(y)])[:16] for y in labels]
    fig = fg.image_grid(list(pixels), captions, cols=8, size=1.2)
    how = f"random resized crop (scale {cfg.crop_scale:g}-1), {Augment.of(cfg).describe()}"
    return {"file": fg.save(fig, folder / "augmented.png"), "augment": how, "backend": loader.backend}
