"""CUBS blocks (course figures "CUBS Block 1", "CUBS Block 2", "ARCH") on the fused ops
``recogfast::cubs_channel`` and ``recogfast::cubs_spatial``. See docs/SPEC.md."""

from __future__ import annotations

import torch
from torch import nn

from recogfast import dispatch
from recogfast.ops.cubs_channel import SPEC as _CHANNEL
from recogfast.nn._params import layer_params
from recogfast.ops._fast_path import pair_call
from recogfast.ops.cubs_spatial import SPEC as _SPATIAL

PLACEMENTS = ("serial12", "serial21", "parallel")
_LAYERS1, _LAYERS2 = ("q", "k", "v", "out"), ("q", "k", "v")
_FLAT1 = (0,) * 8  # cubs_channel takes the Linear layers' weights and biases as they are
_FLAT2 = (2, 0) * 3  # cubs_spatial takes the 1x1 convolutions' weights [1, C, 1, 1] as [C]
_mm = nn.modules.module


def _hooked(m: nn.Module) -> bool:
    """Whether calling `m` runs hooks (its own or global ones), so it must be called as a module."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or _mm._global_forward_hooks or _mm._global_forward_pre_hooks or _mm._global_backward_hooks
                or _mm._global_backward_pre_hooks)


class CUBSBlock1(nn.Module):
    """Channel similarity gate: pooled vector g -> dense q, k, v (C -> N) -> softmax(q kᵀ) v -> dense
    ``out`` (N -> C) + g -> sigmoid -> channel-wise scaling of x. N defaults to max(1, C // 2).

    fp32 weights with a bf16 / fp16 activation (autocast) are read as they are, with no per-call cast (fp32
    gradients); weights of another dtype are cast to the activation's. The kernels accumulate in fp32 (fp64
    for double)."""

    def __init__(self, channels: int, inner: int | None = None, impl: str = "auto", *, device=None, dtype=None):
        super().__init__()
        if channels < 1:
            raise ValueError(f"CUBSBlock1: channels must be >= 1, got {channels}")
        inner = max(1, channels // 2) if inner is None else inner
        if inner < 1:
            raise ValueError(f"CUBSBlock1: inner must be >= 1, got {inner}")
        self.channels, self.inner = channels, inner
        self.impl = dispatch.check_impl(impl)
        dd = {"device": device, "dtype": dtype}
        self.q = nn.Linear(channels, inner, **dd)
        self.k = nn.Linear(channels, inner, **dd)
        self.v = nn.Linear(channels, inner, **dd)
        self.out = nn.Linear(inner, channels, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _CHANNEL.module_call(self.impl, x, layer_params(self, _LAYERS1), _FLAT1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inner={self.inner}, impl={self.impl!r}"


class CUBSBlock2(nn.Module):
    """Spatial similarity gate: 1×1 convolutions q, k, v (C -> 1) -> softmax(q kᵀ) v over the H·W
    positions -> sigmoid -> pixel-wise scaling of x. The fused kernel never builds the HW×HW matrix."""

    def __init__(self, channels: int, impl: str = "auto", *, device=None, dtype=None):
        super().__init__()
        if channels < 1:
            raise ValueError(f"CUBSBlock2: channels must be >= 1, got {channels}")
        self.channels = channels
        self.impl = dispatch.check_impl(impl)
        dd = {"device": device, "dtype": dtype}
        self.q = nn.Conv2d(channels, 1, kernel_size=1, **dd)
        self.k = nn.Conv2d(channels, 1, kernel_size=1, **dd)
        self.v = nn.Conv2d(channels, 1, kernel_size=1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SPATIAL.module_call(self.impl, x, layer_params(self, _LAYERS2), _FLAT2)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, impl={self.impl!r}"


class CUBSBlock(nn.Module):
    """Both CUBS blocks as one drop-in attention layer, placed after the residual body and before the
    add (SPEC "Placement"): ``parallel`` a = B1(x) + B2(x); ``serial12`` a = B2(B1(x));
    ``serial21`` a = B1(B2(x)).

    Every CUBS module also takes timm's calling convention ``cls(channels, device=None, dtype=None)``,
    so it can be timm's ``attn_layer``: ``block_args=dict(attn_layer=CUBSBlock)`` (serial12), or
    ``create_attention("cubs_parallel")`` for another placement."""

    def __init__(self, channels: int, placement: str = "serial12", inner: int | None = None, impl: str = "auto", *,
                 device=None, dtype=None):
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"CUBSBlock: placement must be one of {', '.join(map(repr, PLACEMENTS))}, got {placement!r}")
        self.placement = placement
        self.block1 = CUBSBlock1(channels, inner=inner, impl=impl, device=device, dtype=dtype)
        self.block2 = CUBSBlock2(channels, impl=impl, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.block1, self.block2
        if (torch.is_grad_enabled() and type(b1) is CUBSBlock1 and type(b2) is CUBSBlock2 and not _hooked(b1)
                and not _hooked(b2)):
            # both kernels, forward and backward, as one autograd node where they run fused (pair_call)
            y = pair_call(self.placement, _CHANNEL, b1.impl, layer_params(b1, _LAYERS1), _FLAT1, _SPATIAL, b2.impl,
                          layer_params(b2, _LAYERS2), _FLAT2, x)
            if y is not None:
                return y
        if self.placement == "parallel":
            return self.block1(x) + self.block2(x)
        if self.placement == "serial12":
            return self.block2(self.block1(x))
        return self.block1(self.block2(x))

    def extra_repr(self) -> str:
        return f"placement={self.placement!r}"
