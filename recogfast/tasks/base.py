"""The Task interface: everything about *what* is trained that differs between tasks, asked for by
:func:`recogfast.engine.build.build_trainer` and by the commands that read a run back (eval, report,
verify, predict, search, export). The training loop, checkpoints, schedules, logs and fine-tuning
know no task (recogfast.engine).

A task answers:
- its data: which datasets it trains on, how val is carved out of the training split (whole classes or
  images), its training batches (a sampler), and whether the training split can give a batch;
- its model head and loss, and which fused ops the loss calls;
- its metrics: the val / test evaluators and what ``best`` means (``monitor``, ``mode``);
- what the model returns (``output``): ``"softmax"`` class logits, ``"sigmoid"`` per-class logits, or an
  L2-normalised ``"embedding"`` — which decides the report's sections, ``predict``'s output and the
  preprocessing description exported with the model.

Adding a task: one module with a :class:`Task` subclass, plus its line in ``recogfast/tasks/__init__.py``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

# Single-label datasets (recogfast.data); the multi-label ones are recogfast.tasks.multilabel's.
SINGLE_LABEL_DATASETS = ("shapes196", "tiny-imagenet", "cars196", "folder")


class Task:
    """Defaults are those of single-label classification; a task overrides what differs."""

    name: str = ""
    output: str = "softmax"  # "softmax" | "sigmoid" | "embedding": what the model returns
    monitor: tuple[str, str] = ("top1", "max")  # the val metric that chooses the best epoch, and its direction
    default_val_fraction: float = 0.1
    default_protocol: str = "classification"
    default_dataset: str = "shapes196"
    datasets: tuple[str, ...] = SINGLE_LABEL_DATASETS
    loss_ops: tuple[str, ...] = ()  # the fused ops its loss calls (recogfast.ops.FUSED_OPS names)
    val_holds_out_classes: bool = False  # val = whole training classes (retrieval) rather than images

    # ------------------------------------------------------------------ configuration
    takes_soft_labels: bool = False  # its loss takes MixUp / CutMix's soft labels

    def check(self, cfg) -> None:
        """Refuse a resolved configuration (dataset, protocol) this task cannot train (ValueError, one line)."""
        if cfg.dataset not in self.datasets:
            raise ValueError(f"{cfg.dataset} is multi-label: use `train multilabel`")
        if cfg.dataset == "tiny-imagenet" and cfg.protocol == "retrieval":
            raise ValueError("retrieval needs disjoint train/test classes: use --dataset cars196 or shapes196")

    # ------------------------------------------------------------------ data
    def build_datasets(self, cfg):
        """(train, val, test) datasets; val is None with ``val_fraction`` 0. `cfg` resolved."""
        from recogfast.engine.inputs import single_label_datasets

        return single_label_datasets(cfg, by_class=self.val_holds_out_classes)

    def train_sampler(self, cfg, train_ds, rank: int, world: int):
        """The training batches' sampler, or None for a shuffled shard of the images."""
        return None

    def check_train_split(self, cfg, train_ds, val_ds, world: int = 1) -> None:
        """Refuse a training split that gives no full batch per rank (ValueError naming both numbers)."""
        held, lower = _held_text(cfg, val_ds, self.val_holds_out_classes)
        ranks = f" over {world} ranks" if world > 1 else ""
        n = len(train_ds)
        per_rank = (n - n % world) // world
        if per_rank < cfg.batch_size:
            share = f" ({per_rank} per rank{ranks})" if world > 1 else ""
            raise ValueError(
                f"the training split has {n} images{share}{held}, fewer than one batch of --batch-size "
                f"{cfg.batch_size}: lower --batch-size to {per_rank} or less{lower}")

    def train_notes(self, cfg, train_ds) -> list[str]:
        """Lines printed before training about this task's use of the data."""
        return []

    # ------------------------------------------------------------------ model and loss
    def build_model(self, cfg, num_classes: int | None) -> nn.Module:
        from recogfast.models import create_model

        return create_model(cfg.model, num_classes=num_classes, stem=cfg.stem, attn_impl=cfg.attn_impl,
                            weights=cfg.weights)

    def build_loss(self, cfg, train_ds) -> nn.Module:
        raise NotImplementedError

    def batch_transform(self, cfg, num_classes: int):
        """A batch transform of the training batches (MixUp / CutMix), or None."""
        return None

    def config_extras(self, train_ds) -> dict[str, Any]:
        """What the checkpoint carries for this task beyond the configuration (class names)."""
        return {"class_names": list(train_ds.class_names)}

    # ------------------------------------------------------------------ metrics
    def split_features(self, cfg, split: str) -> bool:
        """Whether `split` is scored by the Recall@K of the model's pooled features instead of its head."""
        return False

    def evaluator(self, cfg, loader, ds, features: bool = False):
        """``model -> {metric: value}`` on `loader` (the images of `ds`)."""
        raise NotImplementedError

    def evaluators(self, cfg, val_loader, val_ds, test_loader, test_ds):
        """(val evaluator or None without a val split, test evaluator)."""
        val = self.evaluator(cfg, val_loader, val_ds, self.split_features(cfg, "val")) if val_loader is not None else None
        return val, self.evaluator(cfg, test_loader, test_ds, self.split_features(cfg, "test"))

    # ------------------------------------------------------------------ outputs
    def describe_output(self) -> dict[str, Any]:
        """What the model returns, for an exported model's preprocessing description."""
        return {"output": "logits", "activation": "softmax"}

    def probabilities(self, logits):
        """``predict``'s class probabilities from the model's outputs."""
        return logits.softmax(dim=1)


def _held_text(cfg, val_ds, by_class: bool) -> tuple[str, str]:
    """(", after holding out N images/classes for validation (...)", " or --val-fraction") or empty texts."""
    if val_ds is None:
        return "", ""
    unit, count = ("classes", val_ds.num_classes) if by_class else ("images", len(val_ds))
    return (f" after holding out {count} {unit} for validation (--val-fraction {cfg.val_fraction})",
            " or --val-fraction")
