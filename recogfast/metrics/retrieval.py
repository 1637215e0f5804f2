"""Recall@K and MAP@R by exact, chunked nearest-neighbour search.

Ranking: for query i, every other item j is ranked by cosine similarity, highest first; equal
similarities are ordered by item index (lower first), so results are deterministic and independent of
the chunk size. A query whose class has no other item has no relevant item at all: it is left out of
both metrics (as pytorch-metric-learning's ``AccuracyCalculator`` leaves out "lone" queries), and
``num_queries`` in :func:`retrieval_metrics` says how many queries counted.

Memory: each chunk of ``chunk_size`` queries is compared with all N items ([chunk, N] similarities),
reduced to its top-k neighbours, and dropped; the N×N matrix never exists.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _check(embeddings: torch.Tensor, labels: torch.Tensor, fn: str) -> None:
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2 or not embeddings.dtype.is_floating_point:
        got = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise ValueError(f"{fn}: embeddings must be a 2-D float tensor [N, D], got {got}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{fn}: labels must be 1-D with {embeddings.shape[0]} entries, got {got}")
    if labels.dtype.is_floating_point:
        raise ValueError(f"{fn}: labels must be an integer tensor, got {labels.dtype}")
    if not torch.isfinite(embeddings).all():
        raise FloatingPointError(f"{fn}: embeddings contain NaN or inf (the model diverged?)")


def _topk_index_tiebreak(sims: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices of the k largest entries of each row, ordered by (value desc, index asc).

    ``torch.topk`` picks arbitrarily among equal values; this selects exactly: everything above the
    k-th value, then the lowest-indexed entries equal to it, then sorts that set stably.
    """
    q, n = sims.shape
    if k == 0:
        return sims.new_zeros((q, 0), dtype=torch.long)
    kth = sims.topk(k, dim=1, sorted=True).values[:, k - 1 : k]  # [q, 1]
    above = sims > kth
    tied = sims == kth
    need = k - above.sum(dim=1, keepdim=True)  # how many tied entries to take, >= 1
    take = above | (tied & (tied.cumsum(dim=1) <= need))
    cols = take.nonzero(as_tuple=False)[:, 1].view(q, k)  # exactly k per row, in index order
    vals = sims.gather(1, cols)
    order = vals.argsort(dim=1, descending=True, stable=True)  # stable: equal values stay in index order
    return cols.gather(1, order)


def _neighbours(embeddings, labels, k_of_query, chunk_size):
    """Yield (query_slice, neighbour_label_matrix [q, kmax], k per query) chunk by chunk."""
    n = embeddings.shape[0]
    x = embeddings if embeddings.dtype == torch.float64 else embeddings.float()
    # Each row scaled by a power of two (exact) to a largest entry in [0.5, 1) before normalising: |x|^2 of
    # rows of size 1e30 overflows fp32 (they would become zero vectors), of size 1e-30 underflows.
    _, exponent = torch.frexp(x.abs().amax(dim=1, keepdim=True))
    x = F.normalize(torch.ldexp(x, -exponent), dim=1)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        ks = k_of_query[start:stop]
        kmax = int(ks.max()) if ks.numel() else 0
        sims = x[start:stop] @ x.T  # [q, N]
        rows = torch.arange(stop - start, device=x.device)
        sims[rows, rows + start] = float("-inf")  # never retrieve the query itself
        cols = _topk_index_tiebreak(sims, min(kmax, n - 1))
        yield start, stop, labels[cols]


def _class_sizes(labels: torch.Tensor) -> torch.Tensor:
    """For each item, the number of *other* items sharing its label."""
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    return counts[inverse] - 1


@torch.no_grad()
def retrieval_metrics(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = (1, 2, 4, 8),
    map_r: bool = True,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@K for each K in `ks` and (optionally) MAP@R in one pass over the data.

    Returns ``{"recall@1": ..., "recall@2": ..., "map@r": ..., "num_queries": ...}``. The search runs on
    the embeddings' device in float32 (float64 stays float64).
    """
    _check(embeddings, labels, "retrieval_metrics")
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"retrieval_metrics: every K must be >= 1, got {ks}")
    if chunk_size < 1:
        raise ValueError(f"retrieval_metrics: chunk_size must be >= 1, got {chunk_size}")
    labels = labels.to(embeddings.device)
    n = embeddings.shape[0]
    relevant = _class_sizes(labels) if n else labels.new_zeros(0)
    valid = relevant > 0
    kmax = max(ks)
    k_of_query = torch.where(valid, torch.clamp(relevant, min=kmax) if map_r else torch.full_like(relevant, kmax), 0)
    hits = {k: 0 for k in ks}
    ap_sum = 0.0
    for start, stop, nb_labels in _neighbours(embeddings, labels, k_of_query, chunk_size):
        ok = valid[start:stop]
        match = nb_labels == labels[start:stop, None]  # [q, kq]
        for k in ks:
            hits[k] += int((match[:, :k].any(dim=1) & ok).sum())
        if map_r:
            r = relevant[start:stop]  # [q]
            width = match.shape[1]
            pos = torch.arange(1, width + 1, device=match.device)
            in_r = pos[None, :] <= r[:, None]
            rel = (match & in_r).to(torch.float64)
            precision = rel.cumsum(dim=1) / pos[None, :]
            ap = (precision * rel).sum(dim=1) / r.clamp(min=1)
            ap_sum += float(ap[ok].sum())
    num = int(valid.sum())
    out = {f"recall@{k}": (hits[k] / num if num else float("nan")) for k in ks}
    if map_r:
        out["map@r"] = ap_sum / num if num else float("nan")
    out["num_queries"] = num
    return out


def recall_at_k(
    embeddings: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 2, 4, 8), chunk_size: int = 1024
) -> dict[int, float]:
    """Recall@K (SPEC "Metrics"): the fraction of queries with a same-class item among their K nearest others.

    Returns ``{K: recall}`` for each K in `ks`.
    """
    m = retrieval_metrics(embeddings, labels, ks, map_r=False, chunk_size=chunk_size)
    return {k: m[f"recall@{k}"] for k in ks}


def map_at_r(embeddings: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024) -> float:
    """MAP@R (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020).

    For a query with R other items of its class: AP@R = (1/R) Σ_{i≤R} P(i)·rel(i), where rel(i) says
    whether the i-th nearest other item shares the class and P(i) is the precision of the first i.
    """
    return retrieval_metrics(embeddings, labels, ks=(1,), map_r=True, chunk_size=chunk_size)["map@r"]
