"""Build recogfast and its one compiled extension, ``recogfast._C`` (``_C.abi3.so``).

The extension uses only the LibTorch Stable ABI (TORCH_STABLE_ONLY, TORCH_TARGET_VERSION below) and
Python's limited API, so one build runs on every torch from STABLE_ABI_TARGET on and every CPython
from 3.10 on (README: "Build once"). Building needs torch >= 2.14's headers; install with
``--no-build-isolation`` so that the installed torch's headers are the ones used:

    pip install -e . --no-build-isolation

Environment knobs:
  FORCE_CUDA=1 / FORCE_CUDA=0   build / skip the CUDA kernels regardless of auto-detection.
  TORCH_CUDA_ARCH_LIST          CUDA targets (default "9.0+PTX": H100 SASS plus PTX for newer GPUs).
  CUDA_HOME                     toolkit root (default: the one nvcc on PATH belongs to, or /usr/local/cuda).
  MAX_JOBS                      parallel compile jobs (default: bounded by cores and by memory).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCH_LIST = "9.0+PTX"
# The oldest torch the binary supports: 2.11, the oldest release the project tests the binary on (the GPU
# machine's torch, and CI's second environment). Everything csrc/ uses exists in the stable ABI of 2.10;
# 2.10 is not claimed because nothing here runs it.
STABLE_ABI_TARGET = (2, 11)
STABLE_DEFINES = [
    f"-DTORCH_TARGET_VERSION=0x{STABLE_ABI_TARGET[0]:02x}{STABLE_ABI_TARGET[1]:02x}000000000000",
    "-DTORCH_STABLE_ONLY",
    "-DPy_LIMITED_API=0x030A0000",
]


def _log(msg: str) -> None:
    print(f"recogfast setup: {msg}", file=sys.stderr, flush=True)


def _find_cuda_home() -> str | None:
    """The CUDA toolkit root: CUDA_HOME/CUDA_PATH, else the toolkit of the nvcc on PATH.

    A wrapper script such as /usr/local/bin/nvcc makes torch guess /usr/local; we only accept a
    root that really holds include/cuda_runtime.h and bin/nvcc.
    """

    def ok(root: str | None) -> bool:
        return bool(root) and os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isfile(
            os.path.join(root, "include", "cuda_runtime.h")
        )

    for var in ("CUDA_HOME", "CUDA_PATH"):
        if ok(os.environ.get(var)):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if ok(root):
            return root
        # A wrapper script: ask nvcc where it really lives.
        try:
            out = subprocess.run([nvcc, "-v", "--version"], capture_output=True, text=True, timeout=60)
            for line in (out.stdout + out.stderr).splitlines():
                if line.startswith("#$ TOP="):
                    root = os.path.dirname(line.split("=", 1)[1].strip())
                    if ok(root):
                        return root
        except (OSError, subprocess.SubprocessError):
            pass
    for root in ("/usr/local/cuda",):
        if ok(root):
            return root
    return None


def _pip_cuda_include_dirs() -> list[str]:
    """Headers torch's CUDA headers need (cusparse.h, cublas_v2.h, ...) that ship in the pip
    packages ``nvidia-*`` rather than in a bare toolkit."""
    dirs = []
    for base in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cu12/include"):
            d = os.path.join(base, sub)
            if os.path.isdir(d) and d not in dirs:
                dirs.append(d)
    return dirs


def _max_jobs() -> str:
    # Each nvcc/g++ job on the ATen headers peaks around 1.5-2 GB: keep 4 GB a job, at most one a core.
    cores = os.cpu_count() or 1
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = 8
    return str(max(1, min(cores, int(mem_gb // 4))))


def _nvcc_version(cuda_home: str) -> str:
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True)
        for tok in out.stdout.replace(",", " ").split():
            if tok.startswith("V") and tok[1:2].isdigit():
                return tok[1:]
    except OSError:
        pass
    return "unknown"


def _extensions():
    cuda_home = _find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # before cpp_extension reads it
    os.environ.setdefault("MAX_JOBS", _max_jobs())

    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    force = os.environ.get("FORCE_CUDA")
    if force == "0":
        with_cuda, why = False, "FORCE_CUDA=0"
    elif force == "1":
        if not cuda_home:
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit found: set CUDA_HOME to the toolkit root")
        with_cuda, why = True, "FORCE_CUDA=1"
    elif torch.version.cuda is None:
        with_cuda, why = False, f"torch {torch.__version__} is a CPU-only build"
    elif not cuda_home:
        with_cuda, why = False, "no CUDA toolkit found (nvcc not on PATH, CUDA_HOME unset)"
    else:
        with_cuda, why = True, f"torch {torch.__version__} has CUDA {torch.version.cuda}, nvcc found"

    sources = sorted(glob.glob("csrc/ops/*.cpp") + glob.glob("csrc/ops/cpu/*.cpp")) + ["csrc/python_module.cpp"]
    include_dirs = [str(ROOT / "csrc")]
    cxx = ["-O3", "-fopenmp", "-fvisibility=hidden"] + STABLE_DEFINES
    link = ["-fopenmp"]
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
        arch = os.environ["TORCH_CUDA_ARCH_LIST"]
        sources += sorted(glob.glob("csrc/ops/cuda/*.cu"))
        include_dirs += _pip_cuda_include_dirs()
        defines = ["-DRECOGFAST_WITH_CUDA", "-DUSE_CUDA", f'-DRECOGFAST_CUDA_ARCHS="{arch}"',
                   f'-DRECOGFAST_NVCC_VERSION="{_nvcc_version(cuda_home)}"']
        _log(f"building CPU and CUDA kernels for {arch} with {cuda_home}/bin/nvcc ({why}); MAX_JOBS={os.environ['MAX_JOBS']}")
        return [
            CUDAExtension(
                "recogfast._C",
                sources,
                include_dirs=include_dirs,
                extra_compile_args={
                    "cxx": cxx + defines,
                    "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-Xcompiler", "-fvisibility=hidden"] + STABLE_DEFINES + defines,  # no fast math: see cubs_common.cuh
                },
                extra_link_args=link,
                py_limited_api=True,
            )
        ]
    _log(f"building CPU kernels only, no CUDA kernels: {why}")
    return [CppExtension("recogfast._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
                         extra_link_args=link, py_limited_api=True)]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    class Build(BuildExtension):
        def run(self):
            super().run()
            # A per-interpreter build left from before the stable-ABI port would shadow _C.abi3.so
            # (Python tries the cpython-3XY suffix first).
            for stale in glob.glob(str(ROOT / "recogfast" / "_C.cpython-*.so")):
                _log(f"removing {stale}: superseded by _C.abi3.so")
                os.remove(stale)

    return {"build_ext": Build.with_options(use_ninja=True)}


setup(
    packages=find_packages(include=["recogfast", "recogfast.*"]),
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
