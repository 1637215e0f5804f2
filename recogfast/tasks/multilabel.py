"""Multi-label classification (``recogfast train multilabel``): PASCAL VOC 2007 or the embedded
ShapesMulti, a BCE-with-logits head, mean average precision on val (every choice) and test.

Splits: the training pool is VOC's ``trainval`` list (ShapesMulti: its trainval images); val is a
seeded ``val_fraction`` of it (default 0.1; 0 = no validation); test is VOC's ``test`` list.
"""

from __future__ import annotations

import torch
from torch import nn

from recogfast.losses.multilabel import masked_bce
from recogfast.metrics import mean_average_precision
from recogfast.tasks.base import Task

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


def multilabel_datasets(cfg):
    """(train, val, test) multi-label lists; val is None with ``val_fraction`` 0."""
    from recogfast import data
    from recogfast.engine.inputs import require_data_folder

    if cfg.dataset == "shapes-multi":
        kw = dict(cache_dir=cfg.data, images_per_class=cfg.images_per_class, image_size=64, seed=0)
        pool, test = data.ShapesMulti(split="trainval", **kw), data.ShapesMulti(split="test", **kw)
    else:
        require_data_folder(cfg)
        pool, test = data.VOC2007(cfg.data, "trainval"), data.VOC2007(cfg.data, "test")
    if not cfg.val_fraction:
        return pool, None, test
    train, val = data.split_multilabel(pool, cfg.val_fraction, cfg.split_seed)
    return train, val, test


class MultiLabel(Task):
    name = "multilabel"
    output = "sigmoid"
    monitor = ("map", "max")
    default_dataset = "shapes-multi"
    datasets = MULTILABEL_DATASETS

    def check(self, cfg) -> None:
        if cfg.dataset not in self.datasets:
            raise ValueError(f"multilabel trains on a multi-label dataset ({' or '.join(MULTILABEL_DATASETS)})")
        if cfg.protocol == "retrieval":
            raise ValueError("--protocol retrieval is for classify and retrieval, not multilabel")

    def build_datasets(self, cfg):
        return multilabel_datasets(cfg)

    def build_loss(self, cfg, train_ds) -> nn.Module:
        # BCE-with-logits on the training split's targets (difficult entries ignored)
        from recogfast.losses import MultiLabelBCELoss

        return MultiLabelBCELoss(train_ds.targets)

    def evaluator(self, cfg, loader, ds, features: bool = False):
        if features:
            raise ValueError("--features scores Recall@K on single-label classes: a multilabel run is scored by mAP "
                             "(`recogfast verify` uses its pooled features for pairs)")
        return multilabel_eval(loader, ds.targets)

    def describe_output(self) -> dict:
        return {"output": "logits", "activation": "sigmoid per class"}

    def probabilities(self, logits):
        return logits.sigmoid()
