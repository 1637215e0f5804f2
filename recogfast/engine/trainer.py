"""The training loop: one epoch of steps, an evaluation, a checkpoint, early stopping, logs.

Task-agnostic: a classification run passes cross-entropy and an accuracy evaluation, a retrieval run
the Multi-Similarity loss (possibly inside a cross-batch memory) and a Recall@K evaluation.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from recogfast.engine.checkpoint import (
    atomic_save, clean_temp_files, load_checkpoint, repair_best, rng_state, set_rng_state,
)
from recogfast.engine.finetune import build_ema, scored_weights
from recogfast.engine.graphs import CapturedStep, check_capturable, compile_mode, plain_state
from recogfast.engine.logs import CSVLog, TensorBoard, plot_history
from recogfast.engine.loop import Diverged, EpochLoop, ResumeError, StopTraining  # noqa: F401  (public here too)

# config fields a resumed run must share with its checkpoint (the model's shape and what it learns)
RESUME_FIELDS = ("task", "dataset", "model", "protocol", "num_classes", "image_size", "stem", "embedding_dim",
                 "xbm_size", "ema", "accumulate")


def _epoch_value(key: str, value) -> str:
    """An epoch line's number: metrics and losses with 4 decimals (as the TEST line), throughput whole."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.0f}" if key.endswith("img_per_s") else f"{value:.4f}"


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


@dataclass
class TrainerOptions:
    epochs: int = 10
    monitor: str = "top1"  # key of the evaluation's result dict
    mode: str = "max"  # "max" or "min"
    patience: int | None = None  # early stopping: epochs without improvement; None = never stop early
    min_delta: float = 0.0
    amp: str = "none"  # "bf16" | "fp16" | "none"
    channels_last: bool = False
    compile: bool | str = False  # a torch.compile mode (graphs.COMPILE_MODES); True = "default", False = "none"
    cuda_graphs: bool = False  # the whole step captured in CUDA graphs (recogfast.engine.graphs)
    grad_clip: float | None = None
    accumulate: int = 1  # optimizer steps every N batches (loss / N; the schedule counts optimizer steps)
    ema_decay: float | None = None  # weight EMA (val and test score it); None = off
    steps_per_epoch: int | None = None  # cap on steps per epoch (None = whole loader)
    progress: bool = True
    tensorboard: bool = True
    plots: bool = True
    config: dict[str, Any] = field(default_factory=dict)  # saved in checkpoints and the summary
    run_config: dict[str, Any] | None = None  # written to <out>/config.json (what `recogfast train --config` reads)


def _is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class Trainer(EpochLoop):
    """Train `model` with `loss_fn(model(images), labels)` over `train_loader`; evaluate each epoch.

    Args:
        model: the network (unwrapped; DDP wrapping is done here when a process group is initialised).
        loss_fn: callable ``(outputs, labels) -> scalar``; when it is an ``nn.Module`` its state (a
            cross-batch memory, for example) is checkpointed too.
        train_loader: iterable of ``(images, labels)``; ``set_epoch(epoch)`` is called on it (or on
            its ``sampler``) when it has one, so shuffling is a function of (seed, epoch).
        evaluate: ``evaluate(model) -> dict`` of validation metrics (computed on the eval model, no
            grad), every epoch: ``best.pt``, early stopping and the plateau schedule follow it. None: no
            validation; then every epoch is "best" (``best.pt`` is the last epoch).
        test_evaluate: ``test_evaluate(model) -> dict``, run once at the end of ``fit`` on the chosen
            checkpoint (``best.pt``: best on val, or the last epoch without val); the summary's ``test``.
        optimizer, scheduler, scheduler_interval: from :mod:`recogfast.engine.schedule`.
        out_dir: run folder: ``last.pt``, ``best.pt``, ``log.csv``, ``summary.json``, plots, ``tb/``.
        callbacks: ``fn(trainer, event, **info)`` for events "epoch_start" (after ``model.train()``),
            "step" (every batch; ``optimizer_step`` says whether the optimizer stepped) and "epoch".
        batch_transform: ``(images, labels) -> (images, labels)`` on the device before the forward
            (MixUp / CutMix: soft labels for the loss).
        data: what the run was built from, for callers that need it after training (the demo, tests):
            ``recogfast.engine.build.RunData`` (datasets and the val/test loaders), or None.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        train_loader: Iterable,
        evaluate: Callable[[nn.Module], dict] | None,
        optimizer: torch.optim.Optimizer,
        scheduler=None,
        scheduler_interval: str = "none",
        out_dir: str | os.PathLike = "runs/run",
        options: TrainerOptions | None = None,
        device: str | torch.device = "cpu",
        callbacks: list[Callable] | None = None,
        test_evaluate: Callable[[nn.Module], dict] | None = None,
        batch_transform: Callable | None = None,
        data: Any = None,
    ):
        self.opt = options or TrainerOptions()
        if self.opt.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {self.opt.amp!r}")
        if self.opt.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.opt.mode!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        if self.opt.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = loss_fn.to(self.device) if isinstance(loss_fn, nn.Module) else loss_fn
        self.train_loader = train_loader
        self.evaluate_fn = evaluate
        self.test_evaluate_fn = test_evaluate
        self.test_result: dict[str, Any] | None = None
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.out_dir = Path(out_dir)
        self.callbacks = list(callbacks or [])
        self.batch_transform = batch_transform
        self.data = data
        self.distributed = dist.is_available() and dist.is_initialized()
        self.is_main = _is_main()
        if self.opt.cuda_graphs:
            check_capturable(self)
        self.rewrap()
        self.ema = None
        if self.opt.ema_decay is not None:
            self.ema = build_ema(self.model, self.opt.ema_decay)
        amp_dtype = AMP_DTYPES[self.opt.amp]
        self.autocast = (
            (lambda: torch.autocast(self.device.type, dtype=amp_dtype)) if amp_dtype is not None else nullcontext
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.opt.amp == "fp16")
        # state that a checkpoint carries
        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.history: list[dict] = []
        self.step_losses: list[float] = []  # this process's losses, for tests and the progress bar
        self.stopped_early = False

    def rewrap(self) -> None:
        """(Re)build the training wrapper: DDP (which registers the parameters that take gradients when
        it is built: again after an unfreeze) and ``torch.compile``; ``--cuda-graphs`` captures again."""
        self.captured: CapturedStep | None = None
        self.train_model: nn.Module = self.model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        mode = compile_mode(self.opt.compile)
        if mode is not None:
            self.train_model = torch.compile(self.train_model, **({} if mode == "default" else {"mode": mode}))

    @property
    def eval_model(self) -> nn.Module:
        """What val and test score: the EMA weights with ``ema_decay``, else the model."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "loss": self.loss_fn.state_dict() if isinstance(self.loss_fn, nn.Module) else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "history": self.history,
            "rng": rng_state(),
            "config": self.opt.config,
        }
        sampler = self._sampler()
        if sampler is not None and hasattr(sampler, "state_dict"):
            state["sampler"] = sampler.state_dict()
        if self.opt.cuda_graphs:  # float learning rates and the optimizer's own flags, as an eager run saves
            state = plain_state(self, state)
        return state

    def _captured(self) -> CapturedStep:
        """The captured step (built, and captured at its first batch, after each ``rewrap``)."""
        if self.captured is None:
            self.captured = CapturedStep(self)
        return self.captured

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if isinstance(self.loss_fn, nn.Module) and state.get("loss") is not None:
            self.loss_fn.load_state_dict(state["loss"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        sampler = self._sampler()
        if sampler is not None and hasattr(sampler, "load_state_dict") and state.get("sampler") is not None:
            sampler.load_state_dict(state["sampler"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_value = state.get("best_value")
        self.best_epoch = state.get("best_epoch")
        self.bad_epochs = int(state.get("bad_epochs", 0))
        self.stopped_early = bool(state.get("stopped_early", False))
        self.history = list(state.get("history", []))
        set_rng_state(state["rng"])

    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Restore from `path` (default ``<out_dir>/last.pt``); False when there is nothing to resume.
        A checkpoint of another run (model, task, dataset... see ``RESUME_FIELDS``) is a ``ResumeError``
        naming the field that differs."""
        path = Path(path) if path is not None else self.out_dir / "last.pt"
        if not path.exists():
            return False
        state = load_checkpoint(path)
        saved = state.get("config") or {}
        for key in RESUME_FIELDS:
            if key in saved and key in self.opt.config and saved[key] != self.opt.config[key]:
                raise ResumeError(f"--resume: {path} is a checkpoint of another run: {key} is {saved[key]!r} there, "
                                  f"{self.opt.config[key]!r} here")
        try:
            self.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ResumeError(f"--resume: {path} does not fit this run: {first}") from None
        return True

    def save(self, best: bool) -> None:
        """``best.pt`` first, then ``last.pt``, each atomically (temp file + rename): a kill at any moment
        leaves ``best.pt`` either the previous best or this epoch's, and ``last.pt`` never ahead of it.
        (Killed between the two, ``best.pt`` holds the epoch that the resumed run repeats exactly.)"""
        if not self.is_main:
            return
        state = self.state_dict()
        if best:
            atomic_save(state, self.out_dir / "best.pt")
        atomic_save(state, self.out_dir / "last.pt")

    def clean_leftovers(self) -> list[str]:
        """Remove the temp files of writes that a kill interrupted (``.last.pt.*.tmp``...); their names."""
        return clean_temp_files(self.out_dir) if self.is_main else []

    def repair_best(self) -> None:
        """After a resume: ``best.pt`` missing (or older) while ``last.pt`` says its epoch is the best:
        ``best.pt`` is written again from ``last.pt``."""
        if self.is_main and self.best_epoch is not None and self.best_epoch == self.epoch:
            repair_best(self.out_dir, self.epoch)

    # ------------------------------------------------------------------ loop
    def _improved(self, value: float) -> bool:
        if self.best_value is None or math.isnan(self.best_value):
            return not math.isnan(value)
        if self.opt.mode == "max":
            return value > self.best_value + self.opt.min_delta
        return value < self.best_value - self.opt.min_delta

    def fit(self, resume: bool | str | os.PathLike = False) -> dict[str, Any]:
        """Train until `epochs` or early stopping; returns (and writes) the summary. ``resume=True``
        continues ``<out_dir>/last.pt`` (``ResumeError`` when there is none), a path that checkpoint."""
        self.clean_leftovers()
        if resume and not self.resume(None if resume is True else resume):
            where = self.out_dir / "last.pt" if resume is True else resume
            raise ResumeError(f"--resume: nothing to resume: {where} not found (drop --resume to start a new run)")
        if resume:
            self.repair_best()
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.opt.run_config is not None:
                _write_json(self.out_dir / "config.json", self.opt.run_config)
        csv_log = CSVLog(self.out_dir / "log.csv") if self.is_main else None
        if csv_log is not None and self.history:
            csv_log.load(self.history)
        tb = TensorBoard(self.out_dir / "tb", enabled=self.opt.tensorboard and self.is_main)
        t0 = time.perf_counter()
        try:
            while self.epoch < self.opt.epochs and not self.stopped_early:
                tick = time.perf_counter()
                row: dict[str, Any] = {"epoch": self.epoch + 1}
                row.update(self.train_one_epoch())
                row["lr"] = float(self.optimizer.param_groups[0]["lr"])  # a tensor under --cuda-graphs
                self._check_weights()
                metrics = {}
                if self.evaluate_fn is not None:
                    self.eval_model.eval()
                    try:
                        with torch.no_grad(), self.autocast():
                            metrics = self.evaluate_fn(self.eval_model)
                    except Diverged:
                        raise
                    except FloatingPointError as err:  # the metrics refuse non-finite outputs
                        raise Diverged(self._diverged_text(f"validation: {str(err).splitlines()[0]}")) from None
                    row.update({f"val_{k}": v for k, v in metrics.items()})
                row["epoch_s"] = time.perf_counter() - tick
                self.epoch += 1
                value = metrics.get(self.opt.monitor)
                best = False
                if value is not None:
                    if self._improved(float(value)):
                        self.best_value, self.best_epoch, self.bad_epochs, best = float(value), self.epoch, 0, True
                    else:
                        self.bad_epochs += 1
                    if self.scheduler is not None and self.scheduler_interval == "plateau":
                        self.scheduler.step(float(value))
                    if self.opt.patience is not None and self.bad_epochs >= self.opt.patience:
                        self.stopped_early = True
                if self.scheduler is not None and self.scheduler_interval == "epoch":
                    self.scheduler.step()
                row["best"] = int(best)
                self.history.append(row)
                self.save(best=best or (value is None))
                if csv_log is not None:
                    csv_log.append(row)
                tb.scalars(row, self.epoch)
                self._emit("epoch", row=row)
                if self.is_main and self.opt.progress:
                    shown = {k: v for k, v in row.items() if k in ("train_loss", "train_img_per_s") or k.startswith("val_")}
                    print(f"epoch {self.epoch}/{self.opt.epochs}  " + "  ".join(
                        f"{k} {_epoch_value(k, v)}" for k, v in shown.items()) + ("  *best" if best else ""), flush=True)
        except StopTraining:
            pass
        except Diverged as err:
            if self.is_main:  # the summary says why the run stopped; the checkpoints stay as they were
                summary = self.summary(time.perf_counter() - t0)
                summary["diverged"] = str(err)
                _write_json(self.out_dir / "summary.json", summary)
            raise
        finally:
            tb.close()
        if self.test_evaluate_fn is not None and self.epoch > 0:
            self.test_result = self.run_test()
        summary = self.summary(time.perf_counter() - t0)
        if self.is_main:
            summary["plots"] = plot_history(self.history, self.out_dir, (self.opt.config or {}).get("model"),
                                            self.chosen_epoch()) if self.opt.plots else []
            _write_json(self.out_dir / "summary.json", summary)
        return summary

    def chosen_epoch(self) -> int:
        """The epoch whose model is the run's result: the best on val, else (no val) the last."""
        if self.evaluate_fn is not None and self.best_epoch is not None:
            return int(self.best_epoch)
        return self.epoch

    def run_test(self) -> dict[str, Any]:
        """Score the chosen checkpoint on the test split (once, at the end of ``fit``). The model is
        put back to the last epoch's weights afterwards."""
        epoch = self.chosen_epoch()
        last = None
        scored = self.eval_model
        if epoch != self.epoch:
            if self.distributed:
                dist.barrier()  # rank 0 wrote best.pt
            last = {k: v.detach().clone() for k, v in scored.state_dict().items()}
            best = load_checkpoint(self.out_dir / "best.pt")
            scored.load_state_dict(scored_weights(best))
        scored.eval()
        with torch.no_grad(), self.autocast():
            metrics = self.test_evaluate_fn(scored)
        if last is not None:
            scored.load_state_dict(last)
        chosen = f"best val {self.opt.monitor}" if self.evaluate_fn is not None else "last epoch, no validation"
        return {"epoch": epoch, "chosen_by": chosen, **{k: float(v) for k, v in metrics.items()}}

    def summary(self, seconds: float) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        val = None
        if self.evaluate_fn is not None and self.best_epoch is not None:
            row = self.history[self.best_epoch - 1]
            val = {"epoch": self.best_epoch, **{k[4:]: v for k, v in row.items() if k.startswith("val_")}}
        speeds = [r["train_img_per_s"] for r in self.history if isinstance(r.get("train_img_per_s"), float)]
        return {
            "val": val,
            "test": self.test_result,
            "median_img_per_s": statistics.median(speeds) if speeds else None,
            "config": self.opt.config,
            "epochs_run": self.epoch,
            "global_step": self.global_step,
            "stopped_early": self.stopped_early,
            "monitor": self.opt.monitor,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "final": last,
            "seconds": seconds,
            "run_dir": str(self.out_dir),
        }


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)
