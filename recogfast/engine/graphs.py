"""``--cuda-graphs``: the whole training step (forward, loss, backward, optimizer step, EMA) captured once
in a CUDA graph and replayed (torch.cuda.graph, https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs).

- Static buffers: each batch (after MixUp/CutMix and channels_last) is copied into the captured input and
  label tensors; a batch of another shape (a loader's short last batch) is dropped, said once, not counted.
- Static gradients: allocated as zeros before the capture; backward accumulates into them in place and the
  final micro-step's graph zeroes them after the optimizer step (never ``set_to_none``).
- Accumulation: one graph for a non-final micro-batch (forward, loss / group, backward) and one for the
  final one (the same, then clip, step, EMA, zero the gradients); 1 / group is a device scalar.
- Optimizer: SGD / Adam / AdamW made graph-safe in place: ``fused=True`` (and ``capturable=True`` for Adam)
  with the learning rate a device tensor, which the schedulers ``fill_`` without a host sync.
- EMA inside the final graph: ema += w·(weights - ema), w a device scalar (1 at the first update: a copy).
- The warm-up (three steps on a side stream, as the docs require) runs on a snapshot: weights, buffers,
  EMA and optimizer state are put back afterwards, so the run is the eager one's, step for step.
- Divergence guard: the step losses stay on the device; every ``CHECK_EVERY`` steps and at the epoch's
  end one sync reads them, and a non-finite loss stops the run naming its step (`Diverged`, as eagerly).

What cannot be captured is refused in one line by :func:`refusal` (CPU-testable: it takes plain values).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from recogfast.engine.loop import Diverged

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
CHECK_EVERY = 32  # steps between the divergence guard's reads of the step losses (one sync each)
WARMUP = 3
CAPTURABLE = ("SGD", "Adam", "AdamW")


def compile_mode(value) -> str | None:
    """``--compile``'s torch.compile mode, or None: old configs' booleans map to "default" / "none"."""
    if value is True:
        return "default"
    if value in (False, None, "none"):
        return None
    if value not in COMPILE_MODES:
        raise ValueError(f"--compile: expected one of {', '.join(COMPILE_MODES)}, got {value!r}")
    return value


def refusal(device: str, amp: str = "none", compile=None, distributed: bool = False, optimizer=None,
            xbm: bool = False) -> str | None:
    """Why the training step cannot be captured (one line naming the reason), or None. `optimizer`: an
    instance or a name ("sgd", "adamw")."""
    dev = torch.device(device).type if device else "cpu"
    if dev != "cuda":
        return f"--cuda-graphs: capturing the training step in a CUDA graph needs a CUDA device, not {device!r}"
    if amp == "fp16":
        return ("--cuda-graphs with --amp fp16: the gradient scaler decides on the host whether to skip a step "
                "(found_inf, one sync a step), which a graph cannot replay; use --amp bf16 or none")
    if compile_mode(compile) in ("reduce-overhead", "max-autotune"):
        return (f"--cuda-graphs with --compile {compile}: that mode replays its own CUDA graphs (inductor's "
                f"cudagraph trees); use one of the two, or --compile default with --cuda-graphs")
    if distributed:
        return ("--cuda-graphs under torchrun: DDP's gradient all-reduce (buckets, no_sync) is not captured here; "
                "run one process or drop --cuda-graphs")
    if xbm:
        return ("--cuda-graphs with --xbm: the cross-batch memory reads its fill level on the host every step "
                "(a sync); use --xbm 0 or drop --cuda-graphs")
    if optimizer is not None:
        name = optimizer if isinstance(optimizer, str) else type(optimizer).__name__
        if name.lower() not in {c.lower() for c in CAPTURABLE}:
            return f"--cuda-graphs: optimizer {name} has no graph-safe step here ({', '.join(CAPTURABLE)} do)"
    return None


def check_capturable(trainer) -> None:
    """ValueError (one line) when the trainer's step cannot be captured (:func:`refusal`)."""
    from recogfast.losses import CrossBatchMemory

    why = refusal(str(trainer.device), trainer.opt.amp, trainer.opt.compile, trainer.distributed, trainer.optimizer,
                  isinstance(trainer.loss_fn, CrossBatchMemory))
    if why:
        raise ValueError(why)


def prepare_optimizer(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make the optimizer's step graph-safe in place: the fused kernels (device step counts, no host
    reads), ``capturable`` for Adam on CUDA, and each group's learning rate a device tensor."""
    for group in optimizer.param_groups:
        group["foreach"], group["fused"] = False, True
        if "capturable" in group:
            group["capturable"] = device.type == "cuda"
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
    if isinstance(optimizer, torch.optim.Adam):  # AdamW too: step counts on the device (a resumed CPU state)
        for state in optimizer.state.values():
            if "step" in state:
                state["step"] = torch.as_tensor(state["step"], dtype=torch.float32).to(device)


def plain_state(trainer, state: dict) -> dict:
    """A checkpoint's optimizer and scheduler state as an eager run writes it: float learning rates and
    the optimizer's own flags (foreach/fused/capturable), so any run can resume it."""
    original = getattr(trainer, "_eager_flags", None)
    if original is None:
        return state
    groups = state["optimizer"]["param_groups"]
    for group, flags in zip(groups, original):
        group.update(flags)
        for key in ("lr", "initial_lr"):
            if isinstance(group.get(key), torch.Tensor):
                group[key] = float(group[key])
    sched = state.get("scheduler")
    if sched:
        for key in ("_last_lr", "base_lrs"):
            if key in sched:
                sched[key] = [float(v) for v in sched[key]]
    return state


class CapturedStep:
    """The trainer's step as CUDA graphs (``capture=False``: the same buffers and order without graphs,
    which is how the CPU tests exercise everything but the capture itself)."""

    def __init__(self, trainer, capture: bool = True):
        self.t, self.capture = trainer, capture
        self.graphs: dict[str, torch.cuda.CUDAGraph] = {}
        self.x = self.y = None
        self.dropped = 0
        self.told = False

    # ------------------------------------------------------------------ the captured body
    def _body(self, final: bool) -> None:
        t = self.t
        dtype = {"bf16": torch.bfloat16}.get(t.opt.amp)
        with torch.autocast(t.device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=False):
            out = t.train_model(self.x)
        loss = t.loss_fn(out.float() if out.dtype in (torch.float16, torch.bfloat16) else out, self.y)
        self.loss.copy_(loss.detach())
        (loss * self.inv_group).backward()
        if final:
            self._apply()

    def _apply(self) -> None:
        """After the final micro-batch: clip, step, EMA, zero the static gradients (also run eagerly)."""
        t = self.t
        if t.opt.grad_clip:
            nn.utils.clip_grad_norm_(self.params, t.opt.grad_clip, foreach=True)
        t.optimizer.step()
        if t.ema is not None:
            with torch.no_grad():
                diff = torch._foreach_sub(self.ema_float_src, self.ema_model)  # ema += w·(weights - ema)
                torch._foreach_mul_(diff, self.ema_w)
                torch._foreach_add_(self.ema_model, diff)
                for e, m in self.ema_ints:  # num_batches_tracked: AveragedModel's formula, decay = 1 - w
                    e.copy_(e * (1 - self.ema_w) + m * self.ema_w)
        torch._foreach_zero_(self.grads)

    # ------------------------------------------------------------------ setup and capture
    def _setup(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        t = self.t
        dev = t.device
        self.x, self.y = torch.empty_like(images), torch.empty_like(labels)
        self.loss = torch.zeros((), device=dev)
        self.inv_group = torch.ones((), device=dev)
        self.params = [p for p in t.model.parameters() if p.requires_grad]
        with torch.no_grad():
            for p in t.model.parameters():
                if not p.requires_grad:
                    p.grad = None  # frozen: skipped by the optimizer, as eagerly
                elif p.grad is None:
                    p.grad = torch.zeros_like(p)
                else:
                    p.grad.zero_()
        self.grads = [p.grad for p in self.params]
        if not hasattr(t, "_eager_flags"):
            t._eager_flags = [{k: g[k] for k in ("foreach", "fused", "capturable") if k in g}
                              for g in t.optimizer.param_groups]
        prepare_optimizer(t.optimizer, dev)
        if t.ema is not None:
            pairs = list(zip([*t.ema.module.parameters(), *t.ema.module.buffers()],
                             [*t.model.parameters(), *t.model.buffers()]))
            self.ema_model = [e.detach() for e, m in pairs if e.is_floating_point()]
            self.ema_float_src = [m.detach() for e, m in pairs if e.is_floating_point()]
            self.ema_ints = [(e.detach(), m.detach()) for e, m in pairs if not e.is_floating_point()]
            first = int(t.ema.n_averaged) == 0  # one read at setup; then tracked on the host
            self.ema_w = torch.tensor(1.0 if first else 1.0 - t.opt.ema_decay, device=dev)
            self.ema_first = first

    def _state_tensors(self) -> list[torch.Tensor]:
        t = self.t
        out = list(t.model.state_dict().values())
        if t.ema is not None:
            out += list(t.ema.state_dict().values())
        return out

    def _build(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self._setup(images, labels)
        if not self.capture:
            return
        t = self.t
        self.x.copy_(images)
        self.y.copy_(labels)
        kinds = (["micro"] if t.opt.accumulate > 1 else []) + ["final"]
        # the warm-up trains on a snapshot: weights, buffers, EMA and optimizer state go back afterwards
        saved = [s.clone() for s in self._state_tensors()]
        had_state = {id(p): {k: v.clone() for k, v in st.items() if isinstance(v, torch.Tensor)}
                     for p, st in t.optimizer.state.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                for kind in kinds:
                    self._body(kind == "final")
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for s, v in zip(self._state_tensors(), saved):
                s.copy_(v)
            for p, st in t.optimizer.state.items():
                for k, v in st.items():
                    if isinstance(v, torch.Tensor):
                        v.copy_(had_state[id(p)][k]) if id(p) in had_state and k in had_state[id(p)] else v.zero_()
            torch._foreach_zero_(self.grads)
        pool = None
        for kind in kinds:
            g = torch.cuda.CUDAGraph()
            # thread_local: the loader's pin-memory thread may call CUDA while this thread captures
            with torch.cuda.graph(g, pool=pool, capture_error_mode="thread_local"):
                self._body(kind == "final")
            pool = pool or g.pool()
            self.graphs[kind] = g
        torch.cuda.synchronize()

    def step(self, images: torch.Tensor, labels: torch.Tensor, final: bool, group: int) -> bool:
        """Run one micro-batch (the optimizer step too when `final`); False when the batch was dropped."""
        if self.x is None:
            self._build(images, labels)
        elif images.shape != self.x.shape or labels.shape != self.y.shape:
            self.dropped += int(images.shape[0])
            t = self.t
            if not self.told and t.is_main and t.opt.progress:
                print(f"note: --cuda-graphs drops a batch of {images.shape[0]} images (the captured step takes "
                      f"{self.x.shape[0]}); dropped batches are not counted in the epoch", flush=True)
            self.told = True
            if final and self._pending_micro:  # its group's earlier micro-batches still get their step
                self._apply()
                self._after_step()
            return False
        self.x.copy_(images, non_blocking=True)
        self.y.copy_(labels, non_blocking=True)
        if group != self._group:
            self.inv_group.fill_(1.0 / group)
            self._group = group
        if self.capture:
            self.graphs["final" if final else "micro"].replay()
        else:
            self._body(final)
        self._pending_micro = not final
        if final:
            self._after_step()
        return True

    _pending_micro = False
    _group = 1

    def _after_step(self) -> None:
        t = self.t
        if t.ema is not None:
            t.ema.n_averaged.add_(1)  # outside the graph: AveragedModel keeps it on the CPU
            if self.ema_first:
                self.ema_first = False
                self.ema_w.fill_(1.0 - t.opt.ema_decay)
        if t.scheduler is not None and t.scheduler_interval == "step":
            t.scheduler.step()
        t.global_step += 1

    # ------------------------------------------------------------------ an epoch
    def epoch(self, bar, total: int | None) -> tuple[float, int]:
        """One epoch of captured steps; (sum of the step losses, steps counted)."""
        t = self.t
        losses = torch.empty(CHECK_EVERY, device=t.device)
        pending: list[tuple[int, int, bool, int]] = []  # (step, global step, optimizer step, images)
        totals = [0.0, 0]
        for step, images, labels, group, final in t._batches(total):
            at = t.global_step
            if not self.step(images, labels, final, group):
                continue
            losses[len(pending)].copy_(self.loss, non_blocking=True)
            pending.append((step, at, final, int(images.shape[0])))
            if len(pending) == CHECK_EVERY:
                self._check(losses, pending, bar, totals)
        self._check(losses, pending, bar, totals)
        return totals[0], totals[1]

    def _check(self, losses, pending, bar, totals) -> None:
        """The divergence guard: one sync reads the pending step losses; the bar and "step" events follow."""
        if not pending:
            return
        t = self.t
        values = losses[:len(pending)].tolist()
        lr = float(t.optimizer.param_groups[0]["lr"])
        for (step, at, final, n), value in zip(pending, values):
            if not math.isfinite(value):
                first = pending[0][0] + 1
                raise Diverged(t._diverged_text(f"loss is {value} (--cuda-graphs reads the step losses every "
                                                f"{CHECK_EVERY} steps: steps {first}-{pending[-1][0] + 1} ran)",
                                                step, at))
            t.step_losses.append(value)
            totals[0] += value
            totals[1] += 1
            bar.update(n, loss=value, lr=lr)
            t._emit("step", step=step, loss=value, optimizer_step=final)
        pending.clear()
