"""Fused ops. Each op has one module here holding its Python wrapper, its pure-PyTorch reference,
and the registration of its autograd and fake (meta) kernels; the kernels live in csrc/ops/."""

from __future__ import annotations

from recogfast.ops import cubs_channel as _cubs_channel_mod
from recogfast.ops import cubs_spatial as _cubs_spatial_mod
from recogfast.ops import ms_loss as _ms_loss_mod
from recogfast.ops import se_gate as _se_gate_mod
from recogfast.ops.cubs_channel import cubs_channel, cubs_channel_reference
from recogfast.ops.cubs_spatial import cubs_spatial, cubs_spatial_reference
from recogfast.ops.ms_loss import ms_loss, ms_loss_reference
from recogfast.ops.se_gate import se_gate, se_gate_reference

# Every fused op: (module name shown by `python -m recogfast.info`, op module with `register()`).
FUSED_OPS = {
    "se_gate": _se_gate_mod,
    "cubs_channel": _cubs_channel_mod,
    "cubs_spatial": _cubs_spatial_mod,
    "ms_loss": _ms_loss_mod,
}


def register_all() -> None:
    """Register autograd and fake kernels of every op (idempotent; called by `import recogfast`)."""
    for mod in FUSED_OPS.values():
        mod.register()


__all__ = [
    "se_gate", "se_gate_reference", "cubs_channel", "cubs_channel_reference", "cubs_spatial",
    "cubs_spatial_reference", "ms_loss", "ms_loss_reference", "FUSED_OPS", "register_all"]
