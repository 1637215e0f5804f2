"""Which implementation a fused module runs: the compiled kernel or the pure-PyTorch reference.

``impl="auto"`` uses the fused kernel where it supports the input's device and dtype and otherwise
the reference, warning once per (op, reason). ``impl="fused"`` raises where the kernel cannot run;
``impl="reference"`` always runs the reference. The environment variable ``RECOGFAST_IMPL`` set to
``reference`` (or ``fused``) overrides every module's choice; ``auto`` or unset leaves it alone.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import defaultdict

import torch

from recogfast.tuned import tuned

IMPLS = ("auto", "fused", "reference")
FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_warned: set[tuple[str, str]] = set()
_recorders: list[dict[str, set[str]]] = []


_build_info: dict[str, str] = {}


def build_info() -> dict[str, str]:
    """How the loaded extension was built, read from the binary: cuda, cuda_archs, nvcc, openmp.

    Read once (recogfast/__init__ does it at import) into a plain dict: torch.compile traces through
    this function, and a traced call of the string-returning op would break the graph."""
    if not _build_info:
        raw = torch.ops.recogfast._build_info()
        _build_info.update(item.split("=", 1) for item in raw.split(";") if item)
    return _build_info


def cuda_kernels_compiled() -> bool:
    return build_info().get("cuda") == "1"


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    return impl


# RECOGFAST_IMPL is read on every call (a test or a user may set it at any time); where os.environ keeps its
# raw mapping (`_data`, as CPython's does), one dict lookup says whether it changed since the last parse.
_ENV_KEY = os.environ.encodekey("RECOGFAST_IMPL") if hasattr(os.environ, "encodekey") else None
_env_cache: list = [object(), None]  # [raw value last parsed, its override]


def _env_override() -> str | None:
    data = getattr(os.environ, "_data", None)
    if data is not None and _ENV_KEY is not None:
        raw = data.get(_ENV_KEY)
        if raw is _env_cache[0] or raw == _env_cache[0]:
            return _env_cache[1]
        override = _parse_env()
        _env_cache[:] = [raw, override]
        return override
    return _parse_env()


def _parse_env() -> str | None:
    env = os.environ.get("RECOGFAST_IMPL", "auto") or "auto"
    if env not in IMPLS:
        raise ValueError(f"RECOGFAST_IMPL must be one of {', '.join(IMPLS)}, got {env!r}")
    return None if env == "auto" else env


# unsupported_reason's answers: every fused module call asks, and reading device.type alone costs ~0.2 µs (a
# new str each time) against ~0.1 µs for this lookup; the answer depends only on (device, dtype) and the build
_reasons: dict = {}


def unsupported_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the fused kernels cannot run on (device, dtype), or None when they can."""
    key = (device, dtype)
    reason = _reasons.get(key, _reasons)
    if reason is _reasons:
        reason = _reasons[key] = _unsupported_reason(device, dtype)
    return reason


def _unsupported_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    # Non-float inputs are not a fallback case: the op itself rejects them with a message naming the argument.
    if dtype.is_floating_point and dtype not in FUSED_DTYPES:
        return f"dtype {dtype} has no fused kernel (float32, float64, float16, bfloat16 do)"
    if device.type in ("cpu", "meta"):
        return None
    if device.type == "cuda":
        if cuda_kernels_compiled():
            return None
        return "recogfast was built without CUDA kernels (see `python -m recogfast.info`)"
    return f"no fused kernel for device type {device.type!r}"


def use_fused(op: str, impl: str, x: torch.Tensor) -> bool:
    """Decide, for one call of `op` on activation `x`, whether the fused kernel runs."""
    fused = _use_fused(op, impl, x)
    for calls in _recorders:
        calls[op].add(f"{'fused' if fused else 'reference'} {x.device.type}/{str(x.dtype).replace('torch.', '')}")
    return fused


@contextlib.contextmanager
def record():
    """Within the block, collect per op which implementations ran: {"se_gate": {"fused cpu/float32"}, …}."""
    calls: dict[str, set[str]] = defaultdict(set)
    _recorders.append(calls)
    try:
        yield calls
    finally:
        _recorders.remove(calls)


def _use_fused(op: str, impl: str, x: torch.Tensor) -> bool:
    impl = _env_override() or check_impl(impl)
    if impl == "reference":
        return False
    reason = unsupported_reason(x.device, x.dtype)
    if reason is None:
        return True
    if impl == "fused":
        raise RuntimeError(f"{op}: impl='fused' was asked for, but {reason}")
    if (op, reason) not in _warned:
        _warned.add((op, reason))
        warnings.warn(f"{op}: running the pure-PyTorch reference because {reason}", RuntimeWarning, stacklevel=5)
    return False


def describe(device: torch.device | str, dtype: torch.dtype = torch.float32, impl: str = "auto") -> str:
    """One line saying which implementation a module with `impl` would run on (device, dtype)."""
    device = torch.device(device)
    override = _env_override()
    impl = override or check_impl(impl)
    if impl == "reference":
        return "reference" + (" (RECOGFAST_IMPL=reference)" if override else "")
    reason = unsupported_reason(device, dtype)
    if reason is None:
        idle = device.type == "cuda" and not torch.cuda.is_available()
        return f"fused ({device.type} kernel)" + (", but no GPU is visible here" if idle else "")
    return f"{'error' if impl == 'fused' else 'reference'}: {reason}"


# ---- MS loss on CUDA: the flash kernels or the tiles path (csrc/ops/cuda/ms_loss_flash_host.cuh, use_flash) ----


@torch.compiler.assume_constant_result  # dynamo cannot trace the new API's getters; a global setting, read once
def tf32_matmul_allowed() -> bool:
    """Whether torch lets fp32 CUDA matmuls use TF32 (what the MS-loss op's allow_tf32 carries to the kernel): the
    new API's setting where torch has one (torch.backends.cuda.matmul.fp32_precision "tf32" or "ieee"; "none"
    inherits torch.backends.fp32_precision), else the legacy torch.backends.cuda.matmul.allow_tf32 (which
    set_float32_matmul_precision sets too). Not the legacy flag first: in torch 2.14 reading it raises ("mix of the
    legacy and new APIs") once the new API has set TF32."""
    matmul = torch.backends.cuda.matmul
    prec = getattr(matmul, "fp32_precision", None)
    if prec == "none":
        prec = getattr(torch.backends, "fp32_precision", "none")
    if prec in (None, "none"):
        return bool(matmul.allow_tf32)
    return prec == "tf32"

MS_LOSS_PATHS = ("auto", "flash", "tiles")


# "auto" takes the flash MS-loss kernels (issue 26) only once a GPU run has cross-checked them: they have run only
# under the host emulation. Until then it keeps the tiles path (proven on an H200); RECOGFAST_MS_LOSS_PATH=flash
# opts in. csrc/ops/cuda/ms_loss_flash_host.cuh's kFlashByDefault is the same switch; per device and dtype, the
# tuned table (recogfast/tuned.py, knob ms_loss_path) turns flash on where a GPU sweep cross-checked and timed it.
MS_FLASH_BY_DEFAULT = False


def ms_loss_path(dtype: torch.dtype, device: torch.device | str = "cuda",
                 capability: tuple[int, int] | None = None, allow_tf32: bool | None = None) -> str:
    """Which kernels a fused MS-loss call on `device` takes: "flash" (tensor-core tiles, sm_80+), "tiles"
    (cuBLAS products and per-row kernels) or, off CUDA, "cpu". The C++ rule, mirrored: flash can run on sm_80+
    for bf16/fp16 and fp32 embeddings (fp32: TF32 products where torch allows them for matmuls,
    tf32_matmul_allowed(), which recogfast.ops.ms_loss passes to the op, else three TF32 products each, "3xTF32": fp32-level
    error); RECOGFAST_MS_LOSS_PATH = "auto" (default) takes flash wherever it can run once MS_FLASH_BY_DEFAULT is
    set or the tuned table (recogfast.tuned) says so for this device and dtype (until then: tiles; the table's
    fp32 entry is TF32's and does not apply to fp32 without TF32), and tiles elsewhere (fp64, before sm_80),
    "flash" forces it and raises where it cannot run, as the op does, "tiles" always takes the tiles path.
    `capability` (major, minor) and `allow_tf32` stand in for the device's and torch's (for a machine without a
    GPU)."""
    if torch.device(device).type != "cuda":
        return "cpu"
    env = os.environ.get("RECOGFAST_MS_LOSS_PATH", "auto") or "auto"  # "auto": flash once MS_FLASH_BY_DEFAULT
    if env not in MS_LOSS_PATHS:
        raise ValueError(f"recogfast::ms_loss: RECOGFAST_MS_LOSS_PATH must be auto, flash or tiles, got {env!r}")
    if env == "tiles":
        return "tiles"
    capability = capability or torch.cuda.get_device_capability(device)
    major = capability[0]
    tf32 = tf32_matmul_allowed() if allow_tf32 is None else allow_tf32
    can = major >= 8 and dtype in (torch.bfloat16, torch.float16, torch.float32)
    if env == "flash" and not can:
        raise RuntimeError(f"recogfast::ms_loss: RECOGFAST_MS_LOSS_PATH=flash needs an sm_80+ GPU and bf16, fp16 or "
                           f"fp32 embeddings, got sm_{major}x, {str(dtype).replace('torch.', '')}")
    exact = dtype == torch.float32 and not tf32
    by_default = MS_FLASH_BY_DEFAULT or (not exact and tuned("ms_loss_path", capability, dtype) == "flash")
    return "flash" if can and (env == "flash" or by_default) else "tiles"
