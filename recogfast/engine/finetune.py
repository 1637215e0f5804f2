"""The fine-tuning recipe: frozen early stages (``--freeze``, ``--unfreeze-at``), a head learning-rate
factor (``--head-lr-mult``, in :func:`~recogfast.engine.schedule.build_optimizer`), weight EMA
(``--ema``: torch's ``AveragedModel`` with ``get_ema_multi_avg_fn``) and MixUp / CutMix (torchvision's
``transforms.v2``). Only the glue is written here.
"""

from __future__ import annotations

import types

import torch
from torch import nn

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
_STEM = ("conv1", "bn1")


def stage_modules(model: nn.Module, stage: str) -> list[nn.Module]:
    """The modules from the stem up to and including `stage` (a ResNet's conv1/bn1, layer1 … layer4);
    ValueError (one line) for another stage name or a model without these stages."""
    if stage not in STAGES:
        raise ValueError(f"--freeze: expected one of {', '.join(STAGES)}, got {stage!r}")
    names = list(_STEM) + [f"layer{i}" for i in range(1, STAGES.index(stage) + 1)]
    for name in names:
        if not isinstance(getattr(model, name, None), nn.Module):
            raise ValueError(f"--freeze {stage}: {type(model).__name__} has no {name} (freezing needs a ResNet-style "
                             f"model: stem conv1/bn1, layer1 … layer4)")
    return [getattr(model, name) for name in names]


def _train_stays_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    # bound to a frozen BatchNorm: model.train() leaves it in eval mode (running statistics kept)
    return nn.Module.train(self, False)


class Freezer:
    """``--freeze STAGE`` (with ``--unfreeze-at EPOCH``) as a trainer callback.

    The parameters of the stem … `stage` stop taking gradients (they stay in the optimizer, which skips
    parameters without a gradient, so unfreezing keeps the optimizer's and the schedule's state), and
    their BatchNorm layers stay in eval mode, also after ``model.train()``. At the start of epoch
    `unfreeze_at` (1-based) everything trains again; the frozen state follows from the epoch alone, so
    a resumed run freezes exactly as the uninterrupted one did.
    """

    def __init__(self, model: nn.Module, stage: str, unfreeze_at: int | None = None):
        self.stage, self.unfreeze_at = stage, unfreeze_at
        self.modules = stage_modules(model, stage)
        self.frozen = False
        self.set_frozen(True)

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules for p in m.parameters()]

    def set_frozen(self, frozen: bool) -> None:
        if frozen == self.frozen:
            return
        for module in self.modules:
            for p in module.parameters():
                p.requires_grad_(not frozen)
            for bn in module.modules():
                if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                    if frozen:
                        bn.train = types.MethodType(_train_stays_eval, bn)
                        bn.eval()
                    elif "train" in bn.__dict__:
                        del bn.train
        self.frozen = frozen

    def __call__(self, trainer, event: str, **info) -> None:
        if event != "epoch_start":
            return
        frozen = self.unfreeze_at is None or trainer.epoch + 1 < self.unfreeze_at
        if frozen == self.frozen:
            return
        self.set_frozen(frozen)
        trainer.rewrap()  # DDP registers the parameters that take gradients when it is built
        trainer.train_model.train()
        if trainer.is_main and trainer.opt.progress:
            print(f"epoch {trainer.epoch + 1}: stem … {self.stage} " + ("frozen" if frozen else "unfrozen"), flush=True)


def build_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of `model`'s weights and buffers (BatchNorm statistics too):
    ``ema = decay·ema + (1 - decay)·weights`` after every optimizer step, starting from the weights
    after the first step."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def scored_weights(state: dict) -> dict[str, torch.Tensor]:
    """The weights a checkpoint is scored with (val, test, ``recogfast eval``, report, verify, export): the EMA
    model's when the run kept one, else the model's."""
    ema = state.get("ema")
    if not ema:
        return state["model"]
    return {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}


def batch_mix(num_classes: int, mixup: float = 0.0, cutmix: float = 0.0):
    """``(images, labels) -> (mixed images, soft labels)``: torchvision's MixUp and/or CutMix (one of
    the two, drawn per batch, when both alphas are > 0), or None when both are 0. The soft labels
    (rows summing to 1) go to the cross-entropy as class probabilities."""
    from torchvision.transforms import v2

    mixes = ([v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []) + (
        [v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else [])
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


def add_finetune_args(p) -> None:
    """The fine-tuning flags of ``recogfast train`` (RunConfig fields of the same names)."""
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--freeze", choices=STAGES, default=None,
                   help="freeze the stem up to and including this stage (its BatchNorm stays in eval mode)")
    g.add_argument("--head-lr-mult", type=float, help="learning-rate factor of the fc/embedding head")
    g.add_argument("--unfreeze-at", type=int, default=None, help="the epoch (1-based) from which everything trains")
    g.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="weight EMA (torch.optim.swa_utils): val and test score the EMA weights")
    g.add_argument("--mixup", type=float, metavar="ALPHA", help="MixUp Beta alpha (classify; 0 = off)")
    g.add_argument("--cutmix", type=float, metavar="ALPHA", help="CutMix Beta alpha (classify; 0 = off)")
    g.add_argument("--accumulate", type=int, metavar="N",
                   help="optimizer step every N batches (loss / N; the schedule counts optimizer steps)")
