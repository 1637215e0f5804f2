"""Atomic checkpoints and the RNG state that makes a resumed run continue exactly."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over `path`.

    A crash at any moment leaves either the previous file or the new one, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; a checkpoint gets the mode any new file gets
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def clean_temp_files(folder: str | os.PathLike) -> list[str]:
    """Remove the temp files that killed writes left in a run folder (``.last.pt.*.tmp``,
    ``.best.pt.*.tmp``, ``summary.json.tmp``, ``config.json.tmp``); returns their names."""
    folder, removed = Path(folder), []
    if folder.is_dir():
        for path in folder.iterdir():
            name = path.name
            if path.is_file() and (name.startswith((".last.pt.", ".best.pt.")) and name.endswith(".tmp")
                                   or name in ("summary.json.tmp", "config.json.tmp")):
                path.unlink(missing_ok=True)
                removed.append(name)
    return removed


def repair_best(folder: str | os.PathLike, epoch: int) -> bool:
    """``<folder>/best.pt`` := ``last.pt`` when it is missing, unreadable or not of `epoch` (the best,
    by ``last.pt``'s record). True when it was rewritten."""
    best, last = Path(folder) / "best.pt", Path(folder) / "last.pt"
    if not last.is_file():
        return False
    try:
        if best.is_file() and int(load_checkpoint(best)["epoch"]) == epoch:
            return False
    except (ValueError, KeyError):
        pass
    atomic_save(load_checkpoint(last), best)
    return True


def file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (0o644 under the usual 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by the trainer (``weights_only``: no code runs while loading)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets one explanation
        # the loader's own text (an unpickler's "KeyError: 105", a page on weights_only) says nothing to a user
        raise ValueError(f"cannot read checkpoint {path}: not a file written by torch.save, or damaged "
                         f"({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not a recogfast checkpoint (no 'model' entry)")
    return ckpt


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, in types ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
