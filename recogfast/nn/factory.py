"""Attention layers chosen by name, as timm's ``create_attn`` does."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from recogfast.nn.se import SEBlock

# name -> builder(channels, impl) ; the CUBS names are added by recogfast/nn/cubs.py's entries below.
_ATTENTION: dict[str, Callable[..., nn.Module]] = {
    "se": lambda channels, impl="auto", **kw: SEBlock(channels, impl=impl, **kw),
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
