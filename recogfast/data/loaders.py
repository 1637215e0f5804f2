"""``build_loader``: one entry point for the DALI and torchvision input pipelines.

Both backends read ``dataset.files`` / ``dataset.labels`` in the order of the same batch sampler,
apply the same augmentation parameters (recogfast.data.transforms) and yield ``(images, labels)``
torch tensors on the target device: images [B, 3, S, S] normalised with the ImageNet mean/std in
``dtype`` (channels_last strides by default), labels int64 [B].
"""

from __future__ import annotations

import functools
import gc
import logging
import os

import torch

from recogfast.data.base import Loader, decode_rgb
from recogfast.data.errors import DataError, check_on_error, read_encoded
from recogfast.data.samplers import ShuffleBatchSampler
from recogfast.data.augment import train_transform
from recogfast.data.transforms import (
    TRAIN_SCALE, eval_transform, normalize_batch,
)

__all__ = ["build_loader", "dali_available", "TorchvisionLoader"]

log = logging.getLogger("recogfast.data")
BACKENDS = ("auto", "dali", "torchvision")


def dali_available() -> bool:
    """True when NVIDIA DALI and its PyTorch plugin import."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception:  # ImportError, or a DALI build that fails to load its native libraries
        return False
    return True


def _default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 16))


class _DecodeDataset(torch.utils.data.Dataset):
    """Reads, checks, decodes (3-channel RGB) and transforms one file; returns uint8 [3, S, S].

    Keys are ``(index, epoch)``: the random augmentation of a sample is seeded from (seed, epoch,
    index), so it is reproducible per seed and epoch whatever the worker count, and persistent
    workers need no reseeding between epochs.
    """

    def __init__(self, files, labels, transform, on_error, seed, random):
        self.files, self.labels, self.transform, self.on_error = files, labels, transform, on_error
        self.seed, self.random = seed, random

    def __len__(self):
        return len(self.files)

    def __getitem__(self, key):
        index, epoch = key
        path = self.files[index]
        try:
            image = decode_rgb(read_encoded(path), path)
        except DataError as err:  # raised (with its path) or counted by the loader in the main process
            return None, path, str(err)
        if not self.random:
            return self.transform(image), self.labels[index]
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed would also queue a CUDA reseed with a stack
            # trace each time (2 ms a sample).
            torch.default_generator.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            return self.transform(image), self.labels[index]


class _EpochTagged:
    """A batch sampler whose indices are tagged with the epoch being read. (It holds no reference to
    the loader: a cycle through the DataLoader would delay shutting its persistent workers down.)"""

    def __init__(self, batch_sampler):
        self.batch_sampler, self.epoch = batch_sampler, 0

    def __iter__(self):
        epoch = self.epoch
        for batch in self.batch_sampler:
            yield [(i, epoch) for i in batch]

    def __len__(self):
        return len(self.batch_sampler)


def _collate(items, channels_last=True):
    """Stack the decoded samples (uint8) and list the skipped ones. With ``channels_last`` the batch
    is built as NHWC in the worker and viewed as NCHW, so the main process copies nothing."""
    good = [it for it in items if it[0] is not None]
    skipped = [(it[1], it[2]) for it in items if it[0] is None]
    if not good:
        return None, None, skipped
    if channels_last:
        images = torch.stack([it[0].permute(1, 2, 0) for it in good]).permute(0, 3, 1, 2)
    else:
        images = torch.stack([it[0] for it in good])
    return images, torch.tensor([it[1] for it in good], dtype=torch.int64), skipped


class TorchvisionLoader(Loader):
    """DataLoader workers decode with ``torchvision.io`` and crop/flip with ``transforms.v2``; the
    uint8 batch moves to the device (pinned, non-blocking) and is normalised there. Workers persist
    across epochs (starting 16 of them costs about a second, as long as a Shapes196 epoch)."""

    backend = "torchvision"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        transform = (train_transform(self.image_size, self.crop_scale, self.augment) if self.train
                     else (lambda img, size=self.image_size: eval_transform(img, size)))
        data = _DecodeDataset(self.dataset.files, self.dataset.labels, transform, self.on_error, self.seed,
                              random=self.train)
        self._tagged = _EpochTagged(self.batch_sampler)
        self._loader = torch.utils.data.DataLoader(
            data,
            batch_sampler=self._tagged,
            num_workers=self.num_workers,
            collate_fn=functools.partial(_collate, channels_last=self.channels_last),
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.num_workers > 0,
            prefetch_factor=4 if self.num_workers > 0 else None,
            # the workers' base seed comes from this generator, not the global torch RNG: creating the
            # iterator (once with persistent workers, each epoch without) must not shift the dropout
            # masks of a resumed run (the augmentation is seeded per (seed, epoch, index) anyway)
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _iterate(self, epoch, skips):
        self._tagged.epoch = epoch
        for images, labels, skipped in _start_workers(self._loader):
            for path, reason in skipped:
                if self.on_error == "raise":
                    raise DataError(reason, path)
                skips.add(path, reason)
            if images is None:
                continue
            images = images.to(self.device, non_blocking=True)
            yield normalize_batch(images, self.dtype, self.channels_last), labels.to(self.device, non_blocking=True)


def _start_workers(loader):
    """``iter(loader)``, with the objects the garbage collector tracks frozen while the workers fork: a forked
    worker must never finalise an object it inherited. (A DALI pipeline left in a reference cycle by the parent,
    collected in the child, waits in its destructor for executor threads that exist only in the parent: the
    worker hangs, and with it the epoch.)"""
    if loader.num_workers == 0:
        return iter(loader)
    gc.freeze()
    try:
        return iter(loader)
    finally:
        gc.unfreeze()


def build_loader(
    dataset,
    train: bool,
    batch_size: int,
    image_size: int | None = None,
    backend: str = "auto",
    device: str | torch.device | None = None,
    sampler=None,
    num_workers: int | None = None,
    seed: int = 0,
    shard_id: int = 0,
    num_shards: int = 1,
    channels_last: bool = True,
    dtype: torch.dtype | None = None,
    on_error: str = "raise",
    drop_last: bool | None = None,
    crop_scale: float = TRAIN_SCALE[0],
    augment=None,
):
    """An iterable of ``(images, labels)`` over ``dataset`` (anything with ``files`` and ``labels``).

    ``train`` picks the augmentation (random resized crop + flip, else resize to size·8/7 + center
    crop) and the default order (shuffled per seed and epoch, full batches only; else in order, all
    samples). ``image_size`` defaults to ``dataset.default_image_size``. ``backend="auto"`` uses DALI
    when it imports and logs the choice; ``loader.backend`` tells it too. ``device`` defaults to the
    current CUDA device, else the CPU. ``sampler`` is a batch sampler such as
    :class:`~recogfast.data.MPerClassSampler` (it then owns the sharding). ``shard_id``/``num_shards``
    split the data across DDP ranks without overlap. ``dtype`` defaults to float32 (bf16/fp16 allowed).
    ``on_error="skip"`` skips unreadable samples and warns with the count at the end of the epoch;
    ``"raise"`` stops at the first one with a :class:`~recogfast.data.DataError` naming the file.
    ``crop_scale`` is the smallest area fraction of the train crop (SPEC's 0.08, as torchvision's and
    timm's ``scale=(0.08, 1)``; larger keeps more of small objects, e.g. 0.35 for Shapes196 at 32×32).
    ``augment`` (:class:`~recogfast.data.augment.Augment`) sets the train steps after the crop: flips,
    an auto-augment policy, colour jitter, random erasing; default: horizontal flip p=0.5 only.
    The loader's ``set_epoch(e)`` sets the next epoch; otherwise each pass advances it by one.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_on_error(on_error)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(dataset.files) == 0:
        raise ValueError(f"dataset {dataset!r} holds no images")
    image_size = int(image_size or getattr(dataset, "default_image_size", 224))
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a CPU or CUDA device, got {device}")
    dtype = dtype or torch.float32
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    num_workers = _default_workers() if num_workers is None else int(num_workers)
    if sampler is None:
        drop_last = train if drop_last is None else drop_last
        sampler = ShuffleBatchSampler(len(dataset.files), batch_size, shuffle=train, drop_last=drop_last, seed=seed,
                                      shard_id=shard_id, num_shards=num_shards)
    else:
        if getattr(sampler, "batch_size", batch_size) != batch_size:
            raise ValueError(f"sampler.batch_size={sampler.batch_size} differs from batch_size={batch_size}")
        if num_shards != 1 and getattr(sampler, "num_shards", num_shards) != num_shards:
            raise ValueError("with a sampler, shard it in the sampler (shard_id/num_shards of the sampler)")
    if backend == "auto":
        backend = "dali" if dali_available() else "torchvision"
        log.info("recogfast.data.build_loader: backend='auto' chose %r (%s)", backend,
                 "DALI imports" if backend == "dali" else "DALI is not installed")
    args = (dataset, sampler, image_size, train, device, dtype, channels_last, on_error, num_workers, seed, crop_scale,
            augment)
    if backend == "dali":
        if not dali_available():
            raise ImportError("backend='dali' needs NVIDIA DALI: pip install nvidia-dali-cuda130 (or recogfast[dali])")
        from recogfast.data.dali import DaliLoader

        return DaliLoader(*args, shard_id=shard_id)
    return TorchvisionLoader(*args)
