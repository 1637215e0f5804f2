"""Attention layers chosen by name, as timm's ``create_attn`` does.

``create_attention(name, channels)`` builds a layer; ``create_attention(name)`` (no channels) returns
the layer's constructor, ``f(channels, device=None, dtype=None)``, in the form timm's ``attn_layer``
takes: ``timm.create_model("resnet18", block_args=dict(attn_layer=create_attention("cubs_parallel")))``.
"se" is timm's default ``SEModule`` width rule (reduced width make_divisible(C/16, 8)).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn

from recogfast.nn.cubs import CUBSBlock, CUBSBlock1, CUBSBlock2
from recogfast.nn.se import SEBlock


def _se(channels, impl="auto", **kw):
    if not any(k in kw for k in ("reduction", "rd_channels", "rd_ratio", "rd_divisor")):
        kw.update(rd_ratio=1.0 / 16, rd_divisor=8)
    return SEBlock(channels, impl=impl, **kw)


# name -> builder(channels, impl, **kwargs)
_ATTENTION: dict[str, Callable[..., nn.Module]] = {
    "se": _se,
    "cubs1": lambda channels, impl="auto", **kw: CUBSBlock1(channels, impl=impl, **kw),
    "cubs2": lambda channels, impl="auto", **kw: CUBSBlock2(channels, impl=impl, **kw),
    "cubs_parallel": lambda channels, impl="auto", **kw: CUBSBlock(channels, "parallel", impl=impl, **kw),
    "cubs_serial12": lambda channels, impl="auto", **kw: CUBSBlock(channels, "serial12", impl=impl, **kw),
    "cubs_serial21": lambda channels, impl="auto", **kw: CUBSBlock(channels, "serial21", impl=impl, **kw),
}


def attention_names() -> list[str]:
    return sorted(_ATTENTION)


def create_attention(name: str, channels: int | None = None, impl: str = "auto", **kwargs):
    """Build the attention layer `name` for `channels` channels (e.g. ``create_attention("se", 64)``).

    Without `channels`, return its constructor ``f(channels, device=None, dtype=None)`` with `impl` and
    `kwargs` bound: what timm's ``attn_layer`` expects."""
    try:
        builder = _ATTENTION[name]
    except KeyError:
        raise ValueError(f"unknown attention {name!r}; choose one of: {', '.join(attention_names())}") from None
    if channels is None:
        return functools.partial(builder, impl=impl, **kwargs)
    return builder(channels, impl=impl, **kwargs)
