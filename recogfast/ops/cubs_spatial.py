"""CUBS Block 2, the spatial similarity gate (../shared/SPEC.md "CUBS Block 2"):

    q_p = wq · x[:, p] + bq, likewise k, v (1×1 convolutions C -> 1, [B, HW])
    f_i = sum_j softmax_j(q_i k_j) v_j;  y = x * sigmoid(f) (one gate per pixel)

``torch.ops.recogfast.cubs_spatial`` never builds the [B, HW, HW] similarity matrix: S = q kᵀ is rank
one, so row i's maximum is q_i·max(k) (q_i >= 0) or q_i·min(k), and one pass over j gives the softmax
sums. The backward op recomputes the row sums, then makes one pass over i per column j for dk and dv:
O(B·HW) memory, B·(HW)² exponentials a pass.
"""

from __future__ import annotations

import torch

from recogfast import _impl
from recogfast.ops import _double_backward
from recogfast.ops._attn import check_like, check_shape, check_tensor, memory_format, rank_one_attention_reference

OP = "recogfast::cubs_spatial"
ARG_NAMES = ("x", "wq", "bq", "wk", "bk", "wv", "bv")


def cubs_spatial_reference(x, wq, bq, wk, bk, wv, bv) -> torch.Tensor:
    """The pure-PyTorch definition the kernels are tested against (builds the [B, HW, HW] matrix)."""
    B, C, H, W = x.shape
    xf = x.reshape(B, C, H * W)
    q = torch.einsum("bcp,c->bp", xf, wq) + bq
    k = torch.einsum("bcp,c->bp", xf, wk) + bk
    v = torch.einsum("bcp,c->bp", xf, wv) + bv
    f = rank_one_attention_reference(q, k, v)
    return x * torch.sigmoid(f).reshape(B, 1, H, W)


def check_args(x, wq, bq, wk, bk, wv, bv) -> None:
    """The same checks and messages as the C++ launchers (csrc/ops/cubs_spatial.h)."""
    args = (x, wq, bq, wk, bk, wv, bv)
    for name, t, ndim in zip(ARG_NAMES, args, (4, 1, 1, 1, 1, 1, 1)):
        check_tensor(OP, name, t, ndim)
    C = x.shape[1]
    for name, t in zip(ARG_NAMES[1:], args[1:]):
        if name.startswith("w"):
            check_shape(OP, name, t, (C,), "[C] with C = x.size(1)")
        else:
            check_shape(OP, name, t, (1,), "[1]")
    for name, t in zip(ARG_NAMES[1:], args[1:]):
        check_like(OP, name, t, x)


def cubs_spatial(x, wq, bq, wk, bk, wv, bv, *, impl: str = "auto") -> torch.Tensor:
    """CUBS Block 2 of a [B, C, H, W] activation: wq/wk/wv [C], bq/bk/bv [1], all of x's dtype.
    The output has x's memory format. ``impl`` picks the fused kernel or the reference as
    `recogfast._impl` describes."""
    if _impl.use_fused("cubs_spatial", impl, x):
        return torch.ops.recogfast.cubs_spatial(x, wq, bq, wk, bk, wv, bv)
    check_args(x, wq, bq, wk, bk, wv, bv)
    return cubs_spatial_reference(x, wq, bq, wk, bk, wv, bv)


def _fake(x, wq, bq, wk, bk, wv, bv):
    check_args(x, wq, bq, wk, bk, wv, bv)
    return torch.empty_like(x, memory_format=memory_format(x))


def _fake_backward(grad_y, x, wq, bq, wk, bk, wv, bv):
    check_args(x, wq, bq, wk, bk, wv, bv)
    gx = torch.empty_like(x, memory_format=memory_format(x))
    return (gx, *(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (wq, bq, wk, bk, wv, bv)))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_y):
    return torch.ops.recogfast.cubs_spatial_backward(grad_y, *ctx.saved_tensors)


_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    torch.library.register_fake("recogfast::cubs_spatial")(_fake)
    torch.library.register_fake("recogfast::cubs_spatial_backward")(_fake_backward)
    torch.library.register_autograd("recogfast::cubs_spatial", _backward, setup_context=_setup_context)
    _double_backward.refuse("cubs_spatial")
    _registered = True
