"""Build ``RUN/report/``: evaluate the run's checkpoint on one split, draw the figures, write index.html."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from recogfast.engine.finetune import scored_weights
from recogfast.report import figures as fg
from recogfast.report.page import write_page
from recogfast.tasks import get_task

RECALL_KS = list(range(1, 33))


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    with open(path) as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                try:
                    row[k] = int(v) if k == "epoch" else float(v)
                except (TypeError, ValueError):
                    row[k] = v
            out.append(row)
    return out


def _thumb(path: str, size: int):
    from PIL import Image

    import numpy as np

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size)))


def training_curves(run: Path, rows: list[dict], summary: dict, folder: Path) -> list[tuple[str, str]]:
    """(title, file) of the loss, metrics and learning-rate plots in `folder`."""
    if not rows:
        return []
    cfg = summary.get("config") or {}
    chosen = (summary.get("test") or {}).get("epoch") or summary.get("best_epoch")
    head = f"{run.name} · {cfg.get('model', '?')} · {cfg.get('task', '?')} on {cfg.get('dataset', '?')}"
    keys = list(rows[-1])
    out = []
    for name, sel, ylabel in (
        ("loss.png", [k for k in keys if k.endswith("loss")], "loss"),
        ("metrics.png", [k for k in keys if k.startswith("val_") and not k.endswith("loss")], "metric"),
        ("lr.png", [k for k in keys if k == "lr"], "learning rate"),
    ):
        if sel:
            out.append((ylabel, fg.save(fg.curves(rows, sel, ylabel, f"{head}: {ylabel}", chosen), folder / name)))
    return out


def _load(run: Path, checkpoint: str, split: str, device: str | None):
    from recogfast.engine import build
    from recogfast.engine.checkpoint import load_checkpoint
    from recogfast.engine.evaluate import _config

    path = run / f"{checkpoint}.pt"
    if not path.exists():
        raise ValueError(f"{run} holds no {checkpoint}.pt")
    ckpt = load_checkpoint(path)
    saved = ckpt.get("config") or {}
    cfg = _config(saved, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg.weights, cfg.amp, cfg.patience, cfg.schedule, cfg.progress = None, "none", None, "cosine", False
    if split == "val" and cfg.val_fraction == 0:
        return None
    cfg = cfg.resolved()
    model = build.build_model(cfg, saved.get("num_classes"))
    model.load_state_dict(scored_weights(ckpt))  # the EMA weights when the run kept them
    model = model.to(cfg.device).eval()
    _, val_ds, test_ds = build.build_datasets(cfg)
    ds = val_ds if split == "val" else test_ds
    return cfg, model, ds, build.build_eval_loader(cfg, ds), ckpt.get("epoch")


@torch.no_grad()
def _outputs(model, loader, features: bool):
    outs, labels = [], []
    for images, y in loader:
        out = model.forward_features(images) if features else model(images)
        outs.append(out.float().cpu())
        labels.append(y.cpu())
    return torch.cat(outs), torch.cat(labels)


def classification(model, loader, ds, folder: Path, image_size: int) -> dict:
    logits, y = _outputs(model, loader, False)
    prob = logits.softmax(1)
    conf, pred = prob.max(1)
    c = logits.shape[1]
    cm = torch.bincount(y * c + pred, minlength=c * c).view(c, c)
    per = cm.diag().float() / cm.sum(1).clamp_min(1).float()
    present = cm.sum(1) > 0
    names = ds.class_names
    acc_cls = per[present]
    names_present = [n for n, p in zip(names, present.tolist()) if p]
    files = {"per_class": fg.save(fg.per_class_accuracy(acc_cls, names_present), folder / "per_class_accuracy.png"),
             "confusion": fg.save(fg.confusion(cm), folder / "confusion.png")}
    off = cm.clone()
    off.fill_diagonal_(0)
    top = torch.argsort(off.flatten(), descending=True, stable=True)[:20]
    pairs = []
    for j, flat in enumerate(top.tolist()):
        t, p = divmod(flat, c)
        count = int(off[t, p])
        if count == 0:
            break
        idx = ((y == t) & (pred == p)).nonzero().flatten()[:1].tolist()
        img = None
        if idx:
            img = fg.save(fg.image_grid([_thumb(ds.files[idx[0]], image_size)], [""], cols=1, size=1.0),
                          folder / f"pair_{j:02d}.png")
        pairs.append({"true": names[t], "pred": names[p], "count": count, "image": img})
    wrong = (pred != y).nonzero().flatten()
    wrong = wrong[torch.argsort(conf[wrong], descending=True, stable=True)][:32].tolist()
    if wrong:
        files["misclassified"] = fg.save(fg.image_grid(
            [_thumb(ds.files[i], image_size) for i in wrong],
            [f"{fg.wrap(names[y[i]], 24, 2)}\n→ {fg.wrap(names[pred[i]], 24, 2)}\n{conf[i]:.2f}" for i in wrong], size=1.6),
            folder / "misclassified.png")
    worst = [(names_present[i], float(acc_cls[i])) for i in torch.argsort(acc_cls, stable=True)[:10].tolist()]
    return {"top1": float((pred == y).float().mean()), "images": int(y.numel()), "files": files, "pairs": pairs,
            "worst": worst}


def nearest(e: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, cosine similarities) of each row's k nearest other rows, in recogfast.metrics' order."""
    from recogfast.metrics.retrieval import _topk_index_tiebreak

    x = e if e.dtype == torch.float64 else e.float()  # the same arithmetic as recogfast.metrics
    _, exponent = torch.frexp(x.abs().amax(dim=1, keepdim=True))
    x = F.normalize(torch.ldexp(x, -exponent), dim=1)
    sims = x @ x.T
    sims.fill_diagonal_(float("-inf"))
    idx = _topk_index_tiebreak(sims, min(k, e.shape[0] - 1))
    return idx, sims.gather(1, idx)


def _pca2(e: torch.Tensor) -> tuple[torch.Tensor, str]:
    """2-D map of the embeddings: UMAP when umap-learn is installed, else t-SNE (scikit-learn, up to 3000
    points), else PCA."""
    try:
        import umap

        pts = umap.UMAP(n_components=2, random_state=0, n_neighbors=min(15, max(2, e.shape[0] - 1))).fit_transform(
            F.normalize(e, dim=1).numpy())
        return torch.as_tensor(pts), "UMAP"
    except ImportError:
        pass
    try:  # t-SNE when scikit-learn is installed and the set is small enough to be quick
        from sklearn.manifold import TSNE

        if e.shape[0] <= 3000:
            pts = TSNE(2, init="pca", random_state=0, perplexity=min(30, max(2, e.shape[0] // 4))).fit_transform(e.numpy())
            return torch.as_tensor(pts), "t-SNE"
    except ImportError:
        pass
    x = F.normalize(e, dim=1)
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return x @ v[:2].T, "PCA"


def neighbour_grid(e: torch.Tensor, y: torch.Tensor, ds, n: int, seed: int, image_size: int, k: int = 8):
    """The retrieval grid of `n` seeded queries of `ds` with embeddings `e`: (figure, the grid as records,
    the generator that drew the queries, to draw more from)."""
    idx, sims = nearest(e, k)
    g = torch.Generator().manual_seed(seed)
    queries = torch.randperm(e.shape[0], generator=g)[:n].tolist()
    same = [(y[idx[q]] == y[q]).tolist() for q in queries]
    fig = fg.retrieval_grid(
        [_thumb(ds.files[q], image_size) for q in queries],
        [[_thumb(ds.files[j], image_size) for j in idx[q].tolist()] for q in queries],
        same, [sims[q].tolist() for q in queries], [ds.class_names[y[q]] for q in queries])
    grid = [{"query": q, "label": int(y[q]), "neighbours": idx[q].tolist(), "labels": y[idx[q]].tolist(),
             "same": same[i], "similarity": sims[q].tolist()} for i, q in enumerate(queries)]
    return fig, grid, g


def retrieval(model, loader, ds, folder: Path, image_size: int, n: int, seed: int, features: bool) -> dict:
    from recogfast.metrics import retrieval_metrics

    e, y = _outputs(model, loader, features)
    metrics = retrieval_metrics(e, y, RECALL_KS)
    fig, grid, g = neighbour_grid(e, y, ds, n, seed, image_size)
    files = {"grid": fg.save(fig, folder / "retrieval_grid.png")}
    recalls = [metrics[f"recall@{k}"] for k in RECALL_KS]
    files["recall"] = fg.save(fg.recall_curve(RECALL_KS, recalls, "Recall@K"), folder / "recall_at_k.png")
    pts, method = _pca2(e)
    thumbs = [(i, _thumb(ds.files[i], 32)) for i in torch.randperm(e.shape[0], generator=g)[:12].tolist()]
    files["map"] = fg.save(fg.embedding_map(pts, y, thumbs, f"embeddings ({method}), coloured by class"),
                           folder / "embedding_map.png")
    with open(folder / "retrieval_grid.json", "w") as f:
        json.dump(grid, f, indent=1)
    return {"recall": dict(zip(RECALL_KS, recalls)), "images": int(y.numel()), "files": files, "method": method}


def why_section(model, loader, ds, folder: Path) -> dict:
    """Grad-CAM / guided backprop through Captum, or the reason it is missing."""
    try:
        import captum  # noqa: F401
    except ImportError:
        return {"missing": "needs Captum: pip install recogfast[viz]"}
    from recogfast.report.why import one_per_class, why_figure

    images, labels = one_per_class(loader)
    model = model.float()
    fig = why_figure(model, images.to(next(model.parameters()).device), labels.to(next(model.parameters()).device),
                     [ds.class_names[c] for c in labels.tolist()])
    return {"file": fg.save(fig, folder / "why.png")}


def attention_section(model, loader, folder: Path) -> dict:
    """CUBS gate pictures (empty for models without CUBS blocks)."""
    from recogfast.report.gates import gate_figure, gate_maps
    from recogfast.report.why import _show, one_per_class

    images, _ = one_per_class(loader, limit=4)
    images = images.to(next(model.parameters()).device)
    figs = gate_figure(images, gate_maps(model.float(), images), _show)
    return {k: fg.save(f, folder / f"gates_{k}.png") for k, f in figs.items()}


def report_folder(checkpoint: str = "best", split: str = "val") -> str:
    """``report`` for best.pt on val (what training writes), else named by both, so that no report
    replaces another: ``report-test``, ``report-last``, ``report-test-last``."""
    return "report" + ("" if split == "val" else f"-{split}") + ("" if checkpoint == "best" else f"-{checkpoint}")


def make_report(run: str | os.PathLike, checkpoint: str = "best", split: str | None = None, n: int = 16,
                device: str | None = None) -> Path:
    """Write ``run/report/`` (best.pt on val; others: ``report_folder``) and return the path of its
    ``index.html``. `split`: "val" (default when the run has one) or "test" (read only when asked)."""
    t0 = time.perf_counter()
    run = Path(run)
    if not (run / "summary.json").exists():
        raise ValueError(f"{run} is not a finished run (no summary.json)")
    with open(run / "summary.json") as f:
        summary = json.load(f)
    split = split or "val"  # the test split only when asked
    folder = run / report_folder(checkpoint, split)
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    rows = _rows(run / "log.csv")
    sections = {"curves": training_curves(run, rows, summary, folder)}
    if summary.get("config"):
        from recogfast.report.augment import augmented_section

        sections["augmented"] = augmented_section(summary["config"], folder)
    loaded = _load(run, checkpoint, split, device)
    note = None
    if loaded is None:
        note = f"this run has no {split} split: pass --split test to look at the test split"
    else:
        cfg, model, ds, loader, epoch = loaded
        torch.set_grad_enabled(False)
        try:
            task = get_task(cfg.task)
            features = task.split_features(cfg, split)
            if task.output == "sigmoid":
                from recogfast.report.tasks import multilabel

                sections["multilabel"] = multilabel(model, loader, ds, folder, cfg.image_size, _thumb)
            elif task.output == "softmax" and not features:
                sections["classification"] = classification(model, loader, ds, folder, cfg.image_size)
            else:
                sections["retrieval"] = retrieval(model, loader, ds, folder, cfg.image_size, n, cfg.seed, features)
        finally:
            torch.set_grad_enabled(True)
        if task.output == "softmax" and not features:
            sections["why"] = why_section(model, loader, ds, folder)
        sections["attention"] = attention_section(model, loader, folder)
        sections["evaluated"] = {"checkpoint": f"{checkpoint}.pt", "epoch": epoch, "split": split}
    from recogfast.report.tasks import verification
    from recogfast.report.tensorboard import report_to_tensorboard

    sections["verification"] = verification(run, folder)  # the results of `recogfast verify`, if any
    sections["tensorboard"] = report_to_tensorboard(run, folder, summary, (sections.get("evaluated") or {}).get("epoch"))
    sections["seconds"] = time.perf_counter() - t0
    return write_page(folder, run, summary, sections, note)
