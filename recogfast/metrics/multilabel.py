"""Mean average precision for multi-label classification (PASCAL VOC style), in NumPy float64.

Targets are an [N, C] array of 1 (present), 0 (absent) and -1 (present but marked ``difficult`` only,
or otherwise ignored): an ignored entry counts neither as a positive nor as a negative of its class, as
in the VOC devkit. Per class, the images are ranked by score, highest first; **tied scores form one
threshold** (their order does not matter), as in scikit-learn.

Two definitions of a class's AP (``method``):

- ``"area"`` (default; VOC 2010 and later, scikit-learn's ``average_precision_score``): the area
  under the step-wise precision-recall curve, AP = Σ_k (R_k − R_{k−1}) · P_k over the distinct
  thresholds k (highest first, R_0 = 0). No interpolation.
- ``"voc07"`` (the VOC 2007 devkit's 11-point interpolated AP, what VOC 2007 papers report):
  AP = (1/11) Σ_{t ∈ {0, 0.1, …, 1}} max{P_k : R_k ≥ t} (0 where no threshold reaches recall t);
  R_k ≥ t is decided exactly (10·TP ≥ 10t·P), not with the float grid of ``np.arange(0, 1.1, 0.1)``.

mAP is the mean over the classes that have at least one positive; a class without one has no AP (NaN
in ``per_class``) and is left out of the mean (``classes`` says how many counted).
"""

from __future__ import annotations

import numpy as np

__all__ = ["average_precision", "mean_average_precision", "METHODS"]

METHODS = ("area", "voc07")


def _as_numpy(x, name: str, fn: str) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().double().numpy() if x.dtype.is_floating_point else x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{fn}: {name} must be numeric, got an object array")
    return arr


def _pr_points(scores: np.ndarray, positive: np.ndarray):
    """(precision, recall, true positives) at each distinct threshold, highest first."""
    order = np.argsort(-scores, kind="stable")
    s, pos = scores[order], positive[order]
    tp = np.cumsum(pos, dtype=np.float64)
    fp = np.cumsum(~pos, dtype=np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # the last item of each run of equal scores
    tp, fp = tp[last], fp[last]
    return tp / (tp + fp), tp / tp[-1], tp


def average_precision(scores, targets, method: str = "area") -> float:
    """AP of one class: `scores` [N], `targets` [N] in {1, 0, -1} (-1 ignored). NaN when the class has
    no positive. ``FloatingPointError`` for a non-finite score of a counted item."""
    if method not in METHODS:
        raise ValueError(f"average_precision: method must be one of {', '.join(METHODS)}, got {method!r}")
    s = _as_numpy(scores, "scores", "average_precision").astype(np.float64).ravel()
    t = _as_numpy(targets, "targets", "average_precision").ravel()
    if s.shape != t.shape:
        raise ValueError(f"average_precision: scores and targets differ in size: {s.size} vs {t.size}")
    keep = t >= 0
    s, positive = s[keep], t[keep] > 0
    if not np.isfinite(s).all():
        raise FloatingPointError(f"average_precision: {int((~np.isfinite(s)).sum())} scores are NaN or inf "
                                 f"(the model diverged?)")
    if not positive.any():
        return float("nan")
    precision, recall, tp = _pr_points(s, positive)
    if method == "area":
        return float(np.sum(np.diff(recall, prepend=0.0) * precision))
    # precision envelope from the right: the best precision at recall >= r_k
    best = np.maximum.accumulate(precision[::-1])[::-1]
    # recall >= k/10 compared exactly, as 10·TP >= k·P (np.arange(0, 1.1, 0.1) holds 0.30000000000000004,
    # which would miss a recall of exactly 0.3)
    first = np.searchsorted(10 * tp, np.arange(11) * tp[-1], side="left")  # first threshold reaching recall k/10
    return float(np.mean(np.where(first < recall.size, best[np.minimum(first, recall.size - 1)], 0.0)))


def mean_average_precision(scores, targets, method: str = "area") -> dict:
    """mAP of [N, C] `scores` (logits or probabilities: only the order matters) against [N, C]
    `targets` in {1, 0, -1}. Returns ``{"map": ..., "per_class": [C floats, NaN without positives],
    "classes": number of classes counted}``. NaN/inf scores raise ``FloatingPointError`` (a diverged
    model is an error, never a score); malformed input ``ValueError``."""
    fn = "mean_average_precision"
    s = _as_numpy(scores, "scores", fn)
    t = _as_numpy(targets, "targets", fn)
    if s.ndim != 2 or t.shape != s.shape:
        raise ValueError(f"{fn}: scores and targets must both be [N, C], got {s.shape} and {t.shape}")
    if method not in METHODS:
        raise ValueError(f"{fn}: method must be one of {', '.join(METHODS)}, got {method!r}")
    if np.issubdtype(t.dtype, np.floating) and not np.all(np.isin(t, (-1.0, 0.0, 1.0))):
        raise ValueError(f"{fn}: targets must be 1 (present), 0 (absent) or -1 (ignored)")
    if not np.issubdtype(t.dtype, np.floating) and t.size and (t.min() < -1 or t.max() > 1):
        raise ValueError(f"{fn}: targets must be 1 (present), 0 (absent) or -1 (ignored)")
    s = s.astype(np.float64)
    bad = ~np.isfinite(s) & (t >= 0)
    if bad.any():
        raise FloatingPointError(f"{fn}: scores contain NaN or inf in {int(bad.any(axis=1).sum())} of {s.shape[0]} "
                                 f"rows (the model diverged?)")
    per_class = [average_precision(s[:, c], t[:, c], method) for c in range(s.shape[1])]
    counted = [ap for ap in per_class if not np.isnan(ap)]
    return {"map": float(np.mean(counted)) if counted else float("nan"), "per_class": per_class,
            "classes": len(counted)}
