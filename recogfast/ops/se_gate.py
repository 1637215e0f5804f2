"""SE gate: y = x * sigmoid(W2 · relu(W1 · mean_hw(x) + b1) + b2)  (../shared/SPEC.md "SE gate").

``torch.ops.recogfast.se_gate`` runs pooling, the MLP and the scaling in one op (csrc/ops/cpu,
csrc/ops/cuda); its backward op recomputes the pooled vector and the gate from x instead of saving
them, so autograd keeps only the op's inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recogfast import _impl
from recogfast.ops import _double_backward

OP = "recogfast::se_gate"


def se_gate_reference(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor):
    """The pure-PyTorch definition the kernels are tested against."""
    g = x.mean(dim=(2, 3))
    h = torch.relu(F.linear(g, w1, b1))
    s = torch.sigmoid(F.linear(h, w2, b2))
    return x * s[:, :, None, None]


def check_args(x, w1, b1, w2, b2) -> None:
    """The same checks and messages as the C++ launchers (csrc/ops/se_gate.h), for the fake kernel and the
    reference path, so a bad call fails the same way whichever implementation runs."""
    for name, t, ndim in (("x", x, 4), ("w1", w1, 2), ("b1", b1, 1), ("w2", w2, 2), ("b2", b2, 1)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() != ndim:
            raise RuntimeError(f"{OP}: {name} must be a {ndim}-D tensor, got a {t.dim()}-D tensor of shape {list(t.shape)}")
        if not t.is_floating_point():
            raise RuntimeError(f"{OP}: {name} must be a floating-point tensor (float32, float64, float16 or bfloat16), got {t.dtype}")
    C, R = x.shape[1], w1.shape[0]
    if R < 1:
        raise RuntimeError(f"{OP}: w1 must have at least one row (R >= 1), got shape {list(w1.shape)}")
    for name, t, want, what in (
        ("w1", w1, (R, C), "[R, C] with C = x.size(1)"),
        ("b1", b1, (R,), "[R] with R = w1.size(0)"),
        ("w2", w2, (C, R), "[C, R] with C = x.size(1), R = w1.size(0)"),
        ("b2", b2, (C,), "[C] with C = x.size(1)"),
    ):
        if tuple(t.shape) != want:
            raise RuntimeError(f"{OP}: {name} must have shape {what} = {list(want)}, got {list(t.shape)}")
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if t.device != x.device:
            raise RuntimeError(f"{OP}: {name} is on {t.device} but x is on {x.device}; move all arguments to one device")
        if t.dtype != x.dtype:
            raise RuntimeError(f"{OP}: {name} has dtype {t.dtype} but x has dtype {x.dtype}; cast the weights to the input dtype")


def se_gate(x, w1, b1, w2, b2, *, impl: str = "auto") -> torch.Tensor:
    """SE gate of a [B, C, H, W] activation; w1 [R, C], b1 [R], w2 [C, R], b2 [C], all of x's dtype.

    The output has x's memory format (contiguous or channels_last). ``impl`` picks the fused kernel or
    the reference as `recogfast._impl` describes.
    """
    if _impl.use_fused("se_gate", impl, x):
        return torch.ops.recogfast.se_gate(x, w1, b1, w2, b2)
    check_args(x, w1, b1, w2, b2)
    return se_gate_reference(x, w1, b1, w2, b2)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _fake(x, w1, b1, w2, b2):
    check_args(x, w1, b1, w2, b2)
    return torch.empty_like(x, memory_format=_memory_format(x))


def _fake_backward(grad_y, x, w1, b1, w2, b2):
    check_args(x, w1, b1, w2, b2)
    gx = torch.empty_like(x, memory_format=_memory_format(x))
    return gx, *(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (w1, b1, w2, b2))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_y):
    return torch.ops.recogfast.se_gate_backward(grad_y, *ctx.saved_tensors)


_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    torch.library.register_fake("recogfast::se_gate")(_fake)
    torch.library.register_fake("recogfast::se_gate_backward")(_fake_backward)
    torch.library.register_autograd("recogfast::se_gate", _backward, setup_context=_setup_context)
    _double_backward.refuse("se_gate")
    _registered = True
