"""Binary cross-entropy with logits for multi-label classification, on the index-carrying batches of
:class:`recogfast.data.MultiLabelList` (each batch's "labels" are the samples' indices)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiLabelBCELoss(nn.Module):
    """``loss(logits [B, C], index [B])``: BCE-with-logits against ``targets[index]``, averaged over the
    (sample, class) entries that count. Entries marked -1 (VOC's ``difficult``-only classes) are
    ignored, as the metric ignores them. ``targets`` [N, C] in {1, 0, -1} is a non-persistent buffer:
    it belongs to the dataset, not to the checkpoint."""

    def __init__(self, targets):
        super().__init__()
        self.register_buffer("targets", torch.as_tensor(targets, dtype=torch.int8), persistent=False)

    def forward(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        t = self.targets[index.long()]
        if logits.shape != t.shape:
            raise ValueError(f"MultiLabelBCELoss: logits {tuple(logits.shape)} do not match targets {tuple(t.shape)} "
                             f"(the model's head must have one output per class)")
        return masked_bce(logits, t)


def masked_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits averaged over the entries of `targets` ({1, 0, -1}) that count (-1: ignored)."""
    weight = (targets >= 0).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0).to(logits.dtype), weight=weight,
                                              reduction="sum")
    return loss / weight.sum().clamp(min=1)
