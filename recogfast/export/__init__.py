"""Deploy a model: ONNX (runs without recogfast) and a PT2 package compiled by AOTInductor.

    from recogfast.export import to_onnx, to_pt2, load_pt2
    to_onnx(model, torch.randn(2, 3, 64, 64), "model.onnx")     # dynamic batch by default
    to_pt2(model, torch.randn(2, 3, 64, 64), "model.pt2")
    runner = load_pt2("model.pt2")                              # imports recogfast (its kernels run)

Both export the model in eval mode, so an embedding model exports its L2-normalised embedding.

ONNX: the fused ops are translated into standard ONNX operators (opset 18; see
``recogfast.export._onnx_ops``), so the file needs only an ONNX runtime: ``pip install onnxruntime``.
Exporting needs ``pip install recogfast[onnx]`` (onnx, onnxscript, onnxruntime).

PT2: ``torch.export.export`` keeps ``recogfast::*`` ops in the graph and AOTInductor compiles the rest
to C++ (``torch._inductor.aoti_compile_and_package``); the package calls the fused kernels through the
PyTorch dispatcher. Exporting needs a C++ compiler; the deploying side needs no compiler, but the same
torch version and recogfast (its compiled ``_C`` extension) imported before
``torch._inductor.aoti_load_package``
(https://docs.pytorch.org/docs/stable/torch.compiler_aot_inductor.html).
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


@contextlib.contextmanager
def _eval(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _example(example: torch.Tensor, dynamic_batch: bool) -> torch.Tensor:
    if not isinstance(example, torch.Tensor) or example.dim() != 4:
        raise ValueError(f"example must be a [B, C, H, W] image tensor, got {getattr(example, 'shape', type(example))}")
    if dynamic_batch and example.shape[0] == 1:  # torch.export specialises a size-1 dimension: trace with 2
        example = example.expand(2, *example.shape[1:]).contiguous()
    return example


def _dynamic_shapes(dynamic_batch: bool):
    return ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic_batch else None


def output_name(model: nn.Module) -> str:
    return "embeddings" if getattr(model, "embedding_dim", None) else "logits"


def check_onnx_installed() -> None:
    import importlib.util

    missing = [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: pip install 'recogfast[onnx]'")


def to_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, dynamic_batch: bool = True):
    """Export `model` (in eval mode) to the ONNX file `path`; returns the ``torch.onnx.ONNXProgram``.

    `example` is one [B, C, H, W] input: H and W are fixed in the file, the batch is dynamic unless
    `dynamic_batch` is False. Input ``images``, output ``logits`` or ``embeddings``."""
    check_onnx_installed()
    from recogfast.export._onnx_ops import OPSET, translation_table

    example = _example(example, dynamic_batch)
    with _eval(model), torch.no_grad():
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=OPSET, custom_translation_table=translation_table(),
            dynamic_shapes=_dynamic_shapes(dynamic_batch), input_names=["images"],
            output_names=[output_name(model)], verbose=False,
        )
    program.save(os.fspath(path))
    return program


def to_pt2(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, dynamic_batch: bool = True) -> str:
    """``torch.export`` `model` (eval mode) and compile it with AOTInductor into the package `path`.

    Load it with :func:`load_pt2` (or ``import recogfast`` then ``torch._inductor.aoti_load_package``).
    The package runs on the device `model` and `example` are on."""
    example = _example(example, dynamic_batch)
    with _eval(model), torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_shapes(dynamic_batch))
    return torch._inductor.aoti_compile_and_package(program, package_path=os.fspath(path))


def load_pt2(path: str | os.PathLike):
    """The callable of a package written by :func:`to_pt2` (``runner(images)`` returns the output)."""
    import recogfast  # noqa: F401  (registers the recogfast ops the package calls)

    return torch._inductor.aoti_load_package(os.fspath(path))


__all__ = ["to_onnx", "to_pt2", "load_pt2", "check_onnx_installed"]
