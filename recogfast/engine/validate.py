"""The ranges of every numeric ``RunConfig`` field, checked in one place (``RunConfig.resolved()``), so
the CLI and the Python API refuse the same values with the same one-line message, named by the flag:
``--weight-decay: expected a number >= 0, got -1.0``.

The table (:data:`RANGES`) is also what the README lists. A non-finite ``--lr`` is not refused here: it
is the divergence guard's case (the run stops at its first step, exit 3).
"""

from __future__ import annotations

import math
import os
from typing import Any

# field: (test, the range in words); None values mean "default" and are not checked
RANGES: dict[str, tuple[Any, str]] = {
    "epochs": (lambda v: v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "image_size": (lambda v: 16 <= v <= 4096, "an integer in [16, 4096]"),
    "lr": (lambda v: not v <= 0, "a number > 0"),  # NaN passes: the divergence guard stops it (exit 3)
    "weight_decay": (lambda v: 0 <= v < math.inf, "a number >= 0"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "warmup_epochs": (lambda v: 0 <= v < math.inf, "a number >= 0"),
    "step_size": (lambda v: v >= 1, "an integer >= 1"),
    "gamma": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "plateau_patience": (lambda v: v >= 0, "an integer >= 0"),
    "label_smoothing": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "crop_scale": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "hflip": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "vflip": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "color_jitter": (lambda v: 0 <= v < math.inf, "a number >= 0 (0 = off)"),
    "aa_magnitude": (lambda v: 0 <= v <= 30, "an integer in [0, 30] (RandAugment's 31 magnitude bins)"),
    "aa_num_ops": (lambda v: v >= 1, "an integer >= 1"),
    "reprob": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "patience": (lambda v: v >= 1, "an integer >= 1"),
    "min_delta": (lambda v: 0 <= v < math.inf, "a number >= 0"),
    "seed": (lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)"),
    "split_seed": (lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)"),
    "num_workers": (lambda v: 0 <= v <= 256, "an integer in [0, 256]"),
    "steps_per_epoch": (lambda v: v >= 1, "an integer >= 1"),
    "val_fraction": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "embedding_dim": (lambda v: v >= 1, "an integer >= 1"),
    "m_per_class": (lambda v: v >= 2, "an integer >= 2 (a positive pair needs two images of a class)"),
    "ms_alpha": (lambda v: 0 < v < math.inf, "a number > 0"),
    "ms_beta": (lambda v: 0 < v < math.inf, "a number > 0"),
    "ms_base": (lambda v: -1 <= v <= 1, "a number in [-1, 1] (a cosine similarity)"),
    "ms_epsilon": (lambda v: 0 <= v < math.inf, "a number >= 0"),
    "xbm_size": (lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    "images_per_class": (lambda v: v >= 2, "an integer >= 2"),
    "head_lr_mult": (lambda v: 0 < v < math.inf, "a number > 0"),
    "unfreeze_at": (lambda v: v >= 2, "an integer >= 2 (the first epoch that trains everything)"),
    "ema": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "mixup": (lambda v: 0 <= v < math.inf, "a number >= 0 (0 = off)"),
    "cutmix": (lambda v: 0 <= v < math.inf, "a number >= 0 (0 = off)"),
    "accumulate": (lambda v: v >= 1, "an integer >= 1"),
}
INTEGERS = {"epochs", "batch_size", "image_size", "step_size", "plateau_patience", "patience", "seed", "split_seed",
            "num_workers", "steps_per_epoch", "embedding_dim", "m_per_class", "xbm_size", "images_per_class",
            "unfreeze_at", "accumulate", "aa_magnitude", "aa_num_ops"}
CHOICES = {"optimizer": ("sgd", "adamw"), "schedule": ("cosine", "step", "plateau", "none"),
           "amp": ("auto", "bf16", "fp16", "none"), "backend": ("auto", "dali", "torchvision"),
           "stem": ("imagenet", "small"), "attn_impl": ("auto", "fused", "reference"),
           "mining": ("ms", "all", "hardest"), "on_error": ("raise", "skip"),
           "freeze": ("stem", "layer1", "layer2", "layer3", "layer4"),
           "auto_augment": ("none", "randaugment", "trivialaugment", "autoaugment"),
           "compile": ("none", "default", "reduce-overhead", "max-autotune")}  # (and true / false: old configs)
_FLAGS = {"num_workers": "--workers", "xbm_size": "--xbm"}


def flag(name: str) -> str:
    """The command-line flag of a RunConfig field."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def check_ranges(cfg) -> None:
    """ValueError (one line, naming the flag) for the first field outside its range or choices."""
    for name, choices in CHOICES.items():
        value = getattr(cfg, name)
        if value is not None and value not in choices and not (name == "compile" and isinstance(value, bool)):
            raise ValueError(f"{flag(name)}: expected one of {', '.join(choices)}, got {value!r}")
    for name, (ok, words) in RANGES.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if name in INTEGERS and not is_int:
            raise ValueError(f"{flag(name)}: expected {words}, got {value!r}")
        if not is_int and not isinstance(value, float):
            raise ValueError(f"{flag(name)}: expected {words}, got {value!r}")
        if not ok(value):
            raise ValueError(f"{flag(name)}: expected {words}, got {value!r}")


def check_combinations(cfg) -> None:
    """Values fine alone but not together (``cfg`` resolved: device and AMP known)."""
    if cfg.amp == "fp16" and not cfg.device.startswith("cuda"):
        raise ValueError(f"--amp fp16: fp16 autocast with a gradient scaler needs a CUDA device, not {cfg.device!r} "
                         f"(use --amp bf16 or none)")
    from recogfast.tasks import get_task

    if not get_task(cfg.task).takes_soft_labels and (cfg.mixup or cfg.cutmix):
        raise ValueError(f"{'--mixup' if cfg.mixup else '--cutmix'}: classification only, not {cfg.task} (its loss "
                         f"needs the hard labels)")
    for name in ("aa_magnitude", "aa_num_ops"):
        if getattr(cfg, name) is not None and cfg.auto_augment != "randaugment":
            raise ValueError(f"{flag(name)}: RandAugment's (--auto-augment randaugment), not {cfg.auto_augment}'s")
    if cfg.unfreeze_at is not None and cfg.freeze is None:
        raise ValueError("--unfreeze-at needs --freeze STAGE (nothing is frozen)")
    if cfg.cuda_graphs:
        from recogfast.engine.graphs import refusal

        why = refusal(cfg.device, cfg.amp, cfg.compile, int(os.environ.get("WORLD_SIZE", "1")) > 1, cfg.optimizer,
                      cfg.xbm_size > 0)
        if why:
            raise ValueError(why)


def check_out_folder(out: str) -> None:
    """Refuse a run folder that cannot be created or written (under a file, a read-only or unwritable
    folder) in one line. The check creates the missing folders and removes them again."""
    missing, head = [], os.path.abspath(out)
    while not os.path.exists(head) and os.path.dirname(head) != head:
        missing.append(head)
        head = os.path.dirname(head)
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".recogfast-write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        what = "is a file, not a folder" if os.path.isfile(out) else f"cannot be created or written: {err.strerror or err}"
        raise ValueError(f"--out: the run folder {out} {what}") from None
    finally:
        for folder in missing:  # deepest first: leave the file system as it was
            try:
                os.rmdir(folder)
            except OSError:
                pass
