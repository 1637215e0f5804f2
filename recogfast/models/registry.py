"""A timm-style registry: each model is a one-line builder under its name."""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn

from recogfast.models.resnet import AttnBasicBlock, AttnBottleneck, ResNet
from recogfast.models.tinynet import TinyNet

log = logging.getLogger("recogfast")

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}
_ATTENTION_OF: dict[str, str | None] = {}


def register_model(name: str, description: str, attention: str | None = None):
    def wrap(fn):
        _MODELS[name] = fn
        _DESCRIPTIONS[name] = description
        _ATTENTION_OF[name] = attention
        return fn

    return wrap


def list_models() -> list[str]:
    return list(_MODELS)


def model_info(name: str) -> dict[str, str | None]:
    """``{"description": ..., "attention": ...}`` for a registered name (attention None for plain nets)."""
    _check_name(name)
    return {"description": _DESCRIPTIONS[name], "attention": _ATTENTION_OF[name]}


def _check_name(name: str) -> None:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")


def create_model(
    name: str,
    num_classes: int | None = None,
    embedding_dim: int | None = None,
    stem: str = "imagenet",
    attn_impl: str = "auto",
    weights: str | None = None,
) -> nn.Module:
    """Build the model `name`.

    Args:
        num_classes: classifier size (default 1000 for ResNets, 200 for tinynet).
        embedding_dim: replace the classifier by an `embedding_dim`-d embedding head (L2-normalised in
            eval mode). Give either this or `num_classes`, not both.
        stem: ``"imagenet"`` (torchvision's) or ``"small"`` (3×3 stride 1, no max-pool; the right one
            for 32×32–64×64 inputs). tinynet has a single design and ignores it.
        attn_impl: ``"auto" | "fused" | "reference"`` for the attention modules.
        weights: path of a torchvision (or recogfast) checkpoint, or ``"imagenet"`` for torchvision's
            ImageNet weights of the backbone (from the torch hub cache, downloaded when missing); the
            result's ``load_report`` says what was loaded, what was new and what was re-initialised.
    """
    _check_name(name)
    if num_classes is not None and embedding_dim is not None:
        raise ValueError("create_model: give num_classes (classifier) or embedding_dim (embedding head), not both")
    for arg, value in (("num_classes", num_classes), ("embedding_dim", embedding_dim)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"create_model: {arg} must be a positive integer, got {value!r}")
    model = _MODELS[name](num_classes=num_classes, embedding_dim=embedding_dim, stem=stem, attn_impl=attn_impl)
    model.model_name = name
    model.load_report = None
    if weights is not None:
        from recogfast.models.weights import load_weights, resolve_weights

        model.load_report = load_weights(model, resolve_weights(weights, name))
        log.info("%s: %s", name, model.load_report.summary())
    return model


def _resnet(block, layers, attn=None, groups=1, width_per_group=64):
    def build(num_classes, embedding_dim, stem, attn_impl):
        return ResNet(
            block,
            layers,
            num_classes=1000 if num_classes is None else num_classes,
            embedding_dim=embedding_dim,
            stem=stem,
            attn=attn,
            attn_impl=attn_impl,
            groups=groups,
            width_per_group=width_per_group,
        )

    return build


@register_model("tinynet", "the course's small CNN for task 1 (9 conv layers, ~2.5M params)")
def tinynet(num_classes, embedding_dim, stem, attn_impl):
    return TinyNet(num_classes=200 if num_classes is None else num_classes, embedding_dim=embedding_dim)


_B18 = (AttnBasicBlock, [2, 2, 2, 2])
register_model("resnet18", "ResNet-18 (He et al. 2016), torchvision layout")(_resnet(*_B18))
register_model("se_resnet18", "ResNet-18 with an SE gate in every block", "se")(_resnet(*_B18, attn="se"))
for _placement in ("parallel", "serial12", "serial21"):
    register_model(
        f"cubs_resnet18_{_placement}",
        f"ResNet-18 with CUBS blocks 1+2 ({_placement}) in every block",
        f"cubs_{_placement}",
    )(_resnet(*_B18, attn=f"cubs_{_placement}"))
register_model(
    "se_resnext50_32x4d", "SE-ResNeXt-50 32×4d (Hu et al. 2018; Xie et al. 2017)", "se"
)(_resnet(AttnBottleneck, [3, 4, 6, 3], attn="se", groups=32, width_per_group=4))
