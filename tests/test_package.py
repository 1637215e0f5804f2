"""The package as users meet it: the build record, `python -m recogfast.info`, and a failed
extension load that says why."""

import os
import subprocess
import sys

import torch

import recogfast
from recogfast import dispatch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_build_info_is_read_from_the_binary():
    info = dispatch.build_info()
    assert set(info) >= {"cuda", "cuda_archs", "nvcc", "openmp"}
    assert info["cuda"] in ("0", "1")
    if info["cuda"] == "1":
        assert info["cuda_archs"], "a CUDA build records the archs it compiled for"
    assert torch.ops.recogfast._build_info() == ";".join(f"{k}={v}" for k, v in info.items())


def test_info_reports_build_gpu_dali_and_implementations():
    out = subprocess.run([sys.executable, "-m", "recogfast.info"], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ("torch", "torchvision", "runs on        torch >= ", "CUDA kernels", "GPU", "DALI",
                   "se_gate      cpu   float32   -> fused"):
        assert needle in text, f"{needle!r} missing from:\n{text}"
    if dispatch.cuda_kernels_compiled():
        assert f"compiled for {dispatch.build_info()['cuda_archs']}" in text


def test_info_shows_reference_when_forced():
    out = subprocess.run([sys.executable, "-m", "recogfast.info"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "RECOGFAST_IMPL": "reference"}, timeout=300)
    assert "-> reference (RECOGFAST_IMPL=reference)" in out.stdout


def test_failed_extension_load_raises_with_the_reason():
    # Make the import machinery fail on recogfast._C as a missing or ABI-broken library would.
    out = _run("import sys; sys.modules['recogfast._C'] = None; import recogfast")
    assert out.returncode != 0
    assert "recogfast: the compiled extension recogfast._C failed to load" in out.stderr
    assert "pip install -e . --no-build-isolation" in out.stderr


def test_ops_are_registered_under_the_recogfast_namespace():
    assert recogfast.ops.se_gate is not None
    schema = str(torch.ops.recogfast.se_gate.default._schema)
    assert schema.startswith("recogfast::se_gate(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2)")


def test_extension_is_one_stable_abi_binary():
    """Issue 20: recogfast._C is the abi3 binary on the LibTorch stable ABI, its target written the same in
    setup.py, CMakeLists.txt, the binary's build record and the import error; it imports no C++ symbol of
    libtorch or c10 (only the stable C shim), which is what lets it load under another torch."""
    import re
    import shutil

    so = recogfast._C.__file__
    assert os.path.basename(so) == "_C.abi3.so"
    info = dispatch.build_info()
    major, minor = re.search(r"STABLE_ABI_TARGET = \((\d+), (\d+)\)", open(os.path.join(ROOT, "setup.py")).read()).groups()
    assert info["stable_abi"] == f"{major}.{minor}"
    cmake = re.search(r'RECOGFAST_TORCH_TARGET_VERSION "0x([0-9a-f]{2})([0-9a-f]{2})0{12}"',
                      open(os.path.join(ROOT, "CMakeLists.txt")).read())
    assert cmake and (int(cmake.group(1), 16), int(cmake.group(2), 16)) == (int(major), int(minor))
    assert f"runs on torch >= {major}.{minor}" in open(os.path.join(ROOT, "recogfast", "__init__.py")).read()
    assert re.fullmatch(r"\d+\.\d+\.\d+", info["torch_headers"])
    if shutil.which("nm") is None:
        return
    undefined = subprocess.run(["nm", "-D", "--undefined-only", so], capture_output=True, text=True, check=True).stdout
    cxx_torch = sorted(set(re.findall(r"_ZN(?:2at|3c10|5torch)\w+", undefined)))
    assert not cxx_torch, f"non-stable libtorch symbols: {cxx_torch[:5]}"
    assert "torch_call_dispatcher" in undefined
