"""``recogfast eval``: score a checkpoint on its run's test split (or, on request, its val split), with
the same splits, transforms and metrics as training; the result also goes into the run folder as
``eval-<split>[-features].json``. User errors are ``ValueError`` / ``OSError`` with one-line messages."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

import torch

from recogfast.engine import build
from recogfast.engine.finetune import scored_weights
from recogfast.metrics import retrieval_metrics
from recogfast.tasks import get_task


def _config(saved: dict, **override) -> build.RunConfig:
    known = {f.name for f in dataclasses.fields(build.RunConfig)}
    cfg = build.RunConfig(**{k: v for k, v in saved.items() if k in known})
    for k, v in override.items():
        if v is not None:
            setattr(cfg, k, v)
    return cfg


def eval_file_name(checkpoint: str, split: str, features: bool = False) -> str:
    """``eval-<split>[-features].json`` for best.pt, ``eval-<split>[-features]-<name>.json`` for another
    checkpoint (``eval-test-last.json``): one checkpoint's result never replaces another's."""
    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    return f"eval-{split}" + ("-features" if features else "") + ("" if stem == "best" else f"-{stem}") + ".json"


def evaluate_checkpoint(ckpt: dict, path: str, split: str = "test", features: bool = False,
                        baselines: bool = False, dataset: str | None = None, data: str | None = None,
                        device: str | None = None, batch_size: int = 256, backend: str = "auto",
                        num_workers: int | None = None) -> tuple[dict[str, Any], str]:
    """(result, path of the JSON written next to the checkpoint).

    ``features``: Recall@K / MAP@R of the pooled features (a classifier's) instead of its logits or
    embedding. A classifier trained on the disjoint-class split (``protocol="retrieval"``, Task 4) is
    always scored that way on test, whose classes it has not seen.
    """
    saved = ckpt.get("config") or {}
    cfg = _config(saved, dataset=dataset, data=data, device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
                  batch_size=batch_size, backend=backend)
    cfg.num_workers, cfg.weights, cfg.amp, cfg.patience, cfg.schedule = num_workers, None, "auto", None, "cosine"
    task = get_task(cfg.task)
    if features and task.output == "sigmoid":
        raise ValueError("--features scores Recall@K on single-label classes: a multilabel run is scored by mAP "
                         "(`recogfast verify` uses its pooled features for pairs)")
    if split == "val" and cfg.val_fraction == 0:
        raise ValueError(f"{path} was trained without a validation split (--val-fraction 0): use --split test")
    if features and task.output == "softmax" and cfg.protocol != "retrieval":
        if cfg.dataset != "tiny-imagenet":
            print("note: this classifier was trained on all classes, the test classes included: its feature Recall@K "
                  "is not a retrieval result (train it with --protocol retrieval for that)", file=sys.stderr)
        cfg.protocol = "retrieval"  # score its features on the disjoint-class split
    features = features or task.split_features(cfg, split)
    cfg = cfg.resolved()
    model = build.build_model(cfg, saved.get("num_classes"))
    try:
        model.load_state_dict(scored_weights(ckpt))  # the EMA weights when the run kept them
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not match its model: {str(err).splitlines()[0]}") from None
    _, val_ds, test_ds = build.build_datasets(cfg)
    ds = val_ds if split == "val" else test_ds
    loader = build.build_eval_loader(cfg, ds)
    retrieval = features or task.output == "embedding"
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    evaluator = None if retrieval else task.evaluator(cfg, loader, ds)

    def score(net: torch.nn.Module) -> dict[str, float]:
        net = net.to(cfg.device).eval()
        if cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast(torch.device(cfg.device).type, dtype=amp, enabled=amp is not None):
            if evaluator is not None:
                return evaluator(net)
            e, y = build.embed(net, loader, features=features or getattr(net, "embedding_dim", None) is None)
            return retrieval_metrics(e, y)

    result = {"checkpoint": path, "model": cfg.model, "dataset": cfg.dataset, "task": cfg.task, "split": split,
              "features": bool(features), "images": len(ds), "classes": ds.num_classes,
              "epoch": ckpt.get("epoch"), **score(model)}
    if baselines:
        torch.manual_seed(cfg.seed)  # the run's own initialisation
        result["baselines"] = {"untrained": score(build.build_model(cfg, saved.get("num_classes")))}
        if retrieval:
            result["baselines"]["raw_pixels"] = retrieval_metrics(*build.raw_pixels(loader))
    out = os.path.join(os.path.dirname(os.path.abspath(path)), eval_file_name(path, split, features))
    with open(out + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(out + ".tmp", out)
    return result, out
