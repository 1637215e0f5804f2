"""A run built from one flat configuration (:class:`RunConfig`): ``run_train(RunConfig(...))`` asks the run's
task (recogfast.tasks: classify, retrieval, multilabel) for its datasets, sampler, model, loss, metrics and
best-epoch rule, builds the loaders, optimizer and schedule, then runs :class:`~recogfast.engine.Trainer`. Every run has three splits: train, val (carved out of the
training split: ``val_fraction`` of each class's images for classification, of the training classes
for retrieval; 0 = none) and test. Only val steers training (best epoch, early stopping, plateau); the
chosen checkpoint is scored on test once, at the end. Under ``torchrun`` (``WORLD_SIZE`` > 1) it joins
the process group (NCCL on GPUs, gloo on CPUs), shards the loaders and evaluates on every rank's share,
gathering the embeddings / counts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from recogfast.engine.checkpoint import seed_everything
from recogfast.engine.schedule import build_optimizer, build_scheduler
from recogfast.engine.trainer import Trainer, TrainerOptions
from recogfast.engine.validate import check_combinations, check_out_folder, check_ranges
from recogfast.tasks import DATASETS, TASKS, get_task  # noqa: F401  (DATASETS, TASKS: the CLI's choices)

log = logging.getLogger("recogfast")

EMBEDDED = ("shapes196", "shapes-multi")  # generated, no --data needed
PROTOCOLS = ("classification", "retrieval")


@dataclass(frozen=True)
class RunData:
    """What `build_trainer` built the run from: (train, val, test) datasets (val None without a val split) and
    the val / test loaders (``Trainer.data``)."""

    datasets: tuple
    val_loader: Any
    test_loader: Any


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
    weights_partial: bool = False  # accept --weights that keep less than MIN_WEIGHTS_KEPT of the backbone
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
    # train augmentation after the crop, in this order (recogfast.data.augment.Augment; aa_*: RandAugment's,
    # None = 2 ops at magnitude 9); color_jitter: brightness/contrast/saturation strength; reprob: random erasing
    hflip: float = 0.5
    vflip: float = 0.0
    auto_augment: str = "none"
    aa_magnitude: int | None = None
    aa_num_ops: int | None = None
    color_jitter: float = 0.0
    reprob: float = 0.0
    patience: int | None = None
    min_delta: float = 0.0
    amp: str = "auto"  # auto = bf16 on CUDA, none on CPU
    channels_last: bool = True
    compile: bool | str = "none"  # a torch.compile mode: none, default, reduce-overhead, max-autotune (true = default)
    cuda_graphs: bool = False  # the whole training step captured in CUDA graphs (recogfast.engine.graphs)
    seed: int = 0
    device: str | None = None
    backend: str = "auto"
    num_workers: int | None = None
    on_error: str = "raise"  # unreadable images: "raise" (DataError naming the file) or "skip" (counted)
    steps_per_epoch: int | None = None
    # splits: val_fraction None = the task's default (0.1 of each class's images for classification,
    # 0.15 of the training classes for retrieval); 0 = no validation (the last epoch is the result).
    val_fraction: float | None = None
    split_seed: int = 0
    # which classes train: "classification" (all, the dataset's own test images) or "retrieval" (the
    # disjoint-class split; for classify: a classifier on the train classes whose test result is the
    # Recall@K of its pooled features on the test classes: the course's Task 4). None = the task's own.
    protocol: str | None = None
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
    # Shapes196 (images per class); shapes-multi: 20× this trainval, 5× this test images
    images_per_class: int = 40
    # fine-tuning (recogfast.engine.finetune): freeze the stem .. STAGE, a head learning-rate factor,
    # the epoch from which everything trains; weight EMA; MixUp / CutMix (Beta alpha, 0 = off);
    # gradient accumulation over N batches
    freeze: str | None = None
    head_lr_mult: float = 1.0
    unfreeze_at: int | None = None
    ema: float | None = None
    mixup: float = 0.0
    cutmix: float = 0.0
    accumulate: int = 1
    progress: bool = True

    def resolved(self) -> RunConfig:
        """The defaults filled in; every value checked (ranges: recogfast.engine.validate.RANGES)."""
        c = dataclasses.replace(self)
        check_ranges(c)
        task = get_task(c.task)
        if c.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {c.dataset!r}; choose one of: {', '.join(DATASETS)}")
        if c.device is None:
            c.device = "cuda" if torch.cuda.is_available() else "cpu"
        if c.image_size is None:
            c.image_size = 224 if c.dataset in ("cars196", "voc2007", "folder") else 64
        if c.stem is None:
            c.stem = "small" if c.image_size <= 64 else "imagenet"
        if c.amp == "auto":
            c.amp = "bf16" if c.device.startswith("cuda") else "none"
        if c.lr is None:
            c.lr = 0.1 * c.batch_size / 256 if c.optimizer == "sgd" else 1e-3
        if c.val_fraction is None:
            c.val_fraction = task.default_val_fraction
        if not 0.0 <= c.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must lie in [0, 1), got {c.val_fraction}")
        if c.val_fraction == 0 and c.patience is not None:
            raise ValueError("--patience needs a validation split: it cannot be used with --val-fraction 0")
        if c.val_fraction == 0 and c.schedule == "plateau":
            raise ValueError("--schedule plateau needs a validation split: it cannot be used with --val-fraction 0")
        if c.protocol is None:
            c.protocol = task.default_protocol
        if c.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {c.protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
        task.check(c)
        check_ranges(c)
        check_combinations(c)
        return c


from recogfast.engine import inputs  # noqa: E402  (the data half of a run; RunConfig is defined above)
from recogfast.engine.embed import embed, raw_pixels  # noqa: E402, F401  (build.embed, build.raw_pixels: the shared names)
from recogfast.engine.inputs import build_eval_loader, check_files, small_classes_note  # noqa: E402, F401


# ---------------------------------------------------------------------------------------- the run's task, asked
def build_datasets(cfg: RunConfig):
    """(train, val, test) datasets of the run's task; val is None with ``val_fraction`` 0. `cfg` resolved."""
    return get_task(cfg.task).build_datasets(cfg)


def build_model(cfg: RunConfig, num_classes: int | None) -> nn.Module:
    """The run's model (its task's head), with ``--weights`` checked to fill enough of the backbone."""
    model = get_task(cfg.task).build_model(cfg, num_classes)
    check_weights_kept(model, cfg.weights_partial)
    return model


def build_loss(cfg: RunConfig, train_ds=None) -> nn.Module:
    return get_task(cfg.task).build_loss(cfg, train_ds)


def check_train_split(cfg: RunConfig, train_ds, val_ds, world: int = 1) -> None:
    """Refuse a training split that gives no full batch per rank (ValueError; the CLI: one line, exit 2)."""
    get_task(cfg.task).check_train_split(cfg, train_ds, val_ds, world)


def val_split_note(cfg: RunConfig, train_ds, val_ds) -> str | None:
    return inputs.val_split_note(cfg, train_ds, val_ds, by_class=get_task(cfg.task).val_holds_out_classes)


def build_train_loader(cfg: RunConfig, train_ds, **override):
    """The run's training loader (its task's sampler, this rank's shard); `override`: build_loader arguments."""
    rank, world = inputs._dist_info()
    return inputs.build_train_loader(cfg, train_ds, get_task(cfg.task).train_sampler(cfg, train_ds, rank, world),
                                     **override)


# ---------------------------------------------------------------------------------------- runs
def kernels_used(device: str, amp: str, model: str | None = None, task: str | None = None) -> dict[str, str]:
    """Which implementation each fused op runs for this device and activation dtype; with `model` and
    `task`, only the ops that this model and loss call."""
    from recogfast import dispatch
    from recogfast.ops import FUSED_OPS

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
    dev = torch.device(device).type
    ops = list(FUSED_OPS)
    if model is not None:
        from recogfast.models import model_info

        attention = model_info(model)["attention"] or ""
        ops = (["se_gate"] if attention == "se" else []) + (["cubs_channel", "cubs_spatial"] if attention.startswith("cubs") else [])
        ops += list(get_task(task).loss_ops) if task is not None else []
    # the loss runs in float32 (the trainer casts the outputs)
    return {op: dispatch.describe(dev, torch.float32 if op == "ms_loss" else dtype) for op in ops}


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


MIN_WEIGHTS_KEPT = 0.5  # --weights must fill at least this fraction of the backbone (else --weights-partial)
_HEADS = ("fc.", "embedding.", "classifier.")


def check_weights_kept(model: nn.Module, partial: bool = False) -> None:
    """Refuse ``--weights`` that fill less than MIN_WEIGHTS_KEPT of the backbone (the model's tensors
    outside the classifier / embedding head and the attention blocks), unless `partial`."""
    report = getattr(model, "load_report", None)
    if report is None:
        return
    backbone = [k for k in model.state_dict() if not k.startswith(_HEADS) and ".attn." not in k]
    loaded = set(report.loaded)
    kept = sum(k in loaded for k in backbone)
    if backbone and kept < MIN_WEIGHTS_KEPT * len(backbone) and not partial:
        raise ValueError(f"--weights {report.path}: only {kept} of the backbone's {len(backbone)} tensors load "
                         f"({report.summary()}); pass --weights-partial to accept less than "
                         f"{MIN_WEIGHTS_KEPT:.0%}")


def saved_config(cfg: RunConfig, resolved: RunConfig) -> dict[str, Any]:
    """What ``config.json`` holds: the resolved configuration, except the machine-dependent choices
    (device, AMP) kept as asked, so ``recogfast train --config`` repeats the run on another machine."""
    out = dataclasses.asdict(resolved)
    out.update(device=cfg.device, amp=cfg.amp)
    out.pop("progress", None)
    return out


def build_trainer(cfg: RunConfig, callbacks=None) -> Trainer:
    """Everything a run needs (data, loaders, model, loss, optimizer, schedule), ready to ``fit()``.

    Input problems (unknown names, missing folders, unreadable weights, a training split smaller than
    one batch) surface here as ``ValueError`` / ``OSError``, before any model is built.
    """
    asked, cfg = cfg, cfg.resolved()
    task = get_task(cfg.task)
    check_out_folder(cfg.out)
    rank, world, cfg.device = setup_distributed(cfg.device)
    seed_everything(cfg.seed + rank)
    train_ds, val_ds, test_ds = build_datasets(cfg)
    check_train_split(cfg, train_ds, val_ds, world)
    note = val_split_note(cfg, train_ds, val_ds)
    if note and rank == 0:
        print(note, flush=True)
    bad = check_files((train_ds, val_ds, test_ds), cfg.on_error)  # all splits, before the first step
    if bad and rank == 0:
        print(f"note: {len(bad)} unreadable image files will be skipped (--on-error skip); first: {bad[0]}", flush=True)
    train_loader, val_loader, test_loader = inputs.build_loaders(
        cfg, train_ds, val_ds, test_ds, task.train_sampler(cfg, train_ds, rank, world))
    main = rank == 0
    backend = getattr(train_loader, "backend", "?")
    if main and cfg.progress:
        why = {"auto": "DALI imports" if backend == "dali" else "DALI is not installed"}.get(cfg.backend, "asked for")
        sizes = f"train {len(train_ds)} images / {train_ds.num_classes} classes, " + (
            f"val {len(val_ds)} / {val_ds.num_classes}, " if val_ds is not None else "no val (--val-fraction 0), ")
        print(f"data: {sizes}test {len(test_ds)} / {test_ds.num_classes}; {backend} backend ({why})", flush=True)
        from recogfast.data.augment import Augment

        print(f"augment: random resized crop (scale {cfg.crop_scale:g}-1), {Augment.of(cfg).describe()}", flush=True)
    for note in task.train_notes(cfg, train_ds) if main else ():
        print(note, flush=True)
    steps = len(train_loader) if cfg.steps_per_epoch is None else min(len(train_loader), cfg.steps_per_epoch)
    if main and cfg.steps_per_epoch is not None and cfg.steps_per_epoch > len(train_loader):
        print(f"note: --steps-per-epoch {cfg.steps_per_epoch} is more than an epoch holds ({len(train_loader)} "
              f"steps): each epoch runs {len(train_loader)} steps", flush=True)
    # the model is initialised identically on every rank (DDP also broadcasts it)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, train_ds.num_classes)
    if main and getattr(model, "load_report", None) is not None:
        print(model.load_report.summary(), flush=True)
    loss = build_loss(cfg, train_ds)
    optimizer = build_optimizer(model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                head_lr_mult=cfg.head_lr_mult)
    callbacks, mix = finetune_parts(cfg, model, train_ds.num_classes, callbacks)  # after the optimizer: it holds all
    monitor, mode = task.monitor  # what `best` means (retrieval: val MAP@R, recogfast/tasks/retrieval.py says why)
    steps = -(-steps // cfg.accumulate)  # the schedule counts optimizer steps
    scheduler, interval = build_scheduler(optimizer, cfg.schedule, cfg.epochs, steps, cfg.warmup_epochs,
                                          cfg.step_size, cfg.gamma, cfg.plateau_patience, mode)
    val_eval, test_eval = task.evaluators(cfg, val_loader, val_ds, test_loader, test_ds)
    kernels = kernels_used(cfg.device, cfg.amp, cfg.model, cfg.task)
    if main and cfg.progress:
        print("kernels: " + ("; ".join(f"{op} {how}" for op, how in kernels.items()) or "none (this model calls no fused op)"),
              flush=True)
    config = dataclasses.asdict(cfg)
    config.update(world_size=world, train_images=len(train_ds), val_images=len(val_ds) if val_ds is not None else 0,
                  test_images=len(test_ds), num_classes=train_ds.num_classes,
                  val_classes=val_ds.num_classes if val_ds is not None else 0, test_classes=test_ds.num_classes,
                  params=sum(p.numel() for p in model.parameters()), backend_used=backend, kernels=kernels)
    config.update(task.config_extras(train_ds))  # what the outputs mean (class names: recogfast predict, export)
    options = TrainerOptions(epochs=cfg.epochs, monitor=monitor, mode=mode, patience=cfg.patience,
                             min_delta=cfg.min_delta, amp=cfg.amp, channels_last=cfg.channels_last,
                             compile=cfg.compile, cuda_graphs=cfg.cuda_graphs, steps_per_epoch=cfg.steps_per_epoch,
                             progress=cfg.progress, accumulate=cfg.accumulate, ema_decay=cfg.ema,
                             config=config, run_config=saved_config(asked, cfg))
    trainer = Trainer(model, loss, train_loader, val_eval, optimizer, scheduler, interval, out_dir=cfg.out,
                      options=options, device=cfg.device, callbacks=callbacks, test_evaluate=test_eval,
                      batch_transform=mix, data=RunData((train_ds, val_ds, test_ds), val_loader, test_loader))
    return trainer


def finetune_parts(cfg: RunConfig, model: nn.Module, num_classes: int, callbacks=None):
    """(callbacks with the ``--freeze`` one first, the task's batch transform (MixUp/CutMix) or None)."""
    from recogfast.engine.finetune import Freezer

    callbacks = list(callbacks or [])
    if cfg.freeze is not None:
        callbacks.insert(0, Freezer(model, cfg.freeze, cfg.unfreeze_at))
    return callbacks, get_task(cfg.task).batch_transform(cfg, num_classes)


def run_train(cfg: RunConfig, resume: bool | str = False, callbacks=None) -> tuple[dict[str, Any], Trainer]:
    """Train one run described by `cfg`; returns the summary (also written to ``<out>/summary.json``)
    and the trainer (its model, history and step losses)."""
    trainer = build_trainer(cfg, callbacks)
    return trainer.fit(resume=resume), trainer
