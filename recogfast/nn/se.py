from __future__ import annotations

import torch
from torch import nn

from recogfast import _impl
from recogfast.ops.se_gate import se_gate


class SEBlock(nn.Module):
    """Squeeze-and-excitation gate (Hu et al., CVPR 2018) on the fused ``recogfast::se_gate`` op.

    ``fc1`` (C -> R) and ``fc2`` (R -> C) are 1×1 convolutions with bias, R = max(1, C // reduction),
    so state dicts load from and into torchvision's ``SqueezeExcitation`` and timm's ``SEModule``.
    The weights are cast to the activation's dtype (as autocast does for a convolution); the gate is
    computed with fp32 accumulation.
    """

    def __init__(self, channels: int, reduction: int = 16, impl: str = "auto", rd_channels: int | None = None):
        super().__init__()
        if channels < 1:
            raise ValueError(f"SEBlock: channels must be >= 1, got {channels}")
        if reduction < 1:
            raise ValueError(f"SEBlock: reduction must be >= 1, got {reduction}")
        self.channels = channels
        self.rd_channels = rd_channels if rd_channels is not None else max(1, channels // reduction)
        self.impl = _impl.check_impl(impl)
        self.fc1 = nn.Conv2d(channels, self.rd_channels, kernel_size=1, bias=True)
        self.fc2 = nn.Conv2d(self.rd_channels, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype
        w1 = self.fc1.weight.flatten(1).to(dt)
        w2 = self.fc2.weight.flatten(1).to(dt)
        return se_gate(x, w1, self.fc1.bias.to(dt), w2, self.fc2.bias.to(dt), impl=self.impl)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}, impl={self.impl!r}"
