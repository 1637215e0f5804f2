"""CUBS Block 1, the channel similarity gate (../shared/SPEC.md "CUBS Block 1"):

    g = mean_hw(x); q, k, v = Wq g + bq, Wk g + bk, Wv g + bv            ([B, N])
    f_i = sum_j softmax_j(q_i k_j) v_j;  y = x * sigmoid(Wo f + bo + g)

``torch.ops.recogfast.cubs_channel`` pools, runs the three projections, the attention, the output
projection and the scaling in one op without the [B, N, N] similarity matrix (S = q kᵀ is rank one,
so a stable softmax row needs only q_i, min k and max k); its backward op recomputes everything from x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recogfast import _impl
from recogfast.ops import _double_backward
from recogfast.ops._attn import check_like, check_shape, check_tensor, memory_format, rank_one_attention_reference

OP = "recogfast::cubs_channel"
ARG_NAMES = ("x", "wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo")


def cubs_channel_reference(x, wq, bq, wk, bk, wv, bv, wo, bo) -> torch.Tensor:
    """The pure-PyTorch definition the kernels are tested against (builds the [B, N, N] matrix)."""
    g = x.mean(dim=(2, 3))
    q, k, v = F.linear(g, wq, bq), F.linear(g, wk, bk), F.linear(g, wv, bv)
    f = rank_one_attention_reference(q, k, v)
    z = F.linear(f, wo, bo) + g
    return x * torch.sigmoid(z)[:, :, None, None]


def check_args(x, wq, bq, wk, bk, wv, bv, wo, bo) -> int:
    """The same checks and messages as the C++ launchers (csrc/ops/cubs_channel.h); returns N."""
    args = (x, wq, bq, wk, bk, wv, bv, wo, bo)
    for name, t, ndim in zip(ARG_NAMES, args, (4, 2, 1, 2, 1, 2, 1, 2, 1)):
        check_tensor(OP, name, t, ndim)
    C, N = x.shape[1], wq.shape[0]
    if N < 1:
        raise RuntimeError(f"{OP}: wq must have at least one row (N >= 1), got shape {list(wq.shape)}")
    for name, t, want, what in (
        ("wq", wq, (N, C), "[N, C] with C = x.size(1)"),
        ("bq", bq, (N,), "[N] with N = wq.size(0)"),
        ("wk", wk, (N, C), "[N, C] with C = x.size(1), N = wq.size(0)"),
        ("bk", bk, (N,), "[N] with N = wq.size(0)"),
        ("wv", wv, (N, C), "[N, C] with C = x.size(1), N = wq.size(0)"),
        ("bv", bv, (N,), "[N] with N = wq.size(0)"),
        ("wo", wo, (C, N), "[C, N] with C = x.size(1), N = wq.size(0)"),
        ("bo", bo, (C,), "[C] with C = x.size(1)"),
    ):
        check_shape(OP, name, t, want, what)
    for name, t in zip(ARG_NAMES[1:], args[1:]):
        check_like(OP, name, t, x)
    return N


def cubs_channel(x, wq, bq, wk, bk, wv, bv, wo, bo, *, impl: str = "auto") -> torch.Tensor:
    """CUBS Block 1 of a [B, C, H, W] activation: wq/wk/wv [N, C], bq/bk/bv [N], wo [C, N], bo [C],
    all of x's dtype. The output has x's memory format. ``impl`` picks the fused kernel or the reference
    as `recogfast._impl` describes."""
    if _impl.use_fused("cubs_channel", impl, x):
        return torch.ops.recogfast.cubs_channel(x, wq, bq, wk, bk, wv, bv, wo, bo)
    check_args(x, wq, bq, wk, bk, wv, bv, wo, bo)
    return cubs_channel_reference(x, wq, bq, wk, bk, wv, bv, wo, bo)


def _fake(x, wq, bq, wk, bk, wv, bv, wo, bo):
    check_args(x, wq, bq, wk, bk, wv, bv, wo, bo)
    return torch.empty_like(x, memory_format=memory_format(x))


def _fake_backward(grad_y, x, wq, bq, wk, bk, wv, bv, wo, bo):
    check_args(x, wq, bq, wk, bk, wv, bv, wo, bo)
    gx = torch.empty_like(x, memory_format=memory_format(x))
    return (gx, *(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (wq, bq, wk, bk, wv, bv, wo, bo)))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_y):
    return torch.ops.recogfast.cubs_channel_backward(grad_y, *ctx.saved_tensors)


_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    torch.library.register_fake("recogfast::cubs_channel")(_fake)
    torch.library.register_fake("recogfast::cubs_channel_backward")(_fake_backward)
    torch.library.register_autograd("recogfast::cubs_channel", _backward, setup_context=_setup_context)
    _double_backward.refuse("cubs_channel")
    _registered = True
