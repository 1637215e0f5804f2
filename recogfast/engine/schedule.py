"""Optimizers and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "plateau", "none")


HEADS = ("fc.", "embedding.", "classifier.")  # parameter-name prefixes of the classifier / embedding head


def build_optimizer(
    model: nn.Module,
    name: str = "sgd",
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    extra_params: list | None = None,
    head_lr_mult: float = 1.0,
) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW; no weight decay on biases and normalisation parameters.
    ``head_lr_mult`` != 1: the head's parameters (``fc`` / ``embedding`` / ``classifier``) get their
    own groups with ``lr * head_lr_mult`` (the schedules scale every group's rate alike)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    named = list(model.named_parameters()) + [("", p) for p in extra_params or []]
    groups = []
    for head in ((False, True) if head_lr_mult != 1.0 else (None,)):
        chosen = [p for n, p in named if p.requires_grad and (head is None or n.startswith(HEADS) == head)]
        rate = {"lr": lr * head_lr_mult} if head else {}
        groups += [{"params": [p for p in chosen if p.ndim > 1], "weight_decay": weight_decay, **rate},
                   {"params": [p for p in chosen if p.ndim <= 1], "weight_decay": 0.0, **rate}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    return torch.optim.AdamW(groups, lr=lr)


class WarmupCosine:
    """LR factor per optimizer step: linear warm-up from `start` to 1 over `warmup` steps, then a
    half cosine down to `floor` at `total` steps (Loshchilov & Hutter, SGDR, 2017; Goyal et al. 2017
    for the warm-up). A picklable callable, so ``LambdaLR`` can keep it in its state."""

    def __init__(self, total: int, warmup: int = 0, floor: float = 0.0, start: float = 0.01):
        self.total, self.warmup, self.floor, self.start = max(1, total), max(0, warmup), floor, start

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.start + (1.0 - self.start) * step / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    step_size: int = 30,
    gamma: float = 0.1,
    plateau_patience: int = 3,
    mode: str = "max",
):
    """Returns ``(scheduler or None, interval)``; interval is "step" (call after every optimizer step),
    "epoch" (after every epoch) or "plateau" (after every evaluation, with the monitored value)."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {name!r}")
    if name == "cosine":
        total = epochs * steps_per_epoch
        fn = WarmupCosine(total, warmup=int(round(warmup_epochs * steps_per_epoch)))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, fn), "step"
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma), "epoch"
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=gamma, patience=plateau_patience), "plateau"
    return None, "none"
