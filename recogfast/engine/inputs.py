"""The data half of a run: the single-label datasets' three splits (train / val / test), the notes on
them, the file check, and the loaders (sharded over DDP ranks). Functions take a resolved
:class:`~recogfast.engine.build.RunConfig`; what differs between tasks comes from the task
(recogfast.tasks) through its caller, recogfast.engine.build."""

from __future__ import annotations

import os

from recogfast.distributed import rank_and_world as _dist_info


def require_data_folder(cfg) -> None:
    """A dataset that is not embedded needs an existing --data folder (ValueError / FileNotFoundError, one line)."""
    if cfg.data is None:
        raise ValueError(f"--data is required for {cfg.dataset}")
    if not os.path.isdir(cfg.data):
        raise FileNotFoundError(f"data folder not found: {cfg.data}")


def single_label_datasets(cfg, by_class: bool):
    """(train, val, test) single-label datasets; val is None with ``val_fraction`` 0; `by_class`: val holds out
    whole training classes (retrieval), else images of every class.

    Protocol "classification": each dataset's labelled test split (Tiny ImageNet's val folder,
    Cars196's own test flag, Shapes196's last quarter of each class); val = a seeded, class-stratified
    ``val_fraction`` of the training images. Protocol "retrieval" (Cars196 and Shapes196: 98 train /
    98 test classes): val = a seeded ``val_fraction`` of the training classes for the retrieval task,
    held-out images of the training classes for a classifier (``task="classify"``).
    `cfg` must be resolved.
    """
    from recogfast import data

    if cfg.dataset == "folder":  # a user's class folders: train/ [val/] [test/], or one set split here
        require_data_folder(cfg)
        train, val, test = data.folder_splits(cfg.data, cfg.protocol)
        if not cfg.val_fraction or val is not None:  # its own val/ folder is the val split
            return train, (val if cfg.val_fraction else None), test
    elif cfg.dataset == "shapes196":
        kw = dict(cache_dir=cfg.data, protocol=cfg.protocol, images_per_class=cfg.images_per_class, image_size=64, seed=0)
        train, test = data.Shapes196(split="train", **kw), data.Shapes196(split="test", **kw)
    else:
        require_data_folder(cfg)
        if cfg.dataset == "tiny-imagenet":
            if cfg.protocol == "retrieval":
                raise ValueError("retrieval needs disjoint train/test classes: use cars196 or shapes196")
            train, test = data.TinyImageNet(cfg.data, "train"), data.TinyImageNet(cfg.data, "val")
        else:
            train, test = data.Cars196(cfg.data, "train", cfg.protocol), data.Cars196(cfg.data, "test", cfg.protocol)
    if not cfg.val_fraction:
        return train, None, test
    split = data.split_by_class if by_class else data.split_by_image
    train, val = split(train, cfg.val_fraction, cfg.split_seed)
    return train, val, test


def val_split_note(cfg, train_ds, val_ds, by_class: bool) -> str | None:
    """A note when the val split is much larger than ``--val-fraction`` asked (small classes: every class
    of two or more images gives at least one, so 0.1 of 2.5 images a class holds out 40%); None when not."""
    if val_ds is None:
        return None
    held = val_ds.num_classes if by_class else len(val_ds)
    total = held + (train_ds.num_classes if by_class else len(train_ds))
    share = held / max(1, total)
    if share <= max(1.5 * cfg.val_fraction, cfg.val_fraction + 0.05):
        return None
    unit = "classes" if by_class else "images"
    why = ("at least 2 classes go to val" if by_class
           else f"each class of two or more images gives at least one; {total / max(1, train_ds.num_classes):.1f} a class here")
    return (f"note: --val-fraction {cfg.val_fraction} held out {held} of {total} training {unit} ({share:.0%}): {why}; "
            f"pass --val-fraction 0 to train on all of them (the last epoch is then the result)")


def build_eval_loader(cfg, ds):
    """In-order loader over `ds` (every image once across DDP ranks), eval transform."""
    from recogfast.data import build_loader

    rank, world = _dist_info()
    return build_loader(ds, train=False, batch_size=max(cfg.batch_size, 256), shard_id=rank, num_shards=world,
                        image_size=cfg.image_size, backend=cfg.backend, device=cfg.device,
                        num_workers=cfg.num_workers, channels_last=cfg.channels_last, crop_scale=cfg.crop_scale,
                        on_error=cfg.on_error)


def build_train_loader(cfg, train_ds, sampler=None, **override):
    """The training loader (shuffled, or the task's `sampler` built for this rank's shard; the run's
    augmentation); `override`: build_loader arguments (the report reads a batch on the CPU with one worker)."""
    from recogfast.data import build_loader
    from recogfast.data.augment import Augment

    rank, world = _dist_info()
    common = dict(image_size=cfg.image_size, backend=cfg.backend, device=cfg.device, num_workers=cfg.num_workers,
                  channels_last=cfg.channels_last, crop_scale=cfg.crop_scale, on_error=cfg.on_error,
                  augment=Augment.of(cfg))
    common.update(override)
    if sampler is not None:
        return build_loader(train_ds, train=True, batch_size=cfg.batch_size, sampler=sampler, seed=cfg.seed, **common)
    return build_loader(train_ds, train=True, batch_size=cfg.batch_size, seed=cfg.seed, shard_id=rank,
                        num_shards=world, **common)


def build_loaders(cfg, train_ds, val_ds, test_ds, sampler=None):
    """(train, val, test) loaders; val is None when `val_ds` is; `sampler`: the training batches' (the task's)."""
    train = build_train_loader(cfg, train_ds, sampler)
    val = build_eval_loader(cfg, val_ds) if val_ds is not None else None
    return train, val, build_eval_loader(cfg, test_ds)


def check_files(splits, on_error: str = "raise") -> list[str]:
    """Every file of every split checked cheaply before the first step (existence, size, JPEG/PNG
    signature and end marker; no decoding). ``on_error="raise"``: a DataError naming the first bad
    file and how many there are; ``"skip"``: the problems (the loaders skip and count those files)."""
    from recogfast.data.errors import DataError, file_problem

    problems, first = [], None
    for ds in splits:
        if ds is None:
            continue
        for path in ds.files:
            problem = file_problem(path)
            if problem is not None:
                problems.append(problem)
                first = first or path
    if problems and on_error == "raise":
        more = f" ({len(problems)} bad files in all; --on-error skip trains without them)" if len(problems) > 1 else \
            " (--on-error skip trains without it)"
        raise DataError(problems[0] + more, first)
    return problems


def small_classes_note(labels, m: int) -> str | None:
    """One line on the classes with fewer than `m` images (the sampler pads them by drawing with
    replacement), or None when there are none."""
    import numpy as np

    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    counts = counts[counts > 0]
    few = counts[counts < m]
    if not len(few):
        return None
    return (f"note: {len(few)} of {len(counts)} training classes have fewer than --m-per-class {m} images "
            f"(smallest: {int(few.min())}); their groups of {m} are filled by drawing with replacement")
