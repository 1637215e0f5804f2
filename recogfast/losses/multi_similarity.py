"""`MultiSimilarityLoss`: the module around `recogfast.ops.ms_loss`, with cross-rank mining."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from recogfast import dispatch
from recogfast.distributed import all_gather_rows, gather_sizes
from recogfast.ops.ms_loss import MINING, ms_loss


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather of [n_r, D] rows from every rank (sizes may differ); the backward sums the gradient
    of the gathered tensor over ranks and returns each rank its own rows, so a loss that uses other
    ranks' embeddings sends their gradients home (any backend: all_reduce only)."""

    @staticmethod
    def forward(ctx, x, sizes, group):
        ctx.group, ctx.sizes = group, sizes
        rank = dist.get_rank(group)
        ctx.start = sum(sizes[:rank])
        return all_gather_rows(x, group, sizes)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        n = ctx.sizes[dist.get_rank(ctx.group)]
        return grad[ctx.start : ctx.start + n], None, None


def gather_reference_set(embeddings: torch.Tensor, labels: torch.Tensor, group=None):
    """Every other rank's embeddings and labels, gathered with gradients flowing back to their owners.

    Returns (ref_embeddings, ref_labels) without this rank's own rows (they are the anchors and, with
    the diagonal excluded, candidates already), or (None, None) outside a multi-process group.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return None, None
    rank = dist.get_rank(group)
    sizes = gather_sizes(embeddings.shape[0], embeddings.device, group)
    all_emb = _AllGatherWithGrad.apply(embeddings, sizes, group)
    all_lab = all_gather_rows(labels.to(torch.int64), group, sizes)
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    keep = torch.ones(all_emb.shape[0], dtype=torch.bool, device=embeddings.device)
    keep[start:stop] = False
    return all_emb[keep], all_lab[keep]


class MultiSimilarityLoss(nn.Module):
    """Multi-Similarity loss (Wang et al., CVPR 2019) with ``"ms"`` / ``"all"`` / ``"hardest"`` mining.

    Same defaults and, for ``"ms"`` and ``"all"``, the same value and gradients as
    pytorch-metric-learning's ``MultiSimilarityMiner(epsilon)`` + ``MultiSimilarityLoss(alpha, beta,
    base)``, without ever building the B×B similarity matrix (see `recogfast.ops.ms_loss`).

    ``gather_across_ranks=True`` (under torch.distributed) uses every rank's embeddings as candidates
    for this rank's anchors; gradients flow back to the rank that owns them, so with DDP's gradient
    averaging training matches one process on the concatenated batch.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, epsilon: float = 0.1,
                 mining: str = "ms", gather_across_ranks: bool = False, impl: str = "auto", process_group=None):
        super().__init__()
        if mining not in MINING:
            raise ValueError(f"mining must be one of {', '.join(map(repr, MINING))}, got {mining!r}")
        if not (alpha > 0 and beta > 0):
            raise ValueError(f"alpha and beta must be > 0, got alpha={alpha}, beta={beta}")
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self.alpha, self.beta, self.base, self.epsilon = float(alpha), float(beta), float(base), float(epsilon)
        self.mining = mining
        self.gather_across_ranks = gather_across_ranks
        self.impl = dispatch.check_impl(impl)
        self.process_group = process_group

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_embeddings: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.gather_across_ranks:
            other_emb, other_lab = gather_reference_set(embeddings, labels, self.process_group)
            if other_emb is not None:
                if ref_embeddings is None:
                    ref_embeddings, ref_labels = other_emb, other_lab
                else:
                    ref_embeddings = torch.cat([other_emb, ref_embeddings.to(other_emb.dtype)])
                    ref_labels = torch.cat([other_lab, ref_labels.to(other_lab.dtype)])
        return ms_loss(embeddings, labels, self.alpha, self.beta, self.base, self.epsilon, self.mining,
                       ref_embeddings, ref_labels, impl=self.impl)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, base={self.base}, epsilon={self.epsilon}, "
                f"mining={self.mining!r}, gather_across_ranks={self.gather_across_ranks}, impl={self.impl!r}")
