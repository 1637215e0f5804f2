"""The one padded all_gather: rows of differing counts from every rank, concatenated in rank order.

``torch.distributed.all_gather`` needs equal shapes on every rank, so each rank pads its rows to the
largest count, gathers, and cuts the padding off again. Used by the evaluation (embeddings of the whole
split) and by the Multi-Similarity loss's cross-rank reference set; and this process's (rank, world size).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_sizes(n: int, device: torch.device, group=None) -> list[int]:
    """Every rank's row count, in rank order."""
    t = torch.tensor([n], dtype=torch.int64, device=device)
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t, group=group)
    return [int(s.item()) for s in out]


def all_gather_rows(t: torch.Tensor, group=None, sizes: list[int] | None = None) -> torch.Tensor:
    """All ranks' rows of `t` ([n_r, ...], n_r may differ by rank) concatenated in rank order (no gradient)."""
    if sizes is None:
        sizes = gather_sizes(t.shape[0], t.device, group)
    padded = t.new_zeros((max(sizes), *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])
