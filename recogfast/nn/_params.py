"""The fused modules' per-call parameter lookup."""

from __future__ import annotations

from torch import nn


def layer_params(owner: nn.Module, layers: tuple[str, ...]) -> tuple:
    """(weight, bias) of each named sublayer of `owner`, in order: what ``owner.<layer>.weight`` gives, read
    from the modules' own dicts where they hold it (``nn.Module.__getattr__`` costs about half a microsecond
    a lookup, a call pays six to twenty-three of them); a layer or parameter not in them (a parametrized
    weight, a property) is read by attribute as before."""
    out = []
    modules = owner._modules
    for name in layers:
        layer = modules.get(name)
        if layer is None:
            layer = getattr(owner, name)
        params = layer._parameters
        w, b = params.get("weight"), params.get("bias")
        out.append(w if w is not None else layer.weight)
        out.append(b if b is not None else layer.bias)
    return tuple(out)
