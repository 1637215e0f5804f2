"""Multi-label mAP and pair-verification metrics against scikit-learn (to 1e-9), and their edge cases."""

import math
import time

import numpy as np
import pytest
import torch

from recogfast.metrics import average_precision, mean_average_precision, roc_curve, verification_metrics
from recogfast.metrics.verification import accuracy_at, best_threshold, kfold_accuracy

sk = pytest.importorskip("sklearn.metrics")


def _tied_scores(rng, n, levels=7):
    return rng.integers(0, levels, size=n) / levels  # many exact ties


@pytest.mark.parametrize("seed", range(5))
def test_area_ap_equals_sklearn_per_class_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, c = 300, 20
    targets = (rng.random((n, c)) < 0.15).astype(np.int64)
    targets[rng.random((n, c)) < 0.05] = -1  # ignored (difficult) entries
    scores = np.where(rng.random((n, c)) < 0.5, _tied_scores(rng, n * c).reshape(n, c), rng.normal(size=(n, c)))
    out = mean_average_precision(scores, targets)
    expect = []
    for k in range(c):
        keep = targets[:, k] >= 0
        expect.append(sk.average_precision_score(targets[keep, k], scores[keep, k]))
        assert out["per_class"][k] == pytest.approx(expect[-1], abs=1e-9)
    assert out["map"] == pytest.approx(np.mean(expect), abs=1e-9) and out["classes"] == c
    # torch tensors give the same
    assert mean_average_precision(torch.tensor(scores), torch.tensor(targets))["map"] == out["map"]


def test_voc07_eleven_point_by_hand():
    # ranking: P N P N N P  -> recall/precision points (1/3, 1), (2/3, 2/3), (1, 1/2)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    targets = np.array([1, 0, 1, 0, 0, 1])
    # t = 0..0.3: max precision at recall >= t is 1 (4 points); 0.4..0.6: 2/3 (3 points); 0.7..1: 1/2 (4)
    assert average_precision(scores, targets, "voc07") == pytest.approx((4 * 1 + 3 * 2 / 3 + 4 * 0.5) / 11, abs=1e-12)
    assert average_precision(scores, targets, "area") == pytest.approx((1 + 2 / 3 + 1 / 2) / 3, abs=1e-12)
    # a difficult positive ranked first is ignored, not a false positive
    assert average_precision(np.r_[1.0, scores], np.r_[-1, targets], "voc07") == pytest.approx(
        average_precision(scores, targets, "voc07"), abs=1e-15)
    # ties form one threshold: the order inside the tie does not matter
    assert average_precision([0.5, 0.5], [1, 0]) == average_precision([0.5, 0.5], [0, 1]) == 0.5


def _devkit_voc07(scores, t):
    """The VOC 2007 devkit's VOCevalcls (11-point AP), transcribed: difficult entries stay in the ranked
    list but count as neither true nor false positives."""
    order = np.argsort(-scores)
    gt = t[order]
    tp, fp = np.cumsum(gt == 1), np.cumsum(gt == 0)
    prec = tp / np.maximum(tp + fp, np.finfo(float).tiny)
    reach = [10 * tp >= k * (t == 1).sum() for k in range(11)]  # rec >= k/10, exactly
    return np.mean([prec[r].max() if r.any() else 0.0 for r in reach])


@pytest.mark.parametrize("seed", range(3))
def test_voc07_equals_the_devkit_without_ties(seed):
    rng = np.random.default_rng(seed)
    t = (rng.random((200, 20)) < 0.2).astype(np.int64)
    t[rng.random((200, 20)) < 0.05] = -1
    scores = rng.normal(size=(200, 20)) + t  # continuous: no ties, where the devkit's order is defined
    out = mean_average_precision(scores, t, "voc07")
    for c in range(20):
        assert out["per_class"][c] == pytest.approx(_devkit_voc07(scores[:, c], t[:, c]), abs=1e-12)


def test_map_edge_cases():
    scores = np.array([[0.1, 0.9], [0.8, 0.2]])
    out = mean_average_precision(scores, np.array([[0, 1], [0, 0]]))
    assert out["classes"] == 1 and math.isnan(out["per_class"][0]) and out["map"] == 1.0
    with pytest.raises(FloatingPointError, match="1 of 2 rows"):
        mean_average_precision(np.array([[np.nan, 0.9], [0.8, 0.2]]), np.array([[1, 1], [0, 0]]))
    with pytest.raises(ValueError, match="1 \\(present\\), 0 \\(absent\\) or -1"):
        mean_average_precision(scores, np.array([[2, 1], [0, 0]]))
    with pytest.raises(ValueError, match="\\[N, C\\]"):
        mean_average_precision(scores, np.array([1, 0]))
    with pytest.raises(ValueError, match="method"):
        mean_average_precision(scores, np.array([[0, 1], [1, 0]]), method="voc12")


@pytest.mark.parametrize("seed", range(4))
def test_roc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 2000
    same = rng.random(n) < 0.4
    scores = np.where(rng.random(n) < 0.5, _tied_scores(rng, n, 11), rng.normal(size=n) + same)
    far, tar, thr = roc_curve(scores, same)
    f2, t2, th2 = sk.roc_curve(same, scores, drop_intermediate=False)
    assert far.shape == f2.shape
    np.testing.assert_allclose(far, f2, atol=1e-9)
    np.testing.assert_allclose(tar, t2, atol=1e-9)
    np.testing.assert_array_equal(thr[1:], th2[1:])
    m = verification_metrics(scores, same)
    assert m["auc"] == pytest.approx(sk.roc_auc_score(same, scores), abs=1e-9)
    # TAR@FAR: the best TPR among sklearn's points with FPR <= x
    for x in (1e-3, 1e-2):
        assert m[f"tar@far={x:g}"] == pytest.approx(t2[f2 <= x].max(), abs=1e-12)
    # EER: FAR and FRR equal at the interpolated crossing
    frr = 1 - t2
    k = np.argmax(f2 - frr >= 0)
    lo, hi = f2[k - 1] - frr[k - 1], f2[k] - frr[k]
    assert f2[k - 1] - 1e-12 <= m["eer"] <= f2[k] + 1e-12 and lo < 0 <= hi
    assert m["pairs"] == n and m["same"] == int(same.sum())


def test_eer_and_tar_by_hand():
    # scores of 4 genuine pairs and 4 impostors; the 2nd impostor outranks one genuine pair
    same = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1, 0.0])
    m = verification_metrics(scores, same, fars=(0.0, 0.25))
    assert m["eer"] == pytest.approx(0.25) and m["auc"] == pytest.approx(15 / 16)
    assert m["tar@far=0"] == 0.75 and m["threshold@far=0"] == 0.7
    assert m["tar@far=0.25"] == 1.0 and m["threshold@far=0.25"] == 0.3
    t, acc = best_threshold(scores, same)
    assert acc == 7 / 8 and t == pytest.approx((0.7 + 0.6) / 2)  # midway between the two scores
    assert accuracy_at(scores, same, t) == 7 / 8


def test_kfold_uses_other_folds_threshold():
    rng = np.random.default_rng(0)
    same = np.tile([1, 0], 300)
    scores = rng.normal(size=600) + 2 * same
    out = kfold_accuracy(scores, same, folds=10, fold_of=np.repeat(np.arange(10), 60))
    assert len(out["fold_accuracy"]) == 10 and 0.8 < out["accuracy"] < 0.95
    for f in range(10):  # each threshold is the best on the other 9 folds
        rest = np.repeat(np.arange(10), 60) != f
        assert out["fold_threshold"][f] == best_threshold(scores[rest], same[rest])[0]


def test_verification_errors():
    with pytest.raises(FloatingPointError, match="NaN"):
        verification_metrics([0.1, np.nan], [1, 0])
    with pytest.raises(ValueError, match="both same and different"):
        verification_metrics([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="0 \\(different\\) or 1"):
        verification_metrics([0.1, 0.2], [1, 2])


def test_a_million_pairs_in_seconds():
    rng = np.random.default_rng(0)
    same = rng.random(1_000_000) < 0.5
    scores = (rng.normal(size=same.size) + same).astype(np.float32)
    t0 = time.perf_counter()
    m = verification_metrics(scores, same)
    seconds = time.perf_counter() - t0
    assert 0.75 < m["auc"] < 0.78  # Φ(1/√2) = 0.760 for unit-variance scores one apart
    assert seconds < 5.0, seconds
