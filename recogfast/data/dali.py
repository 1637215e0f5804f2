"""The DALI backend: decode and augment on the GPU ("mixed" nvJPEG decoder), or on the CPU with
``device_id=None`` where there is none, output straight to torch through DALI's PyTorch plugin.

Input is an ``fn.external_source`` fed with the batches of the loader's batch sampler (the same index
lists the torchvision backend uses), read as encoded bytes on a small thread pool. Reading in Python
lets every file be checked before DALI sees it (missing, empty, truncated, not JPEG/PNG): the error
names the file, or ``on_error="skip"`` drops it from its batch (external sources take variable batch
sizes). A decoder failure that still gets through is traced back to its file by decoding the batches
in flight with torchvision; with "skip" the pipeline is rebuilt and the epoch resumes without it.
"""

from __future__ import annotations

import concurrent.futures

import numpy as np
import torch

from recogfast.data.errors import DataError, read_encoded
from recogfast.data.base import Loader, decode_rgb
from recogfast.data.transforms import (
    IMAGENET_MEAN, IMAGENET_STD, TRAIN_RATIO, eval_resize_size,
)

__all__ = ["DaliLoader"]


def _read(path: str):
    """(uint8 array, None), or (None, why) for a file the loader must skip or report."""
    try:
        return np.frombuffer(bytearray(read_encoded(path)), dtype=np.uint8), None  # writable, as DALI expects
    except DataError as err:
        return None, str(err)


class DaliLoader(Loader):
    backend = "dali"

    def __init__(self, *args, shard_id: int = 0):
        super().__init__(*args)
        self.shard_id = shard_id
        self.max_batch = int(getattr(self.batch_sampler, "batch_size"))
        self._files, self._labels = self.dataset.files, self.dataset.labels
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(8, max(2, self.num_workers)))
        # Reads the next batch's files while the current one is decoded (the source runs on the
        # caller's thread, so reading there would stall the training step).
        self._ahead = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._reads: dict[int, concurrent.futures.Future] = {}
        self._pipe = self._iter = None
        self._exhausted = False
        self._excluded: set[int] = set()
        self._epoch = 0

    # --- the external source -------------------------------------------------------------------
    def _next_batch(self):
        while True:
            if self._pos >= len(self._plan) or self._error is not None:
                raise StopIteration
            plan_pos = self._pos
            self._pos += 1
            future = self._reads.pop(plan_pos, None) or self._read_batch(plan_pos)
            if self._pos < len(self._plan) and self._pos not in self._reads:
                self._reads[self._pos] = self._read_batch(self._pos)
            indices, results = future.result()
            data, labels, used = [], [], []
            for i, (encoded, problem) in zip(indices, results):
                if problem is not None:
                    if self.on_error == "raise":
                        # Raised by the loop once the batches before this one are out, with its path.
                        self._error = DataError(problem, self._files[i])
                        raise StopIteration
                    self._skips.add(self._files[i], problem)
                    continue
                data.append(encoded)
                labels.append(np.array([self._labels[i]], dtype=np.int64))
                used.append(i)
            if used:
                self._fed.append((plan_pos, used))
                return data, labels

    def _read_batch(self, plan_pos):
        indices = [i for i in self._plan[plan_pos] if i not in self._excluded]
        paths = [self._files[i] for i in indices]
        return self._ahead.submit(lambda: (indices, list(self._pool.map(_read, paths))))

    # --- the pipeline --------------------------------------------------------------------------
    def _build(self):
        import warnings

        from nvidia.dali import pipeline_def
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        gpu = self.device.type == "cuda"
        # An auto-augment policy picks its ops per sample with DALI conditionals (pipeline_def's AutoGraph).
        policy = self.train and self.augment.auto_augment != "none"
        build = pipeline_def(self._graph, enable_conditionals=policy)
        with warnings.catch_warnings(record=True) as caught:
            # nvidia.dali.auto_aug itself still calls the fn.experimental aliases that DALI deprecates (with its own
            # "default" filter, so only recording them keeps them quiet); any other warning is passed on below
            pipe = build(
                batch_size=self.max_batch,
                num_threads=max(1, self.num_workers),
                device_id=self.device.index if gpu else None,
                # seeded per (seed, epoch, shard): an epoch's crops, flips and the other draws are the same in a
                # resumed run, and do not repeat from epoch to epoch (the pipeline is built afresh each epoch)
                seed=((self.seed * 1_000_003 + self._epoch) * 10_000_019 + self.shard_id) % (2**31 - 1),
                prefetch_queue_depth=3 if gpu else 2,
            )
            pipe.build()
        for w in caught:
            if not (issubclass(w.category, DeprecationWarning) and "nvidia.dali.fn.experimental" in str(w.message)):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self._pipe = pipe
        self._iter = DALIGenericIterator(
            [pipe], ["images", "labels"], last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False,
            prepare_first_batch=False,
        )

    def _graph(self):
        """The pipeline's graph: decode → (train) random crop, flips, policy, jitter / (eval) resize, center crop →
        normalise → (train) erase; the train steps after the crop come from ``self.augment``."""
        from nvidia.dali import fn, types

        gpu = self.device.type == "cuda"
        size = self.image_size
        encoded, labels = fn.external_source(
            source=self._next_batch, num_outputs=2, batch=True, dtype=[types.UINT8, types.INT64], ndim=[1, 1],
        )
        decoder = "mixed" if gpu else "cpu"
        # Preallocated nvJPEG buffers (the values of DALI's ImageNet examples) avoid regrowing them.
        dec_args = {"device_memory_padding": 211025920, "host_memory_padding": 140544512} if gpu else {}
        if self.train:
            # Fused decode + random crop: only the crop window is decoded (ROI decoding).
            images = fn.decoders.image_random_crop(
                encoded, device=decoder, output_type=types.RGB,
                random_area=[self.crop_scale, 1.0], random_aspect_ratio=list(TRAIN_RATIO), num_attempts=10, **dec_args,
            )
            images = fn.resize(images, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR,
                               antialias=True)
            images, mirror = self.augment.dali_pixels(images, size)
            crop = {}
        else:
            images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB, **dec_args)
            images = fn.resize(images, resize_shorter=eval_resize_size(size), interp_type=types.INTERP_LINEAR,
                               antialias=True)
            mirror = 0
            crop = {"crop": (size, size), "crop_pos_x": 0.5, "crop_pos_y": 0.5}
        images = fn.crop_mirror_normalize(
            images,
            dtype=types.FLOAT16 if self.dtype == torch.float16 else types.FLOAT,
            output_layout="HWC" if self.channels_last else "CHW",
            mean=[255 * m for m in IMAGENET_MEAN],
            std=[255 * s for s in IMAGENET_STD],
            mirror=mirror,
            **crop,
        )
        if self.train:
            images = self.augment.dali_erase(images)
        return images, labels

    def _close(self):
        self._iter = self._pipe = None

    def _culprit(self, in_flight):
        """The first file of the batches in flight that torchvision cannot decode, or None."""
        for _, used in in_flight:
            for i in used:
                path = self._files[i]
                try:
                    with open(path, "rb") as f:
                        decode_rgb(f.read(), path)
                except (DataError, OSError) as err:
                    return i, str(err)
        return None

    def _iterate(self, epoch, skips):
        self._plan = [list(b) for b in self.batch_sampler]
        self._pos, self._fed, self._error, self._skips, self._reads = 0, [], None, skips, {}
        self._epoch = epoch
        self._close()
        self._build()  # afresh each epoch: its random state is a function of (seed, epoch)
        self._exhausted = False
        yielded = 0
        while True:
            try:
                out = next(self._iter)
            except StopIteration:
                break
            except RuntimeError as err:
                in_flight = self._fed[yielded:]
                found = self._culprit(in_flight)
                self._close()
                if found is None:
                    paths = [self._files[i] for _, used in in_flight for i in used]
                    raise RuntimeError(
                        f"DALI pipeline failed on a batch of {len(paths)} files starting with {paths[:3]}: {err}"
                    ) from err
                index, reason = found
                if self.on_error == "raise":
                    raise DataError(reason, self._files[index]) from err
                skips.add(self._files[index], reason)
                self._excluded.add(index)
                # Resume with the batches that were in flight, now without the bad file.
                self._pos, self._fed, self._reads = in_flight[0][0], self._fed[:yielded], {}
                self._build()
                continue
            images, labels = out[0]["images"], out[0]["labels"]
            if self.channels_last:
                images = images.permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: channels_last strides
            if self.dtype == torch.bfloat16:
                images = images.to(self.device).to(torch.bfloat16)
            yielded += 1
            yield images.to(self.device, non_blocking=True), labels.view(-1).to(self.device, non_blocking=True)
        self._exhausted = True
        if self._error is not None:
            error, self._error = self._error, None
            self._close()
            raise error
