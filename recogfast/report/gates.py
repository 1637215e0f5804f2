"""CUBS and SE gates from forward hooks: the fused ops return y = gate × x, not the gate, so each gate is
computed from the module's input and weights with the reference math (recogfast.ops)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recogfast.nn.cubs import CUBSBlock1, CUBSBlock2
from recogfast.nn.se import SEBlock
from recogfast.ops._attn import rank_one_attention_reference


def spatial_gate(m: CUBSBlock2, x: torch.Tensor) -> torch.Tensor:
    """sigmoid(f) of CUBS Block 2: [B, H, W]."""
    B, C, H, W = x.shape
    xf = x.float().reshape(B, C, H * W)
    q, k, v = (torch.einsum("bcp,c->bp", xf, c.weight.reshape(-1).float()) + c.bias.float() for c in (m.q, m.k, m.v))
    return torch.sigmoid(rank_one_attention_reference(q, k, v)).reshape(B, H, W)


def channel_gate(m: CUBSBlock1, x: torch.Tensor) -> torch.Tensor:
    """sigmoid(z) of CUBS Block 1: [B, C]."""
    g = x.float().mean(dim=(2, 3))
    q, k, v = (F.linear(g, lin.weight.float(), lin.bias.float()) for lin in (m.q, m.k, m.v))
    f = rank_one_attention_reference(q, k, v)
    return torch.sigmoid(F.linear(f, m.out.weight.float(), m.out.bias.float()) + g)


def se_gate(m: SEBlock, x: torch.Tensor) -> torch.Tensor:
    """sigmoid(W2 relu(W1 g + b1) + b2) of an SE block: [B, C]."""
    g = x.float().mean(dim=(2, 3))
    h = torch.relu(F.linear(g, m.fc1.weight.flatten(1).float(), m.fc1.bias.float()))
    return torch.sigmoid(F.linear(h, m.fc2.weight.flatten(1).float(), m.fc2.bias.float()))


_GATES = {CUBSBlock1: channel_gate, CUBSBlock2: spatial_gate, SEBlock: se_gate}


@torch.no_grad()
def gate_maps(model: nn.Module, images: torch.Tensor, with_inputs: bool = False) -> dict[str, torch.Tensor]:
    """{module name: gate} for every CUBS Block 1 and SE block (channel gate [B, C]) and CUBS Block 2 (spatial
    gate [B, H, W]) of `model` on `images`; with `with_inputs`, also ``name + ":input"`` and ``name + ":output"``."""
    out: dict[str, torch.Tensor] = {}
    hooks = []
    for name, m in model.named_modules():
        gate = next((fn for cls, fn in _GATES.items() if isinstance(m, cls)), None)
        if gate is not None:
            def hook(mod, args, y, name=name, gate=gate):
                x = args[0]
                out[name] = gate(mod, x)
                if with_inputs:
                    out[name + ":input"], out[name + ":output"] = x.detach(), y.detach()
            hooks.append(m.register_forward_hook(hook))
    try:
        was = model.training
        model.eval()
        model(images)
        model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return out


def gate_figure(images: torch.Tensor, gates: dict[str, torch.Tensor], show):
    """Spatial gates overlaid on the inputs (rows: images, columns: blocks) and the channel gates as a
    per-block heat strip (mean over the images). `show` turns an input tensor into an HWC image."""
    import matplotlib.pyplot as plt

    from recogfast.report.figures import wrap

    spatial = [(n, g) for n, g in gates.items() if g.dim() == 3]
    channel = [(n, g) for n, g in gates.items() if g.dim() == 2]
    figs = {}
    if spatial:
        rows, cols = images.shape[0], len(spatial) + 1
        fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.4 * rows), squeeze=False)
        for i in range(rows):
            img = show(images[i])
            axes[i, 0].imshow(img)
            for j, (name, g) in enumerate(spatial):
                up = F.interpolate(g[i][None, None].cpu(), size=tuple(images.shape[-2:]), mode="bilinear")[0, 0].numpy()
                axes[i, j + 1].imshow(img)
                axes[i, j + 1].imshow(up, cmap="jet", alpha=0.5, vmin=0, vmax=1)
                if i == 0:
                    axes[i, j + 1].set_title(wrap(name.replace(".attn", "").replace(".block2", ""), 14, 2), fontsize=5)
            for ax in axes[i]:
                ax.set_xticks([])
                ax.set_yticks([])
        axes[0, 0].set_title("input", fontsize=6)
        fig.suptitle("CUBS Block 2 spatial gates sigmoid(f)", fontsize=8)
        fig.tight_layout(rect=(0, 0, 0.9, 1))
        bar = fig.colorbar(plt.cm.ScalarMappable(norm=plt.Normalize(0, 1), cmap="jet"),
                           cax=fig.add_axes((0.92, 0.15, 0.02, 0.7)))
        bar.set_label("gate", fontsize=6)
        bar.ax.tick_params(labelsize=5)
        figs["spatial"] = fig
    if channel:
        width = max(g.shape[1] for _, g in channel)
        strip = torch.full((len(channel), width), float("nan"))
        for r, (_, g) in enumerate(channel):
            strip[r, : g.shape[1]] = g.mean(0).cpu()
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(channel) + 1.2))
        im = ax.imshow(strip.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(len(channel)))
        ax.set_yticklabels([wrap(n, 40, 1) for n, _ in channel], fontsize=6)
        ax.set_xlabel("channel")
        what = " / ".join(sorted({"CUBS Block 1" if n.endswith("block1") else "SE" for n, _ in channel}))
        ax.set_title(f"{what} channel gates, mean over the images", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.03)
        fig.tight_layout()
        figs["channel"] = fig
    return figs
