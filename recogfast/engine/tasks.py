"""The two training tasks built from one flat configuration: classification and retrieval.

``run_train(RunConfig(...))`` builds the datasets, loaders, model, loss, optimizer and schedule, then
runs :class:`~recogfast.engine.Trainer`. Under ``torchrun`` (``WORLD_SIZE`` > 1) it joins the process
group (NCCL on GPUs, gloo on CPUs), shards the loaders and evaluates on every rank's share of the test
set, gathering the embeddings / counts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from recogfast.engine.checkpoint import seed_everything
from recogfast.engine.schedule import build_optimizer, build_scheduler
from recogfast.engine.trainer import Trainer, TrainerOptions
from recogfast.metrics import AccuracyMeter, retrieval_metrics

log = logging.getLogger("recogfast")

TASKS = ("classify", "retrieval")
DATASETS = ("shapes196", "tiny-imagenet", "cars196")


@dataclass
class RunConfig:
    task: str = "classify"
    dataset: str = "shapes196"
    data: str | None = None  # dataset root (Shapes196: cache folder, optional)
    model: str = "resnet18"
    out: str = "runs/run"
    image_size: int | None = None  # default: the dataset's (64 Tiny ImageNet / Shapes196, 224 Cars196)
    stem: str | None = None  # default: "small" for image_size <= 64, else "imagenet"
    attn_impl: str = "auto"
    weights: str | None = None
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float | None = None  # default 0.1 × batch/256 (SGD), 1e-3 (AdamW)
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    step_size: int = 30
    gamma: float = 0.1
    plateau_patience: int = 3
    label_smoothing: float = 0.1
    crop_scale: float = 0.08  # smallest area fraction of the train crop (SPEC: 0.08)
    patience: int | None = None
    min_delta: float = 0.0
    amp: str = "auto"  # auto = bf16 on CUDA, none on CPU
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    device: str | None = None
    backend: str = "auto"
    num_workers: int | None = None
    steps_per_epoch: int | None = None
    # retrieval
    embedding_dim: int = 512
    m_per_class: int = 4
    ms_alpha: float = 2.0
    ms_beta: float = 50.0
    ms_base: float = 0.5
    ms_epsilon: float = 0.1
    mining: str = "ms"
    xbm_size: int = 0  # cross-batch memory entries (0 = off)
    gather_across_ranks: bool = True
    # Shapes196
    images_per_class: int = 40
    progress: bool = True

    def resolved(self) -> RunConfig:
        c = dataclasses.replace(self)
        if c.task not in TASKS:
            raise ValueError(f"unknown task {c.task!r}; choose one of: {', '.join(TASKS)}")
        if c.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {c.dataset!r}; choose one of: {', '.join(DATASETS)}")
        if c.device is None:
            c.device = "cuda" if torch.cuda.is_available() else "cpu"
        if c.image_size is None:
            c.image_size = 224 if c.dataset == "cars196" else 64
        if c.stem is None:
            c.stem = "small" if c.image_size <= 64 else "imagenet"
        if c.amp == "auto":
            c.amp = "bf16" if c.device.startswith("cuda") else "none"
        if c.lr is None:
            c.lr = 0.1 * c.batch_size / 256 if c.optimizer == "sgd" else 1e-3
        return c


# ---------------------------------------------------------------------------------------- data
def build_datasets(cfg: RunConfig):
    """(train, test) datasets for the task: classification uses each dataset's labelled test split,
    retrieval the disjoint-class split (Cars196 and Shapes196: 98 train / 98 test classes)."""
    from recogfast import data

    protocol = "classification" if cfg.task == "classify" else "retrieval"
    if cfg.dataset == "shapes196":
        kw = dict(cache_dir=cfg.data, protocol=protocol, images_per_class=cfg.images_per_class, image_size=64, seed=0)
        return data.Shapes196(split="train", **kw), data.Shapes196(split="test", **kw)
    if cfg.data is None:
        raise ValueError(f"--data is required for {cfg.dataset}")
    if not os.path.isdir(cfg.data):
        raise FileNotFoundError(f"data folder not found: {cfg.data}")
    if cfg.dataset == "tiny-imagenet":
        if cfg.task == "retrieval":
            raise ValueError("retrieval needs disjoint train/test classes: use cars196 or shapes196")
        return data.TinyImageNet(cfg.data, "train"), data.TinyImageNet(cfg.data, "val")
    return data.Cars196(cfg.data, "train", protocol), data.Cars196(cfg.data, "test", protocol)


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build_loaders(cfg: RunConfig, train_ds, test_ds):
    from recogfast.data import MPerClassSampler, build_loader

    rank, world = _dist_info()
    common = dict(image_size=cfg.image_size, backend=cfg.backend, device=cfg.device, num_workers=cfg.num_workers,
                  channels_last=cfg.channels_last, crop_scale=cfg.crop_scale)
    if cfg.task == "retrieval":
        sampler = MPerClassSampler(train_ds.labels, cfg.m_per_class, cfg.batch_size, seed=cfg.seed,
                                   shard_id=rank, num_shards=world)
        train = build_loader(train_ds, train=True, batch_size=cfg.batch_size, sampler=sampler, seed=cfg.seed, **common)
    else:
        train = build_loader(train_ds, train=True, batch_size=cfg.batch_size, seed=cfg.seed, shard_id=rank,
                             num_shards=world, **common)
    test = build_loader(test_ds, train=False, batch_size=max(cfg.batch_size, 256), shard_id=rank, num_shards=world,
                        **common)
    return train, test


# ---------------------------------------------------------------------------------------- evaluation
def _gather(t: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, concatenated in rank order (sizes may differ)."""
    rank, world = _dist_info()
    if world == 1:
        return t
    sizes = [torch.zeros((), dtype=torch.int64, device=t.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor(t.shape[0], device=t.device))
    top = int(max(s.item() for s in sizes))
    padded = torch.zeros((top, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(s)] for o, s in zip(out, sizes)])


@torch.no_grad()
def embed(model: nn.Module, loader, features: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (or pooled features with ``features=True``) and labels of every item of `loader`
    (gathered over DDP ranks), as float32."""
    was = model.training
    model.eval()
    outs, labels = [], []
    for images, y in loader:
        out = model.forward_features(images) if features else model(images)
        outs.append(out.float())
        labels.append(y)
    model.train(was)
    e = torch.cat(outs) if outs else torch.zeros(0, 1)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    return _gather(e), _gather(y.to(e.device))


@torch.no_grad()
def raw_pixels(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-transformed images flattened: the raw-pixel retrieval baseline."""
    outs, labels = [], []
    for images, y in loader:
        outs.append(images.float().flatten(1))
        labels.append(y)
    e, y = torch.cat(outs), torch.cat(labels)
    return _gather(e), _gather(y.to(e.device))


def classification_eval(loader, label_smoothing: float = 0.0):
    def run(model: nn.Module) -> dict[str, float]:
        meter = AccuracyMeter((1, 5))
        loss_sum = torch.zeros((), dtype=torch.float64)
        for images, y in loader:
            logits = model(images).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double().cpu()
            meter.update(logits, y)
        if dist.is_available() and dist.is_initialized():
            t = loss_sum.to(next(model.parameters()).device)
            dist.all_reduce(t)
            loss_sum = t.cpu()
        meter.all_reduce()
        out = meter.compute()
        out["loss"] = float(loss_sum) / max(1, meter.count)
        return out

    return run


def retrieval_eval(loader, ks=(1, 2, 4, 8), features: bool = False):
    def run(model: nn.Module) -> dict[str, float]:
        e, y = embed(model, loader, features=features)
        m = retrieval_metrics(e, y, ks)
        m.pop("num_queries", None)
        return m

    return run


# ---------------------------------------------------------------------------------------- runs
def kernels_used(device: str, amp: str) -> dict[str, str]:
    """Which implementation each fused op runs for this device and activation dtype."""
    from recogfast import _impl
    from recogfast.ops import FUSED_OPS

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
    dev = torch.device(device).type
    return {op: _impl.describe(dev, dtype) for op in FUSED_OPS}


def setup_distributed(device: str) -> tuple[int, int, str]:
    """Join the torchrun process group when WORLD_SIZE > 1; returns (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank()
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return rank, world, device


def build_model(cfg: RunConfig, num_classes: int | None) -> nn.Module:
    from recogfast.models import create_model

    if cfg.task == "classify":
        return create_model(cfg.model, num_classes=num_classes, stem=cfg.stem, attn_impl=cfg.attn_impl, weights=cfg.weights)
    return create_model(cfg.model, embedding_dim=cfg.embedding_dim, stem=cfg.stem, attn_impl=cfg.attn_impl, weights=cfg.weights)


def build_loss(cfg: RunConfig) -> nn.Module:
    if cfg.task == "classify":
        return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    from recogfast.losses import CrossBatchMemory, MultiSimilarityLoss

    _, world = _dist_info()
    loss = MultiSimilarityLoss(alpha=cfg.ms_alpha, beta=cfg.ms_beta, base=cfg.ms_base, epsilon=cfg.ms_epsilon,
                               mining=cfg.mining, gather_across_ranks=cfg.gather_across_ranks and world > 1)
    if cfg.xbm_size > 0:
        loss = CrossBatchMemory(loss, cfg.embedding_dim, memory_size=cfg.xbm_size)
    return loss


def build_trainer(cfg: RunConfig, callbacks=None) -> Trainer:
    """Everything a run needs (data, loaders, model, loss, optimizer, schedule), ready to ``fit()``.

    Input problems (unknown names, missing folders, unreadable weights) surface here, before training.
    """
    cfg = cfg.resolved()
    rank, world, cfg.device = setup_distributed(cfg.device)
    seed_everything(cfg.seed + rank)
    train_ds, test_ds = build_datasets(cfg)
    train_loader, test_loader = build_loaders(cfg, train_ds, test_ds)
    # the model is initialised identically on every rank (DDP also broadcasts it)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, train_ds.num_classes)
    if rank == 0 and getattr(model, "load_report", None) is not None:
        print(model.load_report.summary(), flush=True)
    loss = build_loss(cfg)
    optimizer = build_optimizer(model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    steps = len(train_loader) if cfg.steps_per_epoch is None else min(len(train_loader), cfg.steps_per_epoch)
    monitor, mode = ("top1", "max") if cfg.task == "classify" else ("recall@1", "max")
    scheduler, interval = build_scheduler(optimizer, cfg.schedule, cfg.epochs, steps, cfg.warmup_epochs,
                                          cfg.step_size, cfg.gamma, cfg.plateau_patience, mode)
    evaluate = classification_eval(test_loader) if cfg.task == "classify" else retrieval_eval(test_loader)
    config = dataclasses.asdict(cfg)
    config.update(world_size=world, train_images=len(train_ds), test_images=len(test_ds),
                  num_classes=train_ds.num_classes, backend_used=getattr(train_loader, "backend", "?"),
                  kernels=kernels_used(cfg.device, cfg.amp))
    options = TrainerOptions(epochs=cfg.epochs, monitor=monitor, mode=mode, patience=cfg.patience,
                             min_delta=cfg.min_delta, amp=cfg.amp, channels_last=cfg.channels_last,
                             compile=cfg.compile, steps_per_epoch=cfg.steps_per_epoch, progress=cfg.progress,
                             config=config)
    trainer = Trainer(model, loss, train_loader, evaluate, optimizer, scheduler, interval, out_dir=cfg.out,
                      options=options, device=cfg.device, callbacks=callbacks)
    trainer.test_loader = test_loader
    trainer.datasets = (train_ds, test_ds)
    return trainer


def run_train(cfg: RunConfig, resume: bool | str = False, callbacks=None) -> tuple[dict[str, Any], Trainer]:
    """Train one run described by `cfg`; returns the summary (also written to ``<out>/summary.json``)
    and the trainer (its model, history and step losses)."""
    trainer = build_trainer(cfg, callbacks)
    return trainer.fit(resume=resume), trainer
