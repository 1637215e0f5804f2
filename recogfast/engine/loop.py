"""One epoch of training steps (accumulation groups, DDP no_sync, EMA updates, MixUp/CutMix), the
divergence guard and the run-stopping exceptions; :class:`~recogfast.engine.trainer.Trainer` builds on
:class:`EpochLoop` (its state: model, optimizer, scaler, scheduler, loader, options)."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn

from recogfast.engine.logs import Progress


class Diverged(FloatingPointError):
    """Training produced a non-finite loss, weights or validation output: the run stops there.
    ``last.pt`` / ``best.pt`` keep the last finished epoch (never NaN weights). The CLI exits with 3."""


class ResumeError(ValueError):
    """``fit(resume=...)`` found nothing to resume, or a checkpoint of another run (one line)."""


class StopTraining(Exception):
    """Raised by a callback to end training after the current step: the unfinished epoch is not
    checkpointed (``last.pt`` stays at the last finished epoch), the summary is still written."""


class EpochLoop:
    """The per-epoch half of the Trainer (a mixin: it uses the Trainer's attributes)."""

    def _sampler(self):
        for obj in (self.train_loader, getattr(self.train_loader, "sampler", None), getattr(self.train_loader, "batch_sampler", None)):
            if obj is not None and hasattr(obj, "set_epoch"):
                return obj
        return None

    def _emit(self, event: str, **info) -> None:
        for cb in self.callbacks:
            cb(self, event, **info)

    def _steps_in_epoch(self) -> int | None:
        try:
            n = len(self.train_loader)
        except TypeError:
            n = None
        if self.opt.steps_per_epoch is not None:
            n = self.opt.steps_per_epoch if n is None else min(n, self.opt.steps_per_epoch)
        return n

    def train_one_epoch(self) -> dict[str, float]:
        self.train_model.train()
        self._emit("epoch_start")
        sampler = self._sampler()
        if sampler is not None:
            sampler.set_epoch(self.epoch)
        total = self._steps_in_epoch()
        accumulate = self.opt.accumulate
        if accumulate > 1 and total is None:
            raise ValueError("gradient accumulation needs a training loader with a length (or steps_per_epoch)")
        bar = Progress(total, f"epoch {self.epoch + 1}/{self.opt.epochs}", enabled=self.opt.progress and self.is_main)
        if self.opt.cuda_graphs:  # the whole step captured in CUDA graphs (recogfast.engine.graphs)
            loss_sum, loss_count = self._captured().epoch(bar, total)
        else:
            loss_sum, loss_count = self._eager_steps(bar, total)
        bar.close()
        if loss_count == 0:
            raise ValueError(f"epoch {self.epoch + 1} ran no optimizer step: the training loader yielded no batch "
                             f"(fewer samples than one batch?)")
        return {"train_loss": loss_sum / max(1, loss_count), "train_img_per_s": bar.throughput, "steps": loss_count}

    def _batches(self, total: int | None):
        """The epoch's batches on the device, transformed (MixUp/CutMix, channels_last), each with its
        accumulation group: (step, images, labels, group size, whether the batch ends its group). Groups of
        `accumulate` batches; the epoch's last group may be shorter (its own mean)."""
        accumulate = self.opt.accumulate
        for step, (images, labels) in enumerate(self.train_loader):
            if total is not None and step >= total:
                break
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if self.batch_transform is not None:
                images, labels = self.batch_transform(images, labels)
            if self.opt.channels_last and images.dim() == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            first = step - step % accumulate
            group = accumulate if total is None else min(accumulate, total - first)
            yield step, images, labels, group, step - first + 1 == group

    def _eager_steps(self, bar, total: int | None) -> tuple[float, int]:
        """The epoch's steps, eagerly: (sum of the step losses, steps)."""
        loss_sum, loss_count = 0.0, 0
        for step, images, labels, group, steps_now in self._batches(total):
            if step % self.opt.accumulate == 0:
                self.optimizer.zero_grad(set_to_none=True)
            with self._sync(steps_now):
                with self.autocast():
                    outputs = self.train_model(images)
                loss = self.loss_fn(outputs.float() if outputs.dtype in (torch.float16, torch.bfloat16) else outputs,
                                    labels)
                value = float(loss.detach())  # the step's one device-to-host sync
                if not math.isfinite(value):
                    raise Diverged(self._diverged_text(f"loss is {value}", step))
                self.scaler.scale(loss / group if group > 1 else loss).backward()
            if steps_now:
                self._optimizer_step()
            self.step_losses.append(value)
            loss_sum += value
            loss_count += 1
            bar.update(int(labels.shape[0]), loss=value, lr=self.optimizer.param_groups[0]["lr"])
            self._emit("step", step=step, loss=value, optimizer_step=steps_now)
        return loss_sum, loss_count

    def _sync(self, steps_now: bool):
        """DDP all-reduces the gradients only on the batch that ends an accumulation group."""
        ddp = getattr(self.train_model, "_orig_mod", self.train_model)  # under torch.compile
        if steps_now or not isinstance(ddp, nn.parallel.DistributedDataParallel):
            return nullcontext()
        return ddp.no_sync()

    def _optimizer_step(self) -> None:
        if self.opt.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.opt.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        self.global_step += 1

    def _diverged_text(self, what: str, step: int | None = None, global_step: int | None = None) -> str:
        at = self.global_step if global_step is None else global_step
        where = f"epoch {self.epoch + 1}" + (f", step {step + 1} (global step {at + 1})" if step is not None else "")
        last = next((v for v in reversed(self.step_losses) if math.isfinite(v)), None)
        kept = f"last.pt keeps epoch {self.epoch}" if self.epoch > 0 else "no checkpoint was written"
        return (f"training diverged at {where}: {what}; last finite loss "
                f"{'none' if last is None else f'{last:.4g}'}, lr {float(self.optimizer.param_groups[0]['lr']):.4g}; "
                f"{kept}; try a lower --lr")

    def _check_weights(self) -> None:
        tensors = {name: p for name, p in self.model.state_dict().items() if p.is_floating_point()}
        if not tensors:
            return
        finite = torch.stack([torch.isfinite(p).all() for p in tensors.values()])
        if bool(finite.all()):  # one device-to-host sync an epoch, not one a tensor
            return
        name = list(tensors)[int((~finite).nonzero()[0])]
        raise Diverged(self._diverged_text(f"weight {name} is not finite"))
