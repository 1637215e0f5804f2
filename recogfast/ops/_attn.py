"""Shared pieces of the CUBS ops: the rank-one softmax attention f_i = sum_j softmax_j(q_i k_j) v_j
written in PyTorch (the definition the kernels are tested against), argument checks and helpers."""

from __future__ import annotations

import torch


def rank_one_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """f[b, i] = sum_j softmax_j(q[b, i] * k[b, j]) * v[b, j], building S = q kᵀ as the SPEC defines it.

    This materialises the [B, L, L] matrix on purpose: it is the literal definition, used to check the
    fused kernels, which never build it."""
    s = q.unsqueeze(-1) * k.unsqueeze(-2)  # [B, L, L]
    a = torch.softmax(s, dim=-1)
    return torch.matmul(a, v.unsqueeze(-1)).squeeze(-1)


def check_tensor(op: str, name: str, t, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise RuntimeError(f"{op}: {name} must be a {ndim}-D tensor, got a {t.dim()}-D tensor of shape {list(t.shape)}")
    if not t.is_floating_point():
        raise RuntimeError(
            f"{op}: {name} must be a floating-point tensor (float32, float64, float16 or bfloat16), got {t.dtype}"
        )


def check_shape(op: str, name: str, t: torch.Tensor, want: tuple, what: str) -> None:
    if tuple(t.shape) != tuple(want):
        raise RuntimeError(f"{op}: {name} must have shape {what} = {list(want)}, got {list(t.shape)}")


def check_like(op: str, name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    if t.device != x.device:
        raise RuntimeError(f"{op}: {name} is on {t.device} but x is on {x.device}; move all arguments to one device")
    if t.dtype != x.dtype:
        raise RuntimeError(
            f"{op}: {name} has dtype {t.dtype} but x has dtype {x.dtype}; cast the weights to the input dtype"
        )


def memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
