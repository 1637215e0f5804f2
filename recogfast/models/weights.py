"""Load a torchvision (or recogfast) checkpoint into a model: strict for the shared part, reporting the rest."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch
from torch import nn

# Parameters that may legitimately differ in shape between a torchvision checkpoint and a model built
# here: the stem conv (7×7 vs the small 3×3 stem) and the classifier (another class count).
_REPLACEABLE_PREFIXES = ("conv1.", "fc.")


@dataclass
class LoadReport:
    """What ``load_weights`` did. ``new`` are model entries the checkpoint did not provide (attention,
    embedding head...), ``replaced`` checkpoint entries skipped because the model's differ in shape
    (stem, classifier), ``dropped`` checkpoint entries the model has no place for (classifier under an
    embedding head)."""

    path: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def groups(keys):
            heads = sorted({k.rsplit(".", 1)[0] for k in keys})
            return ", ".join(heads[:6]) + (f" (+{len(heads) - 6} more)" if len(heads) > 6 else "")

        parts = [f"loaded {len(self.loaded)} tensors from {self.path}"]
        if self.new:
            parts.append(f"{len(self.new)} new (not in the checkpoint): {groups(self.new)}")
        if self.replaced:
            parts.append(f"{len(self.replaced)} re-initialised (shape differs): {groups(self.replaced)}")
        if self.dropped:
            parts.append(f"{len(self.dropped)} unused: {groups(self.dropped)}")
        return "; ".join(parts)


# `--weights imagenet`: torchvision's ImageNet weights of the backbone each model shares (the attention
# blocks start fresh), as (torchvision builder, weights enum name).
_IMAGENET = {"resnet18": ("resnet18", "ResNet18_Weights"), "se_resnet18": ("resnet18", "ResNet18_Weights"),
             "cubs_resnet18_parallel": ("resnet18", "ResNet18_Weights"),
             "cubs_resnet18_serial12": ("resnet18", "ResNet18_Weights"),
             "cubs_resnet18_serial21": ("resnet18", "ResNet18_Weights"),
             "se_resnext50_32x4d": ("resnext50_32x4d", "ResNeXt50_32X4D_Weights")}


def imagenet_weights(model: str, download: bool = True) -> str:
    """Path of torchvision's ImageNet weights for `model`'s backbone (``weights enum .DEFAULT``) in the
    torch hub cache (``$TORCH_HOME/hub/checkpoints``), downloaded there when missing. Offline without
    the file: ``FileNotFoundError`` naming the file, where it comes from and where to put it."""
    if model not in _IMAGENET:
        raise ValueError(f"no ImageNet weights for {model!r}: --weights imagenet works for {', '.join(_IMAGENET)}")
    import torchvision.models

    arch, enum_name = _IMAGENET[model]
    url = getattr(torchvision.models, enum_name).DEFAULT.url
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, os.path.basename(url))
    if os.path.isfile(path):
        return path
    reason = "downloads are off"
    if download:
        try:
            os.makedirs(folder, exist_ok=True)
            torch.hub.download_url_to_file(url, path, progress=False)
            return path
        except Exception as err:  # noqa: BLE001 - offline, proxy, disk: one message says what to do
            reason = f"download failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    raise FileNotFoundError(f"ImageNet weights for {model} ({arch}): {os.path.basename(url)} is not in {folder} "
                            f"and {reason}; download {url} and put it in {folder} (or set TORCH_HOME)")


def resolve_weights(weights: str | None, model: str) -> str | None:
    """A weights argument as a file path: ``"imagenet"`` becomes the cached torchvision file."""
    return imagenet_weights(model) if weights == "imagenet" else weights


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a plain torchvision ``.pth`` or a recogfast checkpoint (key ``"model"``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line explanation
        raise ValueError(f"cannot read weights file {path} (not a torch.save file, or damaged): {type(err).__name__}: {err}") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights file {path} does not hold a state dict")
    prefixes = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
    out = {}
    for k, v in obj.items():
        for p in prefixes:
            while k.startswith(p):
                k = k[len(p) :]
        out[k] = v
    return out


_TIMM_ATTN = re.compile(r"^(layer\d+\.\d+)\.se\.")


def from_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm ResNet state dict (``seresnet18``, or ``resnet18`` with any ``attn_layer``) with recogfast's
    names: timm keeps a block's attention under ``layerX.Y.se``, recogfast under ``layerX.Y.attn``; every
    other name (stem, blocks, downsample, ``fc``) is torchvision's in both."""
    return {_TIMM_ATTN.sub(r"\1.attn.", k): v for k, v in state_dict.items()}


def load_weights(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Copy the checkpoint's tensors into `model`.

    timm ResNet checkpoints load too (their ``layerX.Y.se.*`` go to ``layerX.Y.attn.*``: timm's
    ``seresnet18`` into ``se_resnet18``). Every checkpoint entry must exist in the model with the same shape, except the stem conv and the
    classifier (``conv1.*``, ``fc.*``), which are skipped and reported when the model's differ or are
    absent. Anything else that does not fit raises ``ValueError`` naming the keys.
    """
    ckpt = from_timm(read_state_dict(path))
    own = model.state_dict()
    report = LoadReport(path=os.fspath(path))
    to_load, bad = {}, []
    for k, v in ckpt.items():
        replaceable = k.startswith(_REPLACEABLE_PREFIXES)
        if k not in own:
            (report.dropped if replaceable else bad).append(k)
        elif own[k].shape != v.shape:
            if replaceable:
                report.replaced.append(k)
            else:
                bad.append(f"{k} (checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)})")
        else:
            to_load[k] = v
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"weights file {path} does not fit the model: {shown}")
    report.loaded = sorted(to_load)
    report.new = sorted(k for k in own if k not in to_load and k not in report.replaced)
    report.new = [k for k in report.new if k not in ckpt]
    model.load_state_dict(to_load, strict=False)
    return report
