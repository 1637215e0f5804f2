"""The report in TensorBoard: its pictures as images and the run's hyperparameters with its results in the
HParams tab, written to ``RUN/tb`` beside the per-epoch scalars the trainer logs there. Only when the
tensorboard package is installed (``pip install recogfast[tensorboard]``); otherwise nothing happens."""

from __future__ import annotations

from pathlib import Path


def _hparams(config: dict) -> dict:
    """The config values TensorBoard's HParams tab can show (numbers, strings, booleans; None as "none")."""
    out = {}
    for k, v in sorted(config.items()):
        if v is None:
            out[k] = "none"
        elif isinstance(v, (bool, int, float, str)):
            out[k] = v
    return out


def _metrics(summary: dict) -> dict:
    """hparam/<split>_<metric> for the val metrics of the chosen epoch and the test result (read once, at the end)."""
    out = {}
    for split in ("val", "test"):
        for k, v in (summary.get(split) or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                out[f"hparam/{split}_{k}"] = float(v)
    return out


def report_to_tensorboard(run: Path, folder: Path, summary: dict, step: int | None) -> bool:
    """Add every PNG of the report `folder` as an image (tag ``report/<name>``) and the hyperparameters; True
    when written."""
    if not (run / "tb").is_dir():  # the run logged no scalars there (tensorboard missing or turned off)
        return False
    try:
        import numpy as np
        from PIL import Image
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return False
    writer = SummaryWriter(log_dir=str(run / "tb"))
    try:
        for png in sorted(folder.glob("*.png")):
            with Image.open(png) as im:
                writer.add_image(f"report/{png.stem}", np.asarray(im.convert("RGB")), global_step=step or 0,
                                 dataformats="HWC")
        writer.add_hparams(_hparams(summary.get("config") or {}), _metrics(summary), run_name="hparams")
    finally:
        writer.close()
    return True
