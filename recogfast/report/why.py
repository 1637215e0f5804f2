""""Why this class": Grad-CAM, guided backpropagation and guided Grad-CAM on the last conv layer through
Captum (``pip install recogfast[viz]``), one image per class for up to 10 classes."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from recogfast.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def last_conv(model: nn.Module) -> nn.Module:
    """The last conv stage: the last top-level child that holds a Conv2d (``layer4`` of a ResNet)."""
    stages = [m for m in model.children() if any(isinstance(x, nn.Conv2d) for x in m.modules())]
    if not stages:
        raise ValueError("the model has no Conv2d layer")
    return stages[-1]


def _show(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def _norm(a: torch.Tensor) -> torch.Tensor:
    a = a - a.min()
    return a / a.max().clamp_min(1e-12)


def attributions(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"gradcam": [B, H, W], "guided": [B, 3, H, W], "guided_gradcam": [B, 3, H, W]} for the target classes."""
    from captum.attr import GuidedBackprop, GuidedGradCam, LayerAttribution, LayerGradCam

    layer = last_conv(model)
    x = images.detach().float().contiguous().clone().requires_grad_(True)
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        cam = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
        guided = GuidedBackprop(model).attribute(x, target=targets)
        ggc = GuidedGradCam(model, layer).attribute(x, target=targets)
    return {"gradcam": cam.detach(), "guided": guided.detach(), "guided_gradcam": ggc.detach()}


def why_figure(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, names: list[str]):
    import matplotlib.pyplot as plt

    from recogfast.report.figures import wrap

    a = attributions(model, images, targets)
    cols = ("input", "Grad-CAM", "guided backprop", "guided Grad-CAM")
    fig, axes = plt.subplots(len(images), 4, figsize=(6.4, 1.6 * len(images)), squeeze=False)
    for i in range(len(images)):
        img = _show(images[i])
        axes[i, 0].imshow(img)
        axes[i, 1].imshow(img)
        axes[i, 1].imshow(_norm(a["gradcam"][i]).cpu().numpy(), cmap="jet", alpha=0.45)
        axes[i, 2].imshow(_norm(a["guided"][i].abs().amax(0)).cpu().numpy(), cmap="gray")
        axes[i, 3].imshow(_norm(a["guided_gradcam"][i].abs().amax(0)).cpu().numpy(), cmap="gray")
        axes[i, 0].set_ylabel(wrap(names[i], 18, 2), fontsize=6)
        for j, ax in enumerate(axes[i]):
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=8)
    fig.tight_layout()
    return fig


def one_per_class(loader, limit: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """The first image of each of the first `limit` classes met in `loader`."""
    seen: dict[int, torch.Tensor] = {}
    for images, y in loader:
        for img, label in zip(images, y.tolist()):
            if label not in seen and len(seen) < limit:
                seen[label] = img.float().cpu()
        if len(seen) >= limit:
            break
    labels = sorted(seen)
    return torch.stack([seen[c] for c in labels]), torch.tensor(labels)
