#!/usr/bin/env bash
# Prepare, on a machine without a GPU, what tools/gpu_check.sh carries to the GPU machine (Python 3.12,
# torch 2.11.0+cu130, no internet), so that its device minutes go to measuring:
#   .whl/pytorch_metric_learning-*.whl   the PML comparison of the MS-loss benchmark (pure Python)
#   recogfast/_C.abi3.so                 the extension as `make setup` builds it (and CI: torch 2.14 headers,
#                                        sm_90 + PTX) -- the stable-ABI binary runs unchanged under the GPU
#                                        machine's torch 2.11 / Python 3.12 (README: "Build once"); checked
#                                        here under CI's second environment first (make compat-test)
# Usage: tools/gpu_prepare.sh   (about a minute on 2 cores after `make setup`)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl pytorch-metric-learning
make -s setup
.venv/bin/python -c 'import sys, recogfast
info = recogfast.build_info()
sys.exit(0 if info["cuda"] == "1" else "gpu_prepare: the extension was built without the CUDA kernels (no nvcc?)")'
make -s compat-test COMPAT_TESTS=tests/test_op_contracts.py >/dev/null
echo "gpu_prepare: carry recogfast/_C.abi3.so and .whl (built from $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- csrc || echo ', with uncommitted csrc changes'))"
