"""Run-folder outputs: CSV log, TensorBoard (when installed), PNG plots (when matplotlib is), progress."""

from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path


class CSVLog:
    """One row per epoch in ``<run>/log.csv``; the header grows when new columns appear (rewritten then)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: list[dict] = []

    def load(self, rows: list[dict]) -> None:
        self.rows = [dict(r) for r in rows]
        self._write()

    def append(self, row: dict) -> None:
        self.rows.append(dict(row))
        self._write()

    def _write(self) -> None:
        fields: list[str] = []
        for r in self.rows:
            fields += [k for k in r if k not in fields]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        os.replace(tmp, self.path)


class TensorBoard:
    """Scalars to ``<run>/tb`` through torch.utils.tensorboard when the tensorboard package is installed."""

    def __init__(self, folder: str | os.PathLike, enabled: bool = True):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(folder))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self.writer = None

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and k not in ("epoch", "steps", "best"):  # not curves
                self.writer.add_scalar(f"{prefix}{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_history(rows: list[dict], folder: str | os.PathLike, model: str | None = None,
                 chosen: int | None = None) -> list[str]:
    """``loss.png`` and ``metrics.png`` in `folder` from the epoch rows (integer epochs, the run name and
    model in the title, the chosen epoch marked, the legend outside the lines); [] without matplotlib."""
    try:
        from recogfast.engine.plots import curves, save
    except Exception:  # noqa: BLE001 - plots are optional
        return []
    if not rows:
        return []
    folder = Path(folder)
    head = folder.resolve().name + (f" · {model}" if model else "")
    loss_keys = [k for k in rows[-1] if k.endswith("loss")]
    metric_keys = [k for k in rows[-1] if k.startswith("val_") and not k.endswith("loss")]
    return [save(curves(rows, keys, ylabel, f"{head}: {ylabel}", chosen), folder / name)
            for name, keys, ylabel in (("loss.png", loss_keys, "loss"), ("metrics.png", metric_keys, "metric")) if keys]


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """A progress bar with live loss, throughput and ETA on stderr.

    On a terminal it is a tqdm bar (cleared at the end of the epoch, whose one-line summary stays);
    otherwise (piped logs, CI) only a long epoch prints, a line every `interval` seconds (a minute), so a
    log holds the epoch lines and little else. Without tqdm installed, a terminal gets the same line
    redrawn in place.
    """

    def __init__(self, total: int | None, desc: str, enabled: bool = True, interval: float = 60.0, stream=None):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = min(0.1, interval) if self.tty else interval
        self.start = self.last = time.perf_counter()
        self.n = 0
        self.samples = 0
        self.bar = None
        if enabled and self.tty:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=desc, file=self.stream, leave=False, dynamic_ncols=True,
                                unit="step", mininterval=self.interval)

    def update(self, samples: int, **values) -> None:
        self.n += 1
        self.samples += samples
        now = time.perf_counter()
        if self.bar is not None:
            if now - self.last >= self.interval or self.n == self.total:
                self.last = now
                rate = self.samples / (now - self.start) if now > self.start else 0.0
                post = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items()}
                self.bar.set_postfix(post | {"img/s": f"{rate:.0f}"}, refresh=False)
            self.bar.update(1)
            return
        if not self.enabled or now - self.last < self.interval or (not self.tty and self.n == self.total):
            return  # in a log, the epoch's own line follows the last step
        self.last = now
        elapsed = now - self.start
        rate = self.samples / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc} {self.n}" + (f"/{self.total}" if self.total else "")]
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()]
        parts.append(f"{rate:.0f} img/s")
        if self.total:
            parts.append(f"ETA {_fmt_time(elapsed / self.n * (self.total - self.n))}")
        line = "  ".join(parts)
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(150))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            return
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    @property
    def throughput(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.samples / elapsed if elapsed > 0 else 0.0
