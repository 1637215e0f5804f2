"""Fused ops. Each op has one module here holding its Python wrapper, its pure-PyTorch reference and its
contract (recogfast/ops/_spec.py: argument checks, fake kernels, autograd); the kernels live in csrc/ops/.

Where to find an op, e.g. ``cubs_spatial``: schema and C++ API csrc/ops/cubs_spatial.{h,cpp}; kernels
csrc/ops/cpu/cubs_spatial_kernel.cpp and csrc/ops/cuda/cubs_spatial_kernel.cu; wrapper, reference and spec
recogfast/ops/cubs_spatial.py; tests tests/test_cubs.py (and the shared tables in tests/test_op_contracts.py);
benchmark benchmarks/bench_cubs.py; the math docs/SPEC.md.
"""

from __future__ import annotations

from recogfast.ops import cubs_channel as _cubs_channel_mod
from recogfast.ops import cubs_spatial as _cubs_spatial_mod
from recogfast.ops import ms_loss as _ms_loss_mod
from recogfast.ops import se_gate as _se_gate_mod
from recogfast.ops.cubs_channel import cubs_channel, cubs_channel_reference
from recogfast.ops.cubs_spatial import cubs_spatial, cubs_spatial_reference
from recogfast.ops.ms_loss import ms_loss, ms_loss_reference
from recogfast.ops.se_gate import se_gate, se_gate_reference

# Every fused op by schema name (`python -m recogfast.info`, the demo and the engine list them).
GATE_OPS = {"se_gate": _se_gate_mod.SPEC, "cubs_channel": _cubs_channel_mod.SPEC,
            "cubs_spatial": _cubs_spatial_mod.SPEC}
FUSED_OPS = (*GATE_OPS, "ms_loss")

_registered = False


def register_all() -> None:
    """Register fake kernels and autograd of every op (idempotent; called by `import recogfast`)."""
    global _registered
    if _registered:
        return
    for spec in GATE_OPS.values():
        spec.register()
    _ms_loss_mod.register()
    _registered = True


__all__ = [
    "se_gate", "se_gate_reference", "cubs_channel", "cubs_channel_reference", "cubs_spatial",
    "cubs_spatial_reference", "ms_loss", "ms_loss_reference"]
