"""``python -m recogfast.info``: what was built, what the machine has, and which implementation each
module will run. Nothing here changes state; it only reports."""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys

import torch


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _dali() -> str:
    try:
        dali = importlib.import_module("nvidia.dali")
    except Exception as err:  # noqa: BLE001 - any failure means "not usable", and we say why
        return f"not importable ({type(err).__name__}: {err})"
    return f"importable, version {getattr(dali, '__version__', '?')}"


def report() -> str:
    import recogfast
    from recogfast import dispatch
    from recogfast.ops import FUSED_OPS

    info = dispatch.build_info()
    lines = [
        f"recogfast      {recogfast.__version__}  ({recogfast.__file__})",
        f"python         {platform.python_version()} ({sys.executable})",
        f"torch          {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"torchvision    {_version('torchvision')}",
        f"extension      {recogfast._C.__file__}",
        f"runs on        torch >= {info.get('stable_abi', '?')} (LibTorch stable ABI; built with torch "
        f"{info.get('torch_headers', '?')}'s headers), CPython >= 3.10 (limited API)",
        f"CPU kernels    compiled (OpenMP {'on' if info.get('openmp') == '1' else 'off'}, "
        f"{torch.get_num_threads()} threads)",
    ]
    if dispatch.cuda_kernels_compiled():
        lines.append(f"CUDA kernels   compiled for {info.get('cuda_archs') or '?'} with nvcc {info.get('nvcc') or '?'}")
    else:
        lines.append("CUDA kernels   not compiled (built without a CUDA toolkit, a CUDA torch, or with FORCE_CUDA=0)")
    if torch.cuda.is_available():
        names = ", ".join(
            f"{torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
            for i in range(torch.cuda.device_count())
        )
        lines.append(f"GPU            visible: {names}")
    else:
        lines.append("GPU            none visible")
    lines.append(f"DALI           {_dali()}")
    lines.append("")
    lines.append("implementation each module runs (impl='auto'):")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() or dispatch.cuda_kernels_compiled() else [])
    for op in FUSED_OPS:
        for dev in devices:
            for dtype in (torch.float32, torch.bfloat16):
                lines.append(f"  {op:<12} {dev:<5} {str(dtype).replace('torch.', ''):<9} -> {dispatch.describe(dev, dtype)}")
    if torch.cuda.is_available() and dispatch.cuda_kernels_compiled():
        # Which CUDA kernels the fused MS loss takes (flash tensor-core tiles or the cuBLAS tiles path).
        try:
            paths = ", ".join(f"{str(t).replace('torch.', '')} -> {dispatch.ms_loss_path(t, 'cuda')}"
                              for t in (torch.bfloat16, torch.float16, torch.float32, torch.float64))
        except (RuntimeError, ValueError) as exc:
            paths = str(exc)
        fp32 = "TF32" if dispatch.tf32_matmul_allowed() else "3xTF32 (TF32 not allowed)"
        lines.append(f"  ms_loss CUDA path (RECOGFAST_MS_LOSS_PATH; fp32 flash products: {fp32}): {paths}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
