"""Pair verification ("same identity or not?") from similarity scores, in NumPy float64.

Every function takes the pairs' `scores` (higher = more alike, e.g. the cosine similarity of two
embeddings) and `same` (1/True for a genuine pair, 0/False for an impostor pair); a pair is accepted
when ``score >= threshold``. The ROC is computed by one sort of the scores, O(P log P) for P pairs:
1e6 pairs take well under a second, and no matrix of all images against all images is ever built.

- :func:`roc_curve`: FAR (false accept rate = FPR) and TAR (true accept rate = TPR) at every distinct
  threshold, highest first, starting at (0, 0) for threshold +inf: scikit-learn's
  ``roc_curve(same, scores, drop_intermediate=False)``.
- ROC AUC: the trapezoid area under that curve (scikit-learn's ``roc_auc_score``).
- EER: the rate where FAR = FRR (1 − TAR), linearly interpolated between the two ROC points where
  FAR − FRR changes sign.
- TAR@FAR=x: the highest TAR among the thresholds whose FAR ≤ x (no interpolation: a threshold that
  exists), with that threshold.
- Accuracy at a threshold chosen elsewhere: :func:`best_threshold` picks the threshold of highest
  accuracy on *validation* pairs (the midpoint between that score and the next lower one, so test
  scores between them are not decided by an accident of the sample); :func:`accuracy_at` applies it.
- :func:`kfold_accuracy`: LFW's protocol (10 folds; each fold's threshold is chosen on the other 9).
"""

from __future__ import annotations

import numpy as np

__all__ = ["roc_curve", "roc_auc", "verification_metrics", "best_threshold", "accuracy_at", "kfold_accuracy",
           "FARS"]

FARS = (1e-3, 1e-2)


def _check(scores, same, fn: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        import torch

        if isinstance(scores, torch.Tensor):
            scores = scores.detach().cpu().double().numpy()
        if isinstance(same, torch.Tensor):
            same = same.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(same).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{fn}: scores and same differ in size: {s.size} vs {y.size}")
    if y.size and not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{fn}: same must hold 0 (different) or 1 (same) for every pair")
    if not np.isfinite(s).all():
        raise FloatingPointError(f"{fn}: {int((~np.isfinite(s)).sum())} of {s.size} scores are NaN or inf "
                                 f"(the model diverged?)")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError(f"{fn}: needs both same and different pairs, got {int(y.sum())} same of {y.size}")
    return s, y


def _counts(s: np.ndarray, y: np.ndarray):
    """Cumulative (tp, fp, threshold) at each distinct score, highest first."""
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y, dtype=np.float64)[last]
    fp = np.cumsum(~y, dtype=np.float64)[last]
    return tp, fp, s[last]


def roc_curve(scores, same) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds), with a first point (0, 0, +inf); as scikit-learn's
    ``roc_curve(same, scores, drop_intermediate=False)``."""
    s, y = _check(scores, same, "roc_curve")
    tp, fp, thr = _counts(s, y)
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]], np.r_[np.inf, thr]


def roc_auc(scores, same) -> float:
    far, tar, _ = roc_curve(scores, same)
    return float(np.trapezoid(tar, far))


def _eer(far: np.ndarray, tar: np.ndarray, thr: np.ndarray) -> tuple[float, float]:
    frr = 1.0 - tar
    d = far - frr  # rises from -1 (threshold +inf) to +1 (lowest threshold)
    k = int(np.argmax(d >= 0))  # first point at or past the crossing; k >= 1 since d[0] = -1
    if d[k] == 0:
        return float(far[k]), float(thr[k])
    w = -d[k - 1] / (d[k] - d[k - 1])  # linear interpolation between points k-1 and k
    eer = far[k - 1] + w * (far[k] - far[k - 1])
    return float(eer), float(thr[k])


def _tar_at(far: np.ndarray, tar: np.ndarray, thr: np.ndarray, target: float) -> tuple[float, float]:
    ok = np.flatnonzero(far <= target)  # never empty: far[0] = 0
    k = ok[-1]  # tar is nondecreasing: the last admissible point has the highest TAR
    return float(tar[k]), float(thr[k])


def best_threshold(scores, same) -> tuple[float, float]:
    """(threshold, accuracy) of the accuracy-maximising threshold on these (validation) pairs."""
    s, y = _check(scores, same, "best_threshold")
    tp, fp, thr = _counts(s, y)
    tn = (~y).sum() - fp
    acc = np.r_[(~y).sum(), tp + tn] / s.size  # first entry: accept nothing
    k = int(np.argmax(acc))  # acc[k], k >= 1: accept the scores >= thr[k - 1]
    if k == 0:
        return float(np.nextafter(thr[0], np.inf)), float(acc[0])
    t = thr[k - 1] if k == thr.size else (thr[k - 1] + thr[k]) / 2  # midway to the next lower score
    if k < thr.size and not thr[k] < t <= thr[k - 1]:  # adjacent floats: no number lies between them
        t = thr[k - 1]
    return float(t), float(acc[k])


def accuracy_at(scores, same, threshold: float) -> float:
    """Fraction of pairs decided correctly by ``score >= threshold``."""
    s, y = _check(scores, same, "accuracy_at")
    return float(np.mean((s >= threshold) == y))


def kfold_accuracy(scores, same, folds: int = 10, fold_of=None, seed: int = 0) -> dict:
    """LFW's protocol: for each fold, the threshold chosen on the other folds, accuracy on this one.
    `fold_of` gives each pair's fold (LFW: consecutive blocks of the pair list); default a seeded
    permutation in `folds` near-equal parts. Returns mean, std (over folds) and each fold's numbers."""
    s, y = _check(scores, same, "kfold_accuracy")
    if folds < 2:
        raise ValueError(f"kfold_accuracy: folds must be >= 2, got {folds}")
    if fold_of is None:
        fold_of = np.empty(s.size, dtype=np.int64)
        fold_of[np.random.default_rng([seed, 10]).permutation(s.size)] = np.arange(s.size) % folds
    fold_of = np.asarray(fold_of)
    accs, thrs = [], []
    for f in range(folds):
        test = fold_of == f
        if not test.any():
            raise ValueError(f"kfold_accuracy: fold {f} holds no pair ({s.size} pairs, {folds} folds)")
        t, _ = best_threshold(s[~test], y[~test])
        accs.append(float(np.mean((s[test] >= t) == y[test])))
        thrs.append(t)
    return {"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)), "folds": folds,
            "fold_accuracy": accs, "fold_threshold": thrs}


def verification_metrics(scores, same, fars=FARS, threshold: float | None = None) -> dict:
    """ROC AUC, EER (and its threshold), TAR@FAR for each FAR in `fars`, and with a `threshold` chosen
    on validation pairs the accuracy at it. Keys: ``auc``, ``eer``, ``eer_threshold``,
    ``tar@far=0.001``, ``threshold@far=0.001``, ..., ``accuracy``, ``threshold``, ``pairs``, ``same``."""
    far, tar, thr = roc_curve(scores, same)
    s, y = _check(scores, same, "verification_metrics")
    eer, eer_t = _eer(far, tar, thr)
    out = {"auc": float(np.trapezoid(tar, far)), "eer": eer, "eer_threshold": eer_t}
    for x in fars:
        out[f"tar@far={x:g}"], out[f"threshold@far={x:g}"] = _tar_at(far, tar, thr, x)
    if threshold is not None:
        out["accuracy"] = float(np.mean((s >= threshold) == y))
        out["threshold"] = float(threshold)
    out["pairs"], out["same"] = int(s.size), int(y.sum())
    return out
