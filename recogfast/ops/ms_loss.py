"""Multi-Similarity loss with hard-pair mining (docs/SPEC.md "Loss"; Wang et al., CVPR 2019).

For L2-normalised embeddings e [B, D] and candidates c = batch ∪ reference set [M, D] (M = B + R),
with S = e·cᵀ and, per anchor i, mined positives P_i and negatives N_i:

    L = (1/B) Σ_i (1/α)·log[1 + Σ_{p∈P_i} exp(−α(S_ip − λ))] + (1/β)·log[1 + Σ_{n∈N_i} exp(β(S_in − λ))]

Mining: ``"ms"`` keeps the negatives with S_in + ε > min_p S_ip and the positives with
S_ip − ε < max_n S_in (pytorch-metric-learning's MultiSimilarityMiner; an anchor without a positive or
without a negative mines nothing), ``"all"`` keeps every pair, ``"hardest"`` keeps the hardest positive
(lowest S) and hardest negative (highest S) of each anchor that has both.

``torch.ops.recogfast.ms_loss`` (csrc/ops/ms_loss.cpp) never holds the B×M similarity matrix: it
reduces tiles of it to per-anchor statistics — the mining thresholds and the two log-sum-exps, kept
with a running maximum so β = 50 cannot overflow — which it returns beside the loss. Its backward op
recomputes the tiles; dL/dS_ij is a per-pair weight computed from those statistics, and the
embedding gradients are sums of weights times embeddings, accumulated tile by tile. On the CPU, when the
reference set needs no gradient (``cache_ref_grad``, set by `ms_loss`), the forward pass also gathers the
reference set's share of the anchors' gradient so that the backward pass skips those tiles.

On CUDA two paths compute the same op: on sm_80+ for bf16/fp16/fp32 the flash kernels (tensor-core tiles of S
consumed in registers, csrc/ops/cuda/ms_loss_flash.cuh; fp32: TF32 products where allowed, else 3xTF32 with
fp32-level error), elsewhere the tiles path
(cuBLAS products, per-row kernels). ``RECOGFAST_MS_LOSS_PATH`` = auto / flash / tiles picks one ("auto" keeps the
tiles path until a GPU run has cross-checked the flash kernels: recogfast.dispatch.MS_FLASH_BY_DEFAULT);
`recogfast.dispatch.ms_loss_path` says which a call takes. The op's last argument ``allow_tf32`` carries torch's
TF32 setting for matmuls (`recogfast.dispatch.tf32_matmul_allowed`) to the kernel (the stable ABI cannot read it); the
backward op gets the forward's value, so both passes take the same path.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from recogfast import dispatch
from recogfast.ops._spec import check_device, check_tensor, qualname, register_autograd

OP = qualname("ms_loss")
MINING = ("ms", "all", "hardest")
NORM_EPS = 1e-12  # as torch.nn.functional.normalize (and so pytorch-metric-learning's CosineSimilarity)
# Columns of the per-anchor statistics the fused op returns beside the loss.
STATS = ("log_z_pos", "log_z_neg", "min_pos", "max_neg")


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def ms_loss_reference(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
    mining: str = "ms",
    ref_embeddings: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The dense pure-PyTorch definition the kernels are tested against (it builds the B×M matrix).

    Computes in float32 for fp16/bf16 inputs (float64 for float64) and returns a 0-dim tensor of the
    embeddings' dtype.
    """
    out_dtype = embeddings.dtype
    acc = _opmath(out_dtype)
    e = F.normalize(embeddings.to(acc), dim=1, eps=NORM_EPS)
    cand, cand_labels = e, labels
    if ref_embeddings is not None:
        cand = torch.cat([e, F.normalize(ref_embeddings.to(acc), dim=1, eps=NORM_EPS)])
        cand_labels = torch.cat([labels, ref_labels.to(labels.dtype)])
    B, M = e.shape[0], cand.shape[0]
    if B == 0:
        return (embeddings.sum() * 0).to(out_dtype)
    S = e @ cand.T
    same = labels[:, None] == cand_labels[None, :]
    # A comparison, not fill_diagonal_ on a slice: torch.compile cannot functionalize that mutation (as_strided view).
    not_self = torch.arange(B, device=e.device)[:, None] != torch.arange(M, device=e.device)[None, :]
    pos = same & not_self
    neg = ~same
    Sd = S.detach()
    inf = torch.tensor(float("inf"), dtype=acc, device=e.device)
    min_pos, arg_pos = torch.where(pos, Sd, inf).min(dim=1)
    max_neg, arg_neg = torch.where(neg, Sd, -inf).max(dim=1)
    if mining == "ms":
        # The same comparisons as MultiSimilarityMiner; ±inf thresholds mine nothing.
        P = pos & (Sd - epsilon < max_neg[:, None])
        N = neg & (Sd + epsilon > min_pos[:, None])
    elif mining == "all":
        P, N = pos, neg
    elif mining == "hardest":
        has_both = pos.any(1) & neg.any(1)
        rows = torch.arange(B, device=e.device)
        P = torch.zeros_like(pos)
        N = torch.zeros_like(neg)
        P[rows[has_both], arg_pos[has_both]] = True
        N[rows[has_both], arg_neg[has_both]] = True
    else:
        raise ValueError(f"{OP}: mining must be one of {', '.join(map(repr, MINING))}, got {mining!r}")
    zero = torch.zeros(B, 1, dtype=acc, device=e.device)
    pos_x = torch.where(P, -alpha * (S - base), -inf)
    neg_x = torch.where(N, beta * (S - base), -inf)
    # log(1 + Σ exp(x)) as a logsumexp with a zero appended: stable for β = 50 and S near 1.
    pos_term = torch.logsumexp(torch.cat([pos_x, zero], 1), 1) / alpha
    neg_term = torch.logsumexp(torch.cat([neg_x, zero], 1), 1) / beta
    return (pos_term + neg_term).mean().to(out_dtype)


def _is_int(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def check_args(embeddings, labels, ref_embeddings, ref_labels, alpha, beta, base, epsilon, mining, *,
               check_values: bool = True) -> None:
    """The same checks and messages as the C++ launchers (csrc/ops/ms_loss.h)."""
    for name, t in (("embeddings", embeddings), ("ref_embeddings", ref_embeddings)):
        if t is not None:
            check_tensor("ms_loss", name, t, 2, " [N, D]")
    for name, t, rows_of in (("labels", labels, "embeddings"), ("ref_labels", ref_labels, "ref_embeddings")):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 1 or not _is_int(t):
            raise RuntimeError(f"{OP}: {name} must be a 1-D integer tensor, got a {t.dim()}-D tensor of dtype {t.dtype}")
    if (ref_embeddings is None) != (ref_labels is None):
        raise RuntimeError(f"{OP}: ref_embeddings and ref_labels must be given together")
    if labels.shape[0] != embeddings.shape[0]:
        raise RuntimeError(f"{OP}: labels must have one entry per row of embeddings: labels has {labels.shape[0]}, "
                           f"embeddings has {embeddings.shape[0]} rows")
    check_device("ms_loss", "labels", labels, "embeddings", embeddings)
    if ref_embeddings is not None:
        if ref_embeddings.shape[1] != embeddings.shape[1]:
            raise RuntimeError(f"{OP}: ref_embeddings must have D = embeddings.size(1) = {embeddings.shape[1]} columns, "
                               f"got shape {list(ref_embeddings.shape)}")
        if ref_labels.shape[0] != ref_embeddings.shape[0]:
            raise RuntimeError(f"{OP}: ref_labels must have one entry per row of ref_embeddings: ref_labels has "
                               f"{ref_labels.shape[0]}, ref_embeddings has {ref_embeddings.shape[0]} rows")
        for name, t in (("ref_embeddings", ref_embeddings), ("ref_labels", ref_labels)):
            check_device("ms_loss", name, t, "embeddings", embeddings)
        if ref_embeddings.dtype != embeddings.dtype:
            raise RuntimeError(f"{OP}: ref_embeddings has dtype {ref_embeddings.dtype} but embeddings has dtype "
                               f"{embeddings.dtype}; cast the reference set to the embeddings' dtype")
    if not alpha > 0:
        raise RuntimeError(f"{OP}: alpha must be > 0, got {alpha:g}")
    if not beta > 0:
        raise RuntimeError(f"{OP}: beta must be > 0, got {beta:g}")
    if not epsilon >= 0:
        raise RuntimeError(f"{OP}: epsilon must be >= 0, got {epsilon:g}")
    if mining not in MINING:
        raise RuntimeError(f"{OP}: mining must be one of {', '.join(map(repr, MINING))}, got {mining!r}")
    if check_values:
        for name, t in (("embeddings", embeddings), ("ref_embeddings", ref_embeddings)):
            if t is not None and t.numel() and not bool(torch.isfinite(t).all()):
                raise RuntimeError(f"{OP}: {name} contains NaN or inf")


def ms_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
    mining: str = "ms",
    ref_embeddings: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Multi-Similarity loss of embeddings [B, D] with integer labels [B] (a 0-dim tensor).

    ``ref_embeddings`` [R, D] / ``ref_labels`` [R] add candidates (a cross-batch memory, other ranks'
    embeddings); anchors stay the B rows of ``embeddings``. The gradient flows to ``embeddings`` and,
    where it requires grad, to ``ref_embeddings``. ``impl`` picks the fused kernel or the reference as
    `recogfast.dispatch` describes.

    NaN or inf in the inputs: the CPU kernel and the reference raise "... contains NaN or inf". The CUDA
    kernel decides on the device, without a host sync, and returns a NaN loss (and NaN gradients);
    ``RECOGFAST_CHECK_FINITE=1`` makes it raise the same error as the CPU, at the cost of one sync a call.
    """
    alpha, beta, base, epsilon = float(alpha), float(beta), float(base), float(epsilon)
    if isinstance(embeddings, torch.Tensor) and dispatch.use_fused("ms_loss", impl, embeddings):
        # On the CPU, a reference set that needs no gradient (a cross-batch memory) gets its share of the
        # anchors' gradient gathered in the forward pass instead of recomputed in the backward pass.
        cache = (torch.is_grad_enabled() and embeddings.requires_grad and ref_embeddings is not None
                 and not ref_embeddings.requires_grad)
        if embeddings.device.type != "cpu" and _check_finite():
            check_args(embeddings, labels, ref_embeddings, ref_labels, alpha, beta, base, epsilon, mining)
        # allow_tf32: torch's setting for the CUDA kernel's fp32 flash path (the stable ABI cannot read it).
        tf32 = embeddings.device.type == "cuda" and dispatch.tf32_matmul_allowed()
        return torch.ops.recogfast.ms_loss(embeddings, labels, ref_embeddings, ref_labels, alpha, beta, base,
                                           epsilon, mining, cache, tf32)[0]
    check_args(embeddings, labels, ref_embeddings, ref_labels, alpha, beta, base, epsilon, mining)
    return ms_loss_reference(embeddings, labels, alpha, beta, base, epsilon, mining, ref_embeddings, ref_labels)


def _check_finite() -> bool:
    """RECOGFAST_CHECK_FINITE=1: raise on NaN/inf inputs on CUDA too (one device-to-host sync a call)."""
    return os.environ.get("RECOGFAST_CHECK_FINITE", "0") not in ("", "0")


def caches_ref_grad(embeddings, ref_embeddings, mining, cache_ref_grad) -> bool:
    """Whether the op fills ref_grad_cache (csrc/ops/ms_loss.h: ms_loss_caches_ref_grad)."""
    return bool(cache_ref_grad and embeddings.device.type == "cpu" and ref_embeddings is not None
                and ref_embeddings.shape[0] > 0 and mining != "hardest")


def _fake(embeddings, labels, ref_embeddings, ref_labels, alpha, beta, base, epsilon, mining, cache_ref_grad=False,
          allow_tf32=False):
    check_args(embeddings, labels, ref_embeddings, ref_labels, alpha, beta, base, epsilon, mining, check_values=False)
    B = embeddings.shape[0]
    acc = _opmath(embeddings.dtype)
    loss = embeddings.new_empty(())
    stats = embeddings.new_empty((B, len(STATS)), dtype=acc)
    hard_idx = embeddings.new_empty((B, 2), dtype=torch.int64)
    cached = caches_ref_grad(embeddings, ref_embeddings, mining, cache_ref_grad)
    cache = embeddings.new_empty(tuple(embeddings.shape) if cached else (0,), dtype=acc)
    return loss, stats, hard_idx, cache


def _fake_backward(grad_loss, embeddings, labels, ref_embeddings, ref_labels, stats, hard_idx, ref_grad_cache, alpha,
                   beta, base, epsilon, mining, ref_requires_grad, allow_tf32=False):
    check_args(embeddings, labels, ref_embeddings, ref_labels, alpha, beta, base, epsilon, mining, check_values=False)
    # The kernels return contiguous gradients whatever the inputs' strides (torch.compile trusts these).
    contiguous = torch.contiguous_format
    grad_ref = (torch.empty_like(ref_embeddings, memory_format=contiguous)
                if ref_requires_grad and ref_embeddings is not None else embeddings.new_empty((0,)))
    return torch.empty_like(embeddings, memory_format=contiguous), grad_ref


def _setup_context(ctx, inputs, output):
    embeddings, labels, ref_embeddings, ref_labels, alpha, beta, base, epsilon, mining = inputs[:9]
    _, stats, hard_idx, cache = output
    ctx.params = (alpha, beta, base, epsilon, mining)
    ctx.allow_tf32 = bool(inputs[10]) if len(inputs) > 10 else False  # the backward takes the forward's path
    ctx.has_ref = ref_embeddings is not None
    ctx.save_for_backward(embeddings, labels, ref_embeddings, ref_labels, stats, hard_idx, cache)
    ctx.mark_non_differentiable(stats, hard_idx, cache)


def _backward(ctx, grad_loss, _grad_stats, _grad_hard_idx, _grad_cache):
    embeddings, labels, ref_embeddings, ref_labels, stats, hard_idx, cache = ctx.saved_tensors
    ref_grad = ctx.has_ref and ctx.needs_input_grad[2]
    grad_e, grad_r = torch.ops.recogfast._ms_loss_backward(grad_loss, embeddings, labels, ref_embeddings, ref_labels,
                                                          stats, hard_idx, cache, *ctx.params, ref_grad,
                                                          ctx.allow_tf32)
    return grad_e, None, (grad_r if ref_grad else None), None, None, None, None, None, None, None, None


def register() -> None:
    """Fake kernels and autograd of the fused op (recogfast/ops/_spec.py)."""
    register_autograd("ms_loss", _fake, _fake_backward, _backward, _setup_context)
