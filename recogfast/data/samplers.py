"""Batch samplers shared by both loader backends.

A batch sampler yields lists of dataset indices, one list per batch, and takes ``set_epoch``. The
torchvision backend hands it to ``DataLoader(batch_sampler=...)``; the DALI backend feeds the same
index lists through an external source, so both backends read the same images in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["MPerClassSampler", "ShuffleBatchSampler"]


def _check_shard(shard_id: int, num_shards: int) -> None:
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ValueError(f"need 0 <= shard_id < num_shards, got shard_id={shard_id}, num_shards={num_shards}")


class ShuffleBatchSampler:
    """Plain batches over ``range(size)``: shuffled per (seed, epoch) when ``shuffle``, sharded like
    ``DistributedSampler`` (index ``k`` of the epoch's order goes to shard ``k % num_shards``).

    With ``drop_last`` (training) every shard gets the same number of full batches; without it
    (evaluation) every index is visited exactly once across the shards and the last batch may be short.
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int = 0,
                 shard_id: int = 0, num_shards: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        _check_shard(shard_id, num_shards)
        self.size, self.batch_size, self.shuffle, self.drop_last = size, batch_size, shuffle, drop_last
        self.seed, self.shard_id, self.num_shards = seed, shard_id, num_shards
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _indices(self) -> np.ndarray:
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.size) if self.shuffle
                 else np.arange(self.size))
        if self.drop_last:
            order = order[: self.size - self.size % self.num_shards]
        return order[self.shard_id :: self.num_shards]

    def __iter__(self) -> Iterator[list[int]]:
        idx = self._indices().tolist()
        stop = len(idx) - len(idx) % self.batch_size if self.drop_last else len(idx)
        for start in range(0, stop, self.batch_size):
            yield idx[start : start + self.batch_size]

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class MPerClassSampler:
    """Batches of ``batch_size // m`` distinct classes with ``m`` images each (metric learning).

    Each epoch, every class's indices are shuffled and cut into groups of ``m``; batches take one
    group from each of ``batch_size // m`` distinct classes, chosen at random in proportion to the
    groups a class has left. So an index appears at most once per epoch (a class with fewer than
    ``m`` images fills its one group by drawing with replacement), and a class's images spread over
    the epoch. The plan depends only on (labels, m, batch_size, seed, epoch); shard ``s`` of
    ``num_shards`` takes batches ``s, s + num_shards, ...`` of the same plan, trimmed to an equal
    count, so DDP ranks never share an index within an epoch.

    ``batch_size`` is the per-shard batch. Call ``set_epoch(e)`` (the loaders do) for a new plan.
    """

    def __init__(self, labels: Sequence[int], m: int, batch_size: int, seed: int = 0, shard_id: int = 0,
                 num_shards: int = 1):
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1:
            raise ValueError(f"labels must be a 1-d sequence, got shape {labels.shape}")
        if m < 1:
            raise ValueError(f"m must be positive, got {m}")
        if batch_size < m or batch_size % m:
            raise ValueError(f"batch_size must be a positive multiple of m={m}, got {batch_size}")
        _check_shard(shard_id, num_shards)
        self.classes, inverse = np.unique(labels, return_inverse=True)
        self.per_batch = batch_size // m
        if len(self.classes) < self.per_batch:
            raise ValueError(
                f"batch_size/m = {self.per_batch} classes per batch, but the labels hold only {len(self.classes)} classes"
            )
        self.labels, self.m, self.batch_size, self.seed = labels, m, batch_size, seed
        self.shard_id, self.num_shards = shard_id, num_shards
        self._members = [np.flatnonzero(inverse == c) for c in range(len(self.classes))]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _plan(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 0x6D7063])
        groups: list[list[np.ndarray]] = []
        for members in self._members:
            if len(members) >= self.m:
                shuffled = rng.permutation(members)
                groups.append([shuffled[k : k + self.m] for k in range(0, len(members) - self.m + 1, self.m)])
            else:
                groups.append([rng.choice(members, self.m, replace=True)])
        left = np.array([len(g) for g in groups], dtype=np.float64)
        batches = []
        while np.count_nonzero(left) >= self.per_batch:
            chosen = rng.choice(len(groups), self.per_batch, replace=False, p=left / left.sum())
            batch = []
            for c in chosen:
                batch += groups[c][int(left[c]) - 1].tolist()
                left[c] -= 1
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._plan()
        per_shard = len(batches) // self.num_shards
        yield from batches[self.shard_id :: self.num_shards][:per_shard]

    def __len__(self) -> int:
        return len(self._plan()) // self.num_shards
