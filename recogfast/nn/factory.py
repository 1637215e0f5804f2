"""Attention layers chosen by name, as timm's ``create_attn`` does."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from recogfast.nn.cubs import CUBSBlock, CUBSBlock1, CUBSBlock2
from recogfast.nn.se import SEBlock

# name -> builder(channels, impl, **kwargs)
_ATTENTION: dict[str, Callable[..., nn.Module]] = {
    "se": lambda channels, impl="auto", **kw: SEBlock(channels, impl=impl, **kw),
    "cubs1": lambda channels, impl="auto", **kw: CUBSBlock1(channels, impl=impl, **kw),
    "cubs2": lambda channels, impl="auto", **kw: CUBSBlock2(channels, impl=impl, **kw),
    "cubs_parallel": lambda channels, impl="auto", **kw: CUBSBlock(channels, "parallel", impl=impl, **kw),
    "cubs_serial12": lambda channels, impl="auto", **kw: CUBSBlock(channels, "serial12", impl=impl, **kw),
    "cubs_serial21": lambda channels, impl="auto", **kw: CUBSBlock(channels, "serial21", impl=impl, **kw),
}


def attention_names() -> list[str]:
    return sorted(_ATTENTION)


def create_attention(name: str, channels: int, impl: str = "auto", **kwargs) -> nn.Module:
    """Build the attention layer `name` for `channels` channels (e.g. ``create_attention("se", 64)``)."""
    try:
        builder = _ATTENTION[name]
    except KeyError:
        raise ValueError(f"unknown attention {name!r}; choose one of: {', '.join(attention_names())}") from None
    return builder(channels, impl=impl, **kwargs)
