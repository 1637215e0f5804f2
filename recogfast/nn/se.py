from __future__ import annotations

import torch
from torch import nn

from recogfast import dispatch
from recogfast.nn._params import layer_params
from recogfast.ops.se_gate import SPEC

# timm's SEModule options that this module computes as timm does only at their defaults
_TIMM_FIXED = {"bias": True, "add_maxpool": False, "norm_layer": None}
_FLAT = (1, 0, 1, 0)  # se_gate takes the 1x1 convolutions' weights [R, C, 1, 1] / [C, R, 1, 1] flattened


def make_divisible(v: float, divisor: int = 8) -> int:
    """timm's ``make_divisible(v, divisor, round_limit=0.)`` (timm/layers/helpers.py), which its SEModule
    uses for the reduced width: the nearest multiple of `divisor` (halves up), at least `divisor`."""
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


def _check_timm_options(name: str, kw: dict) -> None:
    for key, value in kw.items():
        if key in _TIMM_FIXED:
            if value != _TIMM_FIXED[key]:
                raise ValueError(f"{name}: {key}={value!r} is not supported (only {_TIMM_FIXED[key]!r})")
        elif key == "act_layer":
            if value not in ("relu", nn.ReLU):
                raise ValueError(f"{name}: act_layer={value!r} is not supported (only ReLU)")
        elif key == "gate_layer":
            if value not in ("sigmoid", nn.Sigmoid):
                raise ValueError(f"{name}: gate_layer={value!r} is not supported (only sigmoid)")
        else:
            raise TypeError(f"{name}.__init__() got an unexpected keyword argument {key!r}")


class SEBlock(nn.Module):
    """Squeeze-and-excitation gate (Hu et al., CVPR 2018) on the fused ``recogfast::se_gate`` op.

    ``fc1`` (C -> R) and ``fc2`` (R -> C) are 1×1 convolutions with bias, so state dicts load from and
    into torchvision's ``SqueezeExcitation`` and timm's ``SEModule`` of the same width R:

    - ``rd_channels`` given: R = rd_channels;
    - ``rd_ratio`` or ``rd_divisor`` given: timm's rule, R = make_divisible(C·rd_ratio, rd_divisor)
      (defaults 1/reduction and 8) — ``SEBlock.timm(C)`` is timm's default ``SEModule(C)``
      (R = 8 at C = 64 or 96, C/16 from C = 128 on);
    - otherwise R = max(1, C // reduction).

    Also takes timm's calling convention, ``SEBlock(C, device=None, dtype=None, **kw)`` with timm's
    SEModule keywords at their defaults. fp32 weights with a bf16 / fp16 activation (autocast) are read
    as they are, with no per-call cast (fp32 gradients); weights of another dtype are cast to the
    activation's. The gate is computed with fp32 accumulation.
    """

    def __init__(self, channels: int, reduction: int = 16, impl: str = "auto", rd_channels: int | None = None, *,
                 rd_ratio: float | None = None, rd_divisor: int | None = None, device=None, dtype=None, **timm_kw):
        super().__init__()
        _check_timm_options("SEBlock", timm_kw)
        if channels < 1:
            raise ValueError(f"SEBlock: channels must be >= 1, got {channels}")
        if reduction < 1:
            raise ValueError(f"SEBlock: reduction must be >= 1, got {reduction}")
        self.channels = channels
        if rd_channels:
            self.rd_channels = rd_channels
        elif rd_ratio is not None or rd_divisor is not None:
            self.rd_channels = make_divisible(channels * (1.0 / reduction if rd_ratio is None else rd_ratio),
                                              8 if rd_divisor is None else rd_divisor)
        else:
            self.rd_channels = max(1, channels // reduction)
        self.impl = dispatch.check_impl(impl)
        dd = {"device": device, "dtype": dtype}
        self.fc1 = nn.Conv2d(channels, self.rd_channels, kernel_size=1, bias=True, **dd)
        self.fc2 = nn.Conv2d(self.rd_channels, channels, kernel_size=1, bias=True, **dd)

    @classmethod
    def timm(cls, channels: int, rd_ratio: float = 1.0 / 16, rd_divisor: int = 8, **kw) -> SEBlock:
        """timm's ``SEModule(channels)`` widths (``attn_layer='se'``): pass ``SEBlock.timm`` as timm's
        ``attn_layer`` to load timm SE weights, e.g. ``seresnet18``'s."""
        return cls(channels, rd_ratio=rd_ratio, rd_divisor=rd_divisor, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return SPEC.module_call(self.impl, x, layer_params(self, ("fc1", "fc2")), _FLAT)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}, impl={self.impl!r}"
