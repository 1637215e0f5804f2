"""CUBS Block 1, the channel similarity gate (docs/SPEC.md "CUBS Block 1"):

    g = mean_hw(x); q, k, v = Wq g + bq, Wk g + bk, Wv g + bv            ([B, N])
    f_i = sum_j softmax_j(q_i k_j) v_j;  y = x * sigmoid(Wo f + bo + g)

``torch.ops.recogfast.cubs_channel`` pools, runs the three projections, the attention, the output
projection and the scaling in one op without the [B, N, N] similarity matrix (S = q kᵀ is rank one,
so a stable softmax row needs only q_i, min k and max k); its backward op recomputes everything from x.
The contract (checks, fake kernels, autograd) comes from `SPEC` (recogfast/ops/_spec.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recogfast.ops._attn import rank_one_attention_reference
from recogfast.ops._spec import GateOp, Weight, mixed_reference


@mixed_reference
def cubs_channel_reference(x, wq, bq, wk, bk, wv, bv, wo, bo) -> torch.Tensor:
    """The pure-PyTorch definition the kernels are tested against (builds the [B, N, N] matrix)."""
    g = x.mean(dim=(2, 3))
    q, k, v = F.linear(g, wq, bq), F.linear(g, wk, bk), F.linear(g, wv, bv)
    f = rank_one_attention_reference(q, k, v)
    z = F.linear(f, wo, bo) + g
    return x * torch.sigmoid(z)[:, :, None, None]


_NC = "[N, C] with C = x.size(1), N = wq.size(0)"
SPEC = GateOp(
    name="cubs_channel",
    weights=(
        Weight("wq", 2, lambda C, N: (N, C), "[N, C] with C = x.size(1)"),
        Weight("bq", 1, lambda C, N: (N,), "[N] with N = wq.size(0)"),
        Weight("wk", 2, lambda C, N: (N, C), _NC),
        Weight("bk", 1, lambda C, N: (N,), "[N] with N = wq.size(0)"),
        Weight("wv", 2, lambda C, N: (N, C), _NC),
        Weight("bv", 1, lambda C, N: (N,), "[N] with N = wq.size(0)"),
        Weight("wo", 2, lambda C, N: (C, N), "[C, N] with C = x.size(1), N = wq.size(0)"),
        Weight("bo", 1, lambda C, N: (C,), "[C] with C = x.size(1)"),
    ),
    reference=cubs_channel_reference,
    hidden="wq",
    hidden_letter="N",
)


def cubs_channel(x, wq, bq, wk, bk, wv, bv, wo, bo, *, impl: str = "auto") -> torch.Tensor:
    """CUBS Block 1 of a [B, C, H, W] activation: wq/wk/wv [N, C], bq/bk/bv [N], wo [C, N], bo [C],
    all of x's dtype, or all float32 with a float16 / bfloat16 x (docs/SPEC.md "Dtypes"). The output has x's
    memory format. ``impl`` picks the fused kernel or the reference as `recogfast.dispatch` describes."""
    return SPEC.call(impl, x, wq, bq, wk, bk, wv, bv, wo, bo)
