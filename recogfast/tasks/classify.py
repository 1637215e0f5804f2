"""Classification (``recogfast train classify``): a softmax head trained with label-smoothed
cross-entropy (MixUp / CutMix's soft labels allowed), top-1 / top-5 accuracy on val and test.

On the disjoint-class split (``--protocol retrieval``, the course's Task 4) the classifier trains on the
training classes and its test result is the Recall@K / MAP@R of its pooled features on the test classes,
which it has never seen.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from recogfast.metrics import AccuracyMeter
from recogfast.tasks.base import Task


def classification_eval(loader, label_smoothing: float = 0.0):
    """``model -> {top1, top5, loss}`` over `loader` (counts all-reduced over DDP ranks)."""
    def run(model: nn.Module) -> dict[str, float]:
        meter = AccuracyMeter((1, 5))
        loss_sum = torch.zeros((), dtype=torch.float64)
        for images, y in loader:
            logits = model(images).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double().cpu()
            meter.update(logits, y)
        if dist.is_available() and dist.is_initialized():
            t = loss_sum.to(next(model.parameters()).device)
            dist.all_reduce(t)
            loss_sum = t.cpu()
        meter.all_reduce()
        out = meter.compute()
        out["loss"] = float(loss_sum) / max(1, meter.count)
        return out

    return run


class Classify(Task):
    name = "classify"
    takes_soft_labels = True

    def build_loss(self, cfg, train_ds) -> nn.Module:
        return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def batch_transform(self, cfg, num_classes: int):
        from recogfast.engine.finetune import batch_mix

        return batch_mix(num_classes, cfg.mixup, cfg.cutmix)

    def split_features(self, cfg, split: str) -> bool:
        # the test classes of the disjoint-class split are not the classifier's: their score is feature Recall@K
        return cfg.protocol == "retrieval" and split == "test"

    def evaluator(self, cfg, loader, ds, features: bool = False):
        if features:
            from recogfast.tasks.retrieval import retrieval_eval

            return retrieval_eval(loader, features=True)
        return classification_eval(loader)
