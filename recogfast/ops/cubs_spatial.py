"""CUBS Block 2, the spatial similarity gate (docs/SPEC.md "CUBS Block 2"):

    q_p = wq · x[:, p] + bq, likewise k, v (1×1 convolutions C -> 1, [B, HW])
    f_i = sum_j softmax_j(q_i k_j) v_j;  y = x * sigmoid(f) (one gate per pixel)

``torch.ops.recogfast.cubs_spatial`` never builds the [B, HW, HW] similarity matrix: S = q kᵀ is rank
one, so row i's maximum is q_i·max(k) (q_i >= 0) or q_i·min(k), and one pass over j gives the softmax
sums. When a gradient will be needed the wrapper and the modules call the training forward
``_cubs_spatial_forward_train``, whose row pass also saves per row f_i, 1 / l_i and the covariance factor of
dq_i ([3, B, HW]); the backward ``_cubs_spatial_backward_saved`` then makes only the column pass over i per
column j for dk and dv: two passes a step, O(B·HW) memory, B·(HW)² exponentials a pass. (A direct call of the
registered op differentiates through ``_cubs_spatial_backward``, which recomputes the row sums: three passes.) The contract (checks, fake kernels, autograd) comes from
`SPEC` (recogfast/ops/_spec.py).
"""

from __future__ import annotations

import torch

from recogfast.ops._attn import rank_one_attention_reference
from recogfast.ops._spec import GateOp, Weight, mixed_reference


@mixed_reference
def cubs_spatial_reference(x, wq, bq, wk, bk, wv, bv) -> torch.Tensor:
    """The pure-PyTorch definition the kernels are tested against (builds the [B, HW, HW] matrix)."""
    B, C, H, W = x.shape
    xf = x.reshape(B, C, H * W)
    q = torch.einsum("bcp,c->bp", xf, wq) + bq
    k = torch.einsum("bcp,c->bp", xf, wk) + bk
    v = torch.einsum("bcp,c->bp", xf, wv) + bv
    f = rank_one_attention_reference(q, k, v)
    return x * torch.sigmoid(f).reshape(B, 1, H, W)


def _conv(name):
    return Weight(name, 1, lambda C, _: (C,), "[C] with C = x.size(1)")


def _bias(name):
    return Weight(name, 1, lambda C, _: (1,), "[1]")


def _stats(x):
    """The training forward's saved statistics (csrc/ops/cubs_spatial.h): [3, B, H·W], float32 (float64 for float64)."""
    dtype = torch.float64 if x.dtype is torch.float64 else torch.float32
    return x.new_empty((3, x.shape[0], x.shape[2] * x.shape[3]), dtype=dtype)


SPEC = GateOp(
    name="cubs_spatial",
    weights=(_conv("wq"), _bias("bq"), _conv("wk"), _bias("bk"), _conv("wv"), _bias("bv")),
    reference=cubs_spatial_reference,
    stats=_stats,
)


def cubs_spatial(x, wq, bq, wk, bk, wv, bv, *, impl: str = "auto") -> torch.Tensor:
    """CUBS Block 2 of a [B, C, H, W] activation: wq/wk/wv [C], bq/bk/bv [1], all of x's dtype, or all
    float32 with a float16 / bfloat16 x (docs/SPEC.md "Dtypes").
    The output has x's memory format. ``impl`` picks the fused kernel or the reference as
    `recogfast.dispatch` describes."""
    return SPEC.call(impl, x, wq, bq, wk, bk, wv, bv)
