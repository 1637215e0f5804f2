"""The kernel variants a GPU sweep chose: the table the CUDA kernels read (issue 25 part 1, issue 26).

Some CUDA kernels are built in several variants (tile shapes, threads per sample, the MS loss's flash or tiles
path), all giving the same results (bit for bit, or within the path's documented tolerance for the MS loss's two
paths), each chosen by an environment variable (``KNOBS``). Where the variable is unset, a kernel takes the
variant ``TUNED`` names for its device's compute capability and dtype, else the built-in default. ``TUNED`` holds
the winners of ``tools/gpu_check.sh``'s sweep (steps ``flash`` and ``cubs_tiles``), picked and written by
``python tools/tuned_table.py pick OUT --write``, which also renders the same entries as
``csrc/ops/cuda/tuned_table.h`` for the kernels (tests/test_tuned_table.py keeps the two in step). A device or
dtype the sweep has not measured keeps the defaults.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch


class Knob(NamedTuple):
    env: str  # the environment variable that overrides the table
    allowed: tuple[str, ...]  # its values, as the C++ reader (gpu::env_choice) lists them
    default: str  # the built-in default: what a device or dtype without a table entry takes


ONE_CTA = ("auto", "fused", "split")  # the values of the one-CTA variants' knobs

KNOBS = {
    # Block 2's quadratic passes (csrc/ops/cuda/cubs_spatial_passes.cuh): threads, rows a thread, staged tile
    "cubs_spatial_tile": Knob("RECOGFAST_CUBS_SPATIAL_TILE", ("0", "1", "2", "3"), "0"),
    # Block 1's head kernel: threads a sample (fp64 always 256, csrc/ops/cuda/cubs_channel_kernel.cu)
    "cubs_channel_threads": Knob("RECOGFAST_CUBS_CHANNEL_THREADS", ("128", "256", "512"), "256"),
    # the one-CTA variants (a sample staged in shared memory: one launch forward, two backward; the split path where
    # it does not fit): "auto" is the table's entry, else the split path; the table holds "fused" only after a GPU
    # cross-check (csrc/ops/cuda/sample_stage.cuh one_cta_wanted)
    "se_variant": Knob("RECOGFAST_SE_VARIANT", ONE_CTA, "auto"),
    "cubs_channel_variant": Knob("RECOGFAST_CUBS_CHANNEL_VARIANT", ONE_CTA, "auto"),
    # the flash MS loss's tile shape (csrc/ops/cuda/ms_loss_flash_host.cuh)
    "ms_flash_tile": Knob("RECOGFAST_MS_FLASH_TILE", ("0", "1", "2", "3", "4", "5"), "0"),
    # the flash MS loss's forward for ms / all mining (csrc/ops/cuda/ms_loss_flash_onepass.cuh): "auto" lets the
    # device choose the one-pass forward where the classes are small, "one" / "two" force a form
    "ms_flash_fwd": Knob("RECOGFAST_MS_FLASH_FWD", ("auto", "one", "two"), "auto"),
    # the MS loss's CUDA path where both can run (sm_80+, bf16 / fp16, fp32 with TF32): "auto" is the table's
    # entry, else dispatch.MS_FLASH_BY_DEFAULT's choice; the table holds "flash" only after a GPU cross-check
    "ms_loss_path": Knob("RECOGFAST_MS_LOSS_PATH", ("auto", "flash", "tiles"), "auto"),
}

# (knob, compute capability "major.minor", dtype as torch names it without "torch.") -> value.
# Written by tools/tuned_table.py; no sweep has run on a GPU yet, so every device takes the defaults.
TUNED: dict[tuple[str, str, str], str] = {}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tuned(knob: str, capability: tuple[int, int], dtype: torch.dtype) -> str | None:
    """The table's value of `knob` on a device of compute capability `capability` for `dtype`, or None."""
    return TUNED.get((knob, f"{capability[0]}.{capability[1]}", dtype_name(dtype)))


def effective(knob: str, capability: tuple[int, int], dtype: torch.dtype) -> str:
    """The variant a kernel takes: the environment variable where set (an unknown value raises, as the kernel
    does), else the table's entry, else the built-in default. For ms_loss_path, "auto" stands for the rule of
    recogfast.dispatch.ms_loss_path, which reads the table itself; for the one-CTA variants (se_variant,
    cubs_channel_variant) "auto" is resolved here as the kernels resolve it: the table's entry, else "split"."""
    k = KNOBS[knob]
    env = os.environ.get(k.env) or ""
    if env and env not in k.allowed:
        raise ValueError(f"{k.env} must be {', '.join(k.allowed[:-1])} or {k.allowed[-1]}, got {env!r}")
    one_cta = k.allowed == ONE_CTA
    if env and not (one_cta and env == "auto"):
        return env
    value = tuned(knob, capability, dtype) or k.default
    return "split" if one_cta and value == "auto" else value
