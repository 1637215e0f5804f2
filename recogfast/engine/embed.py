"""Embeddings (or pooled features) of a loader's images, gathered over DDP ranks, and the raw-pixel
baseline: what every task's evaluation and ``verify`` share."""

from __future__ import annotations

import torch
from torch import nn

from recogfast.distributed import all_gather_rows
from recogfast.distributed import rank_and_world as _dist_info


def _gather(t: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, concatenated in rank order (sizes may differ)."""
    return t if _dist_info()[1] == 1 else all_gather_rows(t)


@torch.no_grad()
def embed(model: nn.Module, loader, features: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (or pooled features with ``features=True``) and labels of every item of `loader`
    (gathered over DDP ranks), as float32."""
    was = model.training
    model.eval()
    outs, labels = [], []
    for images, y in loader:
        out = model.forward_features(images) if features else model(images)
        outs.append(out.float())
        labels.append(y)
    model.train(was)
    e = torch.cat(outs) if outs else torch.zeros(0, 1)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    return _gather(e), _gather(y.to(e.device))


@torch.no_grad()
def raw_pixels(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-transformed images flattened: the raw-pixel retrieval baseline."""
    outs, labels = [], []
    for images, y in loader:
        outs.append(images.float().flatten(1))
        labels.append(y)
    e, y = torch.cat(outs), torch.cat(labels)
    return _gather(e), _gather(y.to(e.device))
