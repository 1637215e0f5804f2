from __future__ import annotations

from collections.abc import Sequence

import torch


def _check(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"accuracy: logits must be 2-D [N, classes], got shape {tuple(logits.shape)}")
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"accuracy: targets must be 1-D with {logits.shape[0]} entries, got shape {tuple(targets.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"accuracy: targets must be an integer tensor, got {targets.dtype}")
    if logits.numel() and not bool(torch.isfinite(logits).all()):
        # NaN compares false with everything, so a NaN row would rank its target first: a diverged model
        # would score 100%. A non-finite logit is an error, never a hit.
        bad = int((~torch.isfinite(logits)).any(dim=1).sum())
        raise FloatingPointError(f"accuracy: logits contain NaN or inf in {bad} of {logits.shape[0]} rows "
                                 f"(the model diverged?)")


@torch.no_grad()
def correct_at_k(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """Number of rows whose target is among the k highest logits, for each k (k is capped at the class count).

    A target counts as found at k when fewer than k logits are strictly greater than its own
    (ties resolved in the target's favour, as ``torch.topk``-based code does on average).
    """
    _check(logits, targets)
    if logits.shape[0] == 0:
        return {k: 0 for k in ks}
    target_logit = logits.gather(1, targets.view(-1, 1).to(torch.long))
    # rank of the target = number of classes with a strictly larger logit
    rank = (logits > target_logit).sum(dim=1)
    return {k: int((rank < k).sum()) for k in ks}


def accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy for each k, as fractions: ``{"top1": ..., "top5": ...}``."""
    counts = correct_at_k(logits, targets, ks)
    n = max(1, logits.shape[0])
    return {f"top{k}": counts[k] / n for k in ks}


class AccuracyMeter:
    """Accumulates top-k accuracy over batches (and, under DDP, over ranks via :meth:`all_reduce`)."""

    def __init__(self, ks: Sequence[int] = (1, 5)):
        self.ks = tuple(ks)
        self.reset()

    def reset(self) -> None:
        self.correct = {k: 0 for k in self.ks}
        self.count = 0

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        for k, c in correct_at_k(logits, targets, self.ks).items():
            self.correct[k] += c
        self.count += int(targets.shape[0])

    def all_reduce(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            t = torch.tensor([self.count] + [self.correct[k] for k in self.ks], dtype=torch.float64)
            if dist.get_backend() == "nccl":
                t = t.cuda()
            dist.all_reduce(t)
            t = t.cpu()
            self.count = int(t[0])
            self.correct = {k: int(v) for k, v in zip(self.ks, t[1:].tolist())}

    def compute(self) -> dict[str, float]:
        n = max(1, self.count)
        return {f"top{k}": self.correct[k] / n for k in self.ks}
