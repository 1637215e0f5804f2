"""The rank-one softmax attention both CUBS blocks share, f_i = sum_j softmax_j(q_i k_j) v_j, written in
PyTorch: the definition the kernels are tested against."""

from __future__ import annotations

import torch


def rank_one_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """f[b, i] = sum_j softmax_j(q[b, i] * k[b, j]) * v[b, j], building S = q kᵀ as docs/SPEC.md defines it.

    This materialises the [B, L, L] matrix on purpose: it is the literal definition, used to check the
    fused kernels, which never build it."""
    s = q.unsqueeze(-1) * k.unsqueeze(-2)  # [B, L, L]
    a = torch.softmax(s, dim=-1)
    return torch.matmul(a, v.unsqueeze(-1)).squeeze(-1)
