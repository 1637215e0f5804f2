"""``recogfast verify``: pair verification ("same identity or not?") with a trained checkpoint.

Each image is embedded once: a retrieval model's L2-normalised embedding, or a classifier's
(classify / multilabel) pooled features; a pair's score is the cosine similarity of its two images.
Test pairs come from a pair list (``--pairs FILE``) or are drawn, seeded and balanced, from the run's
labelled test split. The accept threshold is chosen on validation pairs only (``--val-pairs FILE``, else
pairs drawn from the run's val split), and LFW's k-fold protocol is an option (``folds``). Metrics:
:mod:`recogfast.metrics.verification`. The result goes to ``RUN/verify-<name>.json`` and the ROC to
``RUN/roc-<name>.png`` (and into the report page when the run has one).

Pair list format (LFW-style): one pair a line, ``PATH_A PATH_B LABEL`` with LABEL 1 (same) or 0
(different), separated by tabs (then paths may hold spaces) or whitespace; blank lines and lines
starting with ``#`` are skipped; relative paths are relative to ``root`` (default: the list's folder).
LFW's own ``pairs.txt`` is read too (recognised by its header line of two integers, e.g. ``10 300``):
``NAME N1 N2`` (same person) and ``NAME1 N1 NAME2 N2`` (different), images at
``root/NAME/NAME_000N.jpg``; its folds are consecutive blocks, as ``--folds 10`` takes them.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from recogfast.data.errors import DataError
from recogfast.engine.finetune import scored_weights
from recogfast.metrics.verification import best_threshold, kfold_accuracy, roc_curve, verification_metrics

DEFAULT_PAIRS = 6000  # LFW's size: 3000 same + 3000 different


def read_pairs(path: str, root: str | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """(paths A, paths B, same [P] bool) of a pair list; DataError naming the file and line of the first
    problem (malformed line, label not 0/1, missing image)."""
    if not os.path.isfile(path):
        raise DataError(f"pair list {path} not found", path)
    root = os.path.dirname(os.path.abspath(path)) if root is None else root
    a, b, same = [], [], []
    lfw = False
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = [p.strip() for p in text.split("\t")] if "\t" in text else text.split()
            if not a and not lfw and len(parts) == 2 and all(p.isdigit() for p in parts):
                lfw = True  # LFW's header: folds, pairs of each kind a fold
                continue
            if lfw:
                pair, label = _lfw_pair(parts, root, path, lineno, text)
            elif len(parts) != 3 or parts[2] not in ("0", "1"):
                raise DataError(f"{path}:{lineno}: expected two image paths and 0 or 1, got {text[:100]!r}", path)
            else:
                pair, label = [p if os.path.isabs(p) else os.path.join(root, p) for p in parts[:2]], parts[2]
            for p in pair:
                if not os.path.isfile(p):
                    raise DataError(f"{path}:{lineno}: image not found: {p}", path)
            a.append(pair[0])
            b.append(pair[1])
            same.append(label == "1")
    if not a:
        raise DataError(f"pair list {path} holds no pairs", path)
    y = np.asarray(same, dtype=bool)
    if y.all() or not y.any():
        raise DataError(f"pair list {path}: needs both same (1) and different (0) pairs, got {int(y.sum())} same of "
                        f"{y.size}", path)
    return a, b, y


def _lfw_pair(parts: list[str], root: str, path: str, lineno: int, text: str) -> tuple[list[str], str]:
    def image(name: str, number: str) -> str:
        return os.path.join(root, name, f"{name}_{int(number):04d}.jpg")

    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return [image(parts[0], parts[1]), image(parts[0], parts[2])], "1"
    if len(parts) == 4 and parts[1].isdigit() and parts[3].isdigit():
        return [image(parts[0], parts[1]), image(parts[2], parts[3])], "0"
    raise DataError(f"{path}:{lineno}: expected LFW's 'NAME N1 N2' or 'NAME1 N1 NAME2 N2', got {text[:100]!r}", path)


def distinct_pairs(labels) -> tuple[int, int]:
    """How many distinct (unordered) same-class and different-class pairs a labelled split holds."""
    counts = np.unique(np.asarray(labels, dtype=np.int64), return_counts=True)[1].astype(np.int64)
    n = int(counts.sum())
    return int((counts * (counts - 1) // 2).sum()), int((n * n - (counts * counts).sum()) // 2)


def repeats_note(labels, n: int, split: str) -> str | None:
    """A note when `n` balanced pairs of this split must repeat some pairs (None when they need not)."""
    same, diff = distinct_pairs(labels)
    if n // 2 <= same and n - n // 2 <= diff:
        return None
    return (f"the {split} split holds only {same} distinct same-class pairs ({len(labels)} images): {n} balanced pairs "
            f"repeat some; --num-pairs {2 * min(same, diff)} or less draws each at most once")


def balanced_pairs(labels, n: int, seed: int = 0, split: str = "labelled") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index A, index B, same) of `n` seeded pairs of a labelled split: n // 2 same-class pairs (two
    different images of a class with at least two), the rest different-class pairs, shuffled. Drawn with
    replacement: a pair may repeat on a small split (``repeats_note`` says when it must)."""
    y = np.asarray(labels, dtype=np.int64)
    if n < 2:
        raise ValueError(f"--num-pairs must be at least 2, got {n}")
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    if len(classes) < 2 or counts.max() < 2:
        fix = "give --val-pairs FILE" if split == "val" else "give --pairs FILE"
        raise ValueError(f"the {split} split is too small for balanced pairs: it needs at least 2 classes and a class "
                         f"with 2 images, and has {len(classes)} classes, the largest with "
                         f"{counts.max() if len(counts) else 0} images; {fix}")
    rng = np.random.default_rng([seed, 0x70616972])
    order = np.argsort(inverse, kind="stable")  # images grouped by class
    start = np.r_[0, np.cumsum(counts)[:-1]]
    pos_in_class = np.empty(y.size, dtype=np.int64)
    pos_in_class[order] = np.arange(y.size) - np.repeat(start, counts)
    n_same = n // 2
    eligible = np.flatnonzero(counts[inverse] >= 2)
    a_same = rng.choice(eligible, n_same)
    c = inverse[a_same]
    offset = rng.integers(1, counts[c])  # another image of the same class
    b_same = order[start[c] + (pos_in_class[a_same] + offset) % counts[c]]
    a_diff = rng.integers(0, y.size, n - n_same)
    b_diff = rng.integers(0, y.size, n - n_same)
    while (clash := inverse[a_diff] == inverse[b_diff]).any():
        b_diff[clash] = rng.integers(0, y.size, int(clash.sum()))
    ia, ib = np.r_[a_same, a_diff], np.r_[b_same, b_diff]
    same = np.r_[np.ones(n_same, bool), np.zeros(n - n_same, bool)]
    perm = rng.permutation(n)
    return ia[perm], ib[perm], same[perm]


def pair_scores(e: torch.Tensor, ia, ib, chunk: int = 65536) -> np.ndarray:
    """Cosine similarity of rows ia[k] and ib[k] of `e`, chunked (never an images × images matrix)."""
    e = F.normalize(e.double(), dim=1)
    ia, ib = torch.as_tensor(np.asarray(ia)), torch.as_tensor(np.asarray(ib))
    out = [(e[ia[i:i + chunk]] * e[ib[i:i + chunk]]).sum(1) for i in range(0, len(ia), chunk)]
    return torch.cat(out).cpu().numpy() if out else np.zeros(0)


def thin_roc(far: np.ndarray, tar: np.ndarray, points: int = 400) -> dict:
    """At most ~`points` ROC points, spread evenly in log FAR (for plots and the JSON file)."""
    if far.size <= points:
        return {"far": far.tolist(), "tar": tar.tolist()}
    grid = np.r_[0.0, np.logspace(np.log10(max(far[far > 0].min(), 1e-7)), 0, points - 1)]
    k = np.unique(np.minimum(np.searchsorted(far, grid, side="right") - 1, far.size - 1))
    return {"far": far[k].tolist(), "tar": tar[k].tolist()}


def roc_figure(curves: dict, title: str):
    """The ROC (TAR against FAR, log scale) of each named set of pairs, with its AUC and EER."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, r in curves.items():
        far, tar = np.asarray(r["roc"]["far"]), np.asarray(r["roc"]["tar"])
        ax.plot(np.maximum(far, 1e-6), tar, label=f"{name}: AUC {r['auc']:.4f}, EER {r['eer']:.4f}")
    for x in (1e-3, 1e-2):
        ax.axvline(x, color="0.6", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def _embed_files(model, files: list[str], cfg, features: bool) -> torch.Tensor:
    from recogfast.data import ImageList
    from recogfast.engine import build

    ds = ImageList(files, [0] * len(files), ["image"], split="pairs")
    build.check_files((ds,), "raise")  # a DataError naming the first unreadable image
    loader = build.build_eval_loader(cfg, ds)
    e, _ = build.embed(model, loader, features=features)
    return e.cpu()


def _scores_of_split(model, ds, cfg, features: bool, n: int, seed: int):
    ia, ib, same = balanced_pairs(ds.labels, n, seed, split=ds.split)
    e = _embed_files(model, ds.files, cfg, features)
    return pair_scores(e, ia, ib), same


def _scores_of_list(model, path: str, root: str | None, cfg, features: bool):
    a, b, same = read_pairs(path, root)
    files = sorted(set(a) | set(b))
    where = {f: i for i, f in enumerate(files)}
    e = _embed_files(model, files, cfg, features)
    return pair_scores(e, [where[p] for p in a], [where[p] for p in b]), same


def run_verify(checkpoint: str, pairs: str | None = None, val_pairs: str | None = None, root: str | None = None,
               num_pairs: int = DEFAULT_PAIRS, folds: int | None = None, seed: int = 0, device: str | None = None,
               batch_size: int = 256, num_workers: int | None = None, backend: str = "auto") -> tuple[dict, str]:
    """Score one checkpoint on pairs; returns (result, path of the JSON written into the run folder).
    User errors are ValueError / DataError (one line)."""
    from recogfast.engine import build
    from recogfast.engine.checkpoint import load_checkpoint
    from recogfast.engine.evaluate import _config
    from recogfast.tasks import get_task

    t0 = time.perf_counter()
    ckpt = load_checkpoint(checkpoint)
    saved = ckpt.get("config") or {}
    cfg = _config(saved, device=device or ("cuda" if torch.cuda.is_available() else "cpu"), batch_size=batch_size,
                  backend=backend)
    cfg.num_workers, cfg.weights, cfg.amp, cfg.patience, cfg.schedule = num_workers, None, "none", None, "cosine"
    cfg.on_error, cfg.progress = "raise", False
    cfg = cfg.resolved()
    if folds is not None and folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    model = build.build_model(cfg, saved.get("num_classes"))
    try:
        model.load_state_dict(scored_weights(ckpt))  # the EMA weights when the run kept them, as val/test
    except RuntimeError as err:
        raise ValueError(f"checkpoint {checkpoint} does not match its model: {str(err).splitlines()[0]}") from None
    model = model.to(cfg.device).eval()
    task = get_task(cfg.task)
    features = task.output != "embedding"  # a classifier's pooled features, a retrieval model's embedding
    val_ds = test_ds = note = None
    notes: list[str | None] = []
    if pairs is None:
        _, val_ds, test_ds = build.build_datasets(cfg)
    elif val_pairs is None and task.output != "sigmoid":
        try:  # the threshold's pairs from the run's val split, when its data is still there
            _, val_ds, _ = build.build_datasets(cfg)
        except (OSError, ValueError, DataError) as err:
            note = f"no val pairs: the run's data cannot be read ({str(err).splitlines()[0]}); pass --val-pairs FILE"
    if pairs is None:
        if task.output == "sigmoid":
            raise ValueError("a multilabel run's test split has no identities to pair: give --pairs FILE")
        test_s, test_y = _scores_of_split(model, test_ds, cfg, features, num_pairs, seed)
        name, source = "test", f"{num_pairs} seeded balanced pairs of the test split"
        notes.append(repeats_note(test_ds.labels, num_pairs, "test"))
    else:
        test_s, test_y = _scores_of_list(model, pairs, root, cfg, features)
        name = "pairs-" + os.path.splitext(os.path.basename(pairs))[0]
        source = f"pair list {pairs}"
    val = None
    if val_pairs is not None:
        val_s, val_y = _scores_of_list(model, val_pairs, root, cfg, features)
        val_source = f"pair list {val_pairs}"
    elif val_ds is not None and task.output != "sigmoid" and len(val_ds):
        val_s, val_y = _scores_of_split(model, val_ds, cfg, features, num_pairs, seed + 1)
        val_source = f"{num_pairs} seeded balanced pairs of the val split"
        notes.append(repeats_note(val_ds.labels, num_pairs, "val"))
    else:
        val_s = None
    result = {"checkpoint": os.path.abspath(checkpoint), "epoch": ckpt.get("epoch"), "model": cfg.model,
              "task": cfg.task, "embedding": "pooled features" if features else "embedding", "name": name}
    notes = [text for text in [note] + notes if text]
    if notes:
        result["note"] = "; ".join(notes)
    threshold = None
    if val_s is not None:
        threshold, _ = best_threshold(val_s, val_y)
        far, tar, _ = roc_curve(val_s, val_y)
        val = verification_metrics(val_s, val_y, threshold=threshold)
        result["val"] = {"source": val_source, **val, "roc": thin_roc(far, tar)}
    test = verification_metrics(test_s, test_y, threshold=threshold)
    far, tar, _ = roc_curve(test_s, test_y)
    result["test"] = {"source": source, **test, "roc": thin_roc(far, tar)}
    if threshold is not None:
        result["test"]["threshold_from"] = "val pairs"
    if folds is not None:
        fold_of = np.arange(test_s.size) * folds // test_s.size if pairs is not None else None  # LFW: blocks
        result["test"]["kfold"] = kfold_accuracy(test_s, test_y, folds, fold_of=fold_of, seed=seed)
    result["seconds"] = time.perf_counter() - t0
    run = os.path.dirname(os.path.abspath(checkpoint))
    out = os.path.join(run, f"verify-{name}.json")
    with open(out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(out + ".tmp", out)
    try:
        fig = roc_figure({k: result[k] for k in ("val", "test") if k in result},
                         f"{os.path.basename(run)} · {cfg.model} · {result['embedding']} · {source}")
        fig.savefig(os.path.join(run, f"roc-{name}.png"), dpi=100)
        result["roc_png"] = os.path.join(run, f"roc-{name}.png")
    except ImportError:
        result["roc_png"] = None  # no matplotlib: the JSON holds the curve
    return result, out

