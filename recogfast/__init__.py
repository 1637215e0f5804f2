"""recogfast: fused attention blocks and metric-learning losses for image recognition and retrieval.

Importing the package loads the compiled extension ``recogfast._C`` (CPU kernels always, CUDA kernels
when it was built with them) and registers the autograd and fake kernels of its ops. A failed load is
an error with the underlying reason, never a silent switch to the slow references.
"""

from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension that links against it)

try:
    from recogfast import _C  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised in a subprocess by tests/test_package.py
    raise ImportError(
        "recogfast: the compiled extension recogfast._C failed to load "
        f"({type(err).__name__}: {err}). It is built on torch's stable ABI and runs on torch >= 2.11 "
        f"(this is {torch.__version__}); otherwise rebuild it: `pip install -e . --no-build-isolation` (or "
        "`make`) in the source tree."
    ) from err

from recogfast import ops  # noqa: E402

ops.register_all()

from recogfast.dispatch import build_info  # noqa: E402

build_info()  # read the build facts once, before any torch.compile traces use_fused

__version__ = "0.1.0"
__all__ = ["ops", "nn", "data", "losses", "metrics", "models", "engine", "export", "dispatch", "build_info", "__version__"]
_LAZY = ("nn", "data", "losses", "metrics", "models", "engine", "export")  # export: onnx/onnxscript load only when used


def __getattr__(name: str):
    # The subpackages load on first use (`recogfast.models`, `from recogfast import data`), so that
    # `recogfast --help` and `recogfast compare` do not import torchvision, the models or the pipelines.
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"recogfast.{name}")
    raise AttributeError(f"module 'recogfast' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
