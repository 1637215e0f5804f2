#!/usr/bin/env bash
# Prepare, on a machine without a GPU, what tools/gpu_check.sh carries to the GPU machine (Python 3.12,
# torch 2.11.0+cu130, no internet), so that its device minutes go to measuring:
#   .whl/pytorch_metric_learning-*.whl           the PML comparison of the MS-loss benchmark (pure Python)
#   recogfast/_C.cpython-312-x86_64-linux-gnu.so the extension built against torch 2.11 / Python 3.12 from
#                                                the committed sources (HEAD), sm_90 + PTX
# Usage: tools/gpu_prepare.sh   (PY312=python3.12, VENV312=/tmp/recogfast-py312, TORCH312=2.11.0)
# Needs: a python3.12, pip access to PyPI, nvcc (/usr/local/cuda), and the project's .venv (its nvidia/cu13
# headers and libraries stand in for the ones torch 2.11 would pull in). About 3 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY312=${PY312:-$(command -v python3.12 || true)}
VENV312=${VENV312:-/tmp/recogfast-py312}
TORCH312=${TORCH312:-2.11.0}
[[ -n "$PY312" ]] || { echo "gpu_prepare: no python3.12 found (set PY312)" >&2; exit 2; }
NV=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia
[[ -d "$NV/cu13/include" ]] || { echo "gpu_prepare: run 'make setup' first (needs $NV/cu13)" >&2; exit 2; }

python3 -m pip download -q --no-deps --only-binary=:all: -d .whl pytorch-metric-learning

if [[ ! -x "$VENV312/bin/python" ]]; then
  "$PY312" -m venv "$VENV312"
  "$VENV312/bin/pip" install -q --no-deps "torch==$TORCH312"
  "$VENV312/bin/pip" install -q numpy setuptools wheel ninja typing_extensions sympy filelock jinja2 networkx fsspec
fi
export LD_LIBRARY_PATH=$NV/cu13/lib:$NV/cudnn/lib:$NV/cusparselt/lib:$NV/nccl/lib:$NV/nvshmem/lib
SRC=$(mktemp -d)
git archive HEAD | tar -x -C "$SRC"
(cd "$SRC" && CPLUS_INCLUDE_PATH=$NV/cu13/include FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="9.0+PTX" \
  "$VENV312/bin/python" setup.py -q build_ext --inplace)
cp "$SRC"/recogfast/_C.cpython-312-*.so recogfast/
rm -rf "$SRC"
echo "gpu_prepare: carry $(ls recogfast/_C.cpython-312-*.so) and .whl (built from $(git rev-parse --short HEAD))"
