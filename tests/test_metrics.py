"""Metrics against brute-force float64 computations written independently of the chunked search."""

import math

import numpy as np
import pytest
import torch

from recogfast.metrics import AccuracyMeter, accuracy, map_at_r, recall_at_k, retrieval_metrics


def _brute_force(emb: np.ndarray, labels: np.ndarray, ks=(1, 2, 4, 8)):
    """Full N×N float64 ranking; ties broken by lower index; lone queries excluded."""
    x = emb.astype(np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sims = x @ x.T
    n = len(labels)
    hits = {k: 0 for k in ks}
    aps, count = [], 0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        ranked = sorted(others, key=lambda j: (-sims[i, j], j))
        rel = [labels[j] == labels[i] for j in ranked]
        r = sum(rel)
        if r == 0:
            continue
        count += 1
        for k in ks:
            hits[k] += any(rel[:k])
        ap, found = 0.0, 0
        for pos in range(r):
            if rel[pos]:
                found += 1
                ap += found / (pos + 1)
        aps.append(ap / r)
    return {k: hits[k] / count for k in ks}, float(np.mean(aps)), count


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_random_embeddings_match_brute_force(seed, chunk_size):
    g = np.random.default_rng(seed)
    n, d, classes = 60, 8, 9
    labels = g.integers(0, classes, n)
    emb = g.normal(size=(n, d)) + 1.5 * g.normal(size=(classes, d))[labels]
    ref_recall, ref_map, ref_count = _brute_force(emb, labels)
    out = retrieval_metrics(torch.tensor(emb), torch.tensor(labels), chunk_size=chunk_size)
    for k, v in ref_recall.items():
        assert out[f"recall@{k}"] == pytest.approx(v, abs=1e-12)
    assert out["map@r"] == pytest.approx(ref_map, abs=1e-12)
    assert out["num_queries"] == ref_count
    assert recall_at_k(torch.tensor(emb), torch.tensor(labels)) == pytest.approx(ref_recall)
    assert map_at_r(torch.tensor(emb), torch.tensor(labels), chunk_size=chunk_size) == pytest.approx(ref_map)


def test_float32_input_matches_float64_reference():
    g = np.random.default_rng(5)
    labels = g.integers(0, 6, 80)
    emb = g.normal(size=(80, 16)) + 2.0 * g.normal(size=(6, 16))[labels]
    ref_recall, ref_map, _ = _brute_force(emb, labels)
    out = retrieval_metrics(torch.tensor(emb, dtype=torch.float32), torch.tensor(labels), chunk_size=13)
    for k, v in ref_recall.items():
        assert out[f"recall@{k}"] == pytest.approx(v)
    assert out["map@r"] == pytest.approx(ref_map, abs=1e-9)


@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_ties_are_broken_by_index(chunk_size):
    # Heavily quantised embeddings: many exactly equal similarities (duplicates and opposite points).
    g = np.random.default_rng(3)
    base = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [1, 1]], dtype=np.float64)
    idx = g.integers(0, len(base), 40)
    emb = base[idx]
    labels = g.integers(0, 4, 40)
    ref_recall, ref_map, ref_count = _brute_force(emb, labels)
    out = retrieval_metrics(torch.tensor(emb), torch.tensor(labels), chunk_size=chunk_size)
    for k, v in ref_recall.items():
        assert out[f"recall@{k}"] == pytest.approx(v, abs=1e-12)
    assert out["map@r"] == pytest.approx(ref_map, abs=1e-12)
    assert out["num_queries"] == ref_count


def test_tie_order_hand_computed():
    # Query 0 sees items 1 (other class) and 2 (same class) at the same similarity: index 1 ranks first.
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1])
    out = retrieval_metrics(emb, labels, ks=(1, 2))
    # q0: ranking 1,2,3 -> miss@1 hit@2 ; q1: ranking 0,2,3 -> positive 3 last -> miss@1,2
    # q2: ranking 0,1,3 -> hit@1 ; q3: ranking 0,1,2 (all -1) -> positive 1 second -> miss@1 hit@2
    assert out["recall@1"] == pytest.approx(1 / 4)
    assert out["recall@2"] == pytest.approx(3 / 4)
    # AP@R with R=1 each: q0 0, q1 0, q2 1, q3 0
    assert out["map@r"] == pytest.approx(1 / 4)


def test_classes_with_one_item_are_left_out():
    g = np.random.default_rng(7)
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 4, 4, 4, 5])  # classes 2, 3, 5 have one item
    emb = g.normal(size=(len(labels), 4))
    ref_recall, ref_map, ref_count = _brute_force(emb, labels)
    out = retrieval_metrics(torch.tensor(emb), torch.tensor(labels))
    assert out["num_queries"] == ref_count == 8
    for k, v in ref_recall.items():
        assert out[f"recall@{k}"] == pytest.approx(v, abs=1e-12)
    assert out["map@r"] == pytest.approx(ref_map, abs=1e-12)


def test_perfect_and_all_lone():
    emb = torch.eye(4).repeat_interleave(3, dim=0)  # 4 classes, 3 identical points each
    labels = torch.arange(4).repeat_interleave(3)
    out = retrieval_metrics(emb, labels)
    assert all(out[f"recall@{k}"] == 1.0 for k in (1, 2, 4, 8))
    assert out["map@r"] == 1.0
    lone = retrieval_metrics(torch.randn(5, 3), torch.arange(5))
    assert lone["num_queries"] == 0 and math.isnan(lone["recall@1"]) and math.isnan(lone["map@r"])


def test_k_larger_than_dataset():
    emb = torch.randn(4, 3, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    out = retrieval_metrics(emb, labels, ks=(1, 8))
    assert out["recall@8"] == 1.0  # every other item is retrieved


def test_bad_input_messages():
    with pytest.raises(ValueError, match="embeddings must be a 2-D float"):
        recall_at_k(torch.randn(4), torch.arange(4))
    with pytest.raises(ValueError, match="labels must be 1-D with 4"):
        recall_at_k(torch.randn(4, 2), torch.arange(3))
    with pytest.raises(FloatingPointError, match="NaN"):
        recall_at_k(torch.tensor([[float("nan"), 0.0], [1.0, 0.0]]), torch.arange(2))
    with pytest.raises(ValueError, match="K must be >= 1"):
        recall_at_k(torch.randn(4, 2), torch.arange(4), ks=(0,))


def test_accuracy_topk_against_numpy():
    g = np.random.default_rng(0)
    logits = g.normal(size=(50, 10))
    targets = g.integers(0, 10, 50)
    order = np.argsort(-logits, axis=1)
    ref1 = np.mean(order[:, 0] == targets)
    ref5 = np.mean([t in row[:5] for t, row in zip(targets, order)])
    out = accuracy(torch.tensor(logits), torch.tensor(targets), ks=(1, 5))
    assert out["top1"] == pytest.approx(ref1) and out["top5"] == pytest.approx(ref5)
    meter = AccuracyMeter((1, 5))
    for s in range(0, 50, 16):
        meter.update(torch.tensor(logits[s : s + 16]), torch.tensor(targets[s : s + 16]))
    assert meter.compute() == pytest.approx(out)
    with pytest.raises(ValueError, match="targets must be 1-D"):
        accuracy(torch.randn(3, 4), torch.zeros(2, dtype=torch.long))


def test_search_is_chunked_never_n_by_n(monkeypatch):
    import recogfast.metrics.retrieval as R

    shapes = []
    original = R._topk_index_tiebreak

    def spy(sims, k):
        shapes.append(tuple(sims.shape))
        return original(sims, k)

    monkeypatch.setattr(R, "_topk_index_tiebreak", spy)
    n = 2000
    labels = torch.arange(n) % 50
    emb = torch.randn(n, 16) + 3 * torch.randn(50, 16)[labels]
    out = retrieval_metrics(emb, labels, chunk_size=128)
    assert shapes and all(q <= 128 and cols == n for q, cols in shapes)  # [chunk, N] blocks only
    assert len(shapes) == -(-n // 128)
    full = retrieval_metrics(emb, labels, chunk_size=n)
    assert out == full


def test_non_finite_logits_are_an_error_never_a_hit():
    """Issue 13: NaN logits used to rank every target first (top-1 = 1.0 for a diverged model)."""
    for bad in (float("nan"), float("inf"), float("-inf")):
        logits = torch.randn(4, 10)
        logits[2, 3] = bad
        with pytest.raises(FloatingPointError, match="1 of 4 rows"):
            accuracy(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(FloatingPointError, match="4 of 4 rows"):
        accuracy(torch.full((4, 10), float("nan")), torch.tensor([0, 1, 2, 3]))


@pytest.mark.parametrize("gain", [1e30, 1e-30, 1e-40])
def test_retrieval_metrics_do_not_depend_on_the_embeddings_scale(gain):
    """Issue 13: rows of size 1e30 overflowed |x|^2 in fp32 and became zero vectors (R@1 0.10 instead of 0.25)."""
    torch.manual_seed(0)
    e = torch.randn(60, 8)
    labels = torch.arange(60) // 4
    expected = retrieval_metrics(e, labels)
    scaled = retrieval_metrics(e * gain, labels)
    for k, v in expected.items():
        assert scaled[k] == pytest.approx(v, abs=1e-12), k
