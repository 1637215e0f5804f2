"""The multi-label task's data and evaluation (``recogfast train multilabel``): PASCAL VOC 2007 or the
embedded ShapesMulti, a BCE-with-logits head, mean average precision on val (every choice) and test.

Splits: the training pool is VOC's ``trainval`` list (ShapesMulti: its trainval images); val is a
seeded ``val_fraction`` of it (default 0.1; 0 = no validation); test is VOC's ``test`` list.
"""

from __future__ import annotations

import torch
from torch import nn

from recogfast.losses.multilabel import masked_bce
from recogfast.metrics import mean_average_precision

MULTILABEL_DATASETS = ("voc2007", "shapes-multi")


@torch.no_grad()
def multilabel_outputs(model: nn.Module, loader, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, C] float32 on the CPU, targets [N, C] int8) of every image of `loader` (gathered
    over DDP ranks; each batch's labels are the images' indices into `targets`)."""
    from recogfast.engine.embed import embed

    logits, index = embed(model, loader)
    return logits.cpu(), torch.as_tensor(targets)[index.cpu().long()]


def multilabel_scores(logits: torch.Tensor, t: torch.Tensor) -> dict[str, float]:
    """mAP (area under the PR curve), mAP (VOC07 11-point) and the BCE loss of the counted entries."""
    area = mean_average_precision(logits, t, "area")  # raises FloatingPointError on NaN logits
    voc07 = mean_average_precision(logits, t, "voc07")
    return {"map": area["map"], "map_voc07": voc07["map"], "loss": float(masked_bce(logits.float(), t))}


def multilabel_eval(loader, targets):
    def run(model: nn.Module) -> dict[str, float]:
        return multilabel_scores(*multilabel_outputs(model, loader, targets))

    return run
