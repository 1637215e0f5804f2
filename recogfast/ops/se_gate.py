"""SE gate: y = x * sigmoid(W2 · relu(W1 · mean_hw(x) + b1) + b2)  (docs/SPEC.md "SE gate").

``torch.ops.recogfast.se_gate`` runs pooling, the MLP and the scaling in one op (csrc/ops/cpu,
csrc/ops/cuda); its backward op recomputes the pooled vector and the gate from x instead of saving
them, so autograd keeps only the op's inputs. The contract (checks, fake kernels, autograd) comes from
`SPEC` (recogfast/ops/_spec.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recogfast.ops._spec import GateOp, Weight, mixed_reference


@mixed_reference
def se_gate_reference(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor):
    """The pure-PyTorch definition the kernels are tested against."""
    g = x.mean(dim=(2, 3))
    h = torch.relu(F.linear(g, w1, b1))
    s = torch.sigmoid(F.linear(h, w2, b2))
    return x * s[:, :, None, None]


SPEC = GateOp(
    name="se_gate",
    weights=(
        Weight("w1", 2, lambda C, R: (R, C), "[R, C] with C = x.size(1)"),
        Weight("b1", 1, lambda C, R: (R,), "[R] with R = w1.size(0)"),
        Weight("w2", 2, lambda C, R: (C, R), "[C, R] with C = x.size(1), R = w1.size(0)"),
        Weight("b2", 1, lambda C, R: (C,), "[C] with C = x.size(1)"),
    ),
    reference=se_gate_reference,
    hidden="w1",
    hidden_letter="R",
)


def se_gate(x, w1, b1, w2, b2, *, impl: str = "auto") -> torch.Tensor:
    """SE gate of a [B, C, H, W] activation; w1 [R, C], b1 [R], w2 [C, R], b2 [C], all of x's dtype, or all
    float32 with a float16 / bfloat16 x (docs/SPEC.md "Dtypes").

    The output has x's memory format (contiguous or channels_last). ``impl`` picks the fused kernel or
    the reference as `recogfast.dispatch` describes.
    """
    return SPEC.call(impl, x, w1, b1, w2, b2)
