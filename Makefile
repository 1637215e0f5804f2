# The README's commands. Every target sets up .venv first (idempotent: a no-op when nothing changed).
#   make demo    set up, then the main job
#   make test    set up, then the whole test suite (the C++ ctest, Python, then the same binary under a
#                second torch and Python: make compat-test)
#   make bench   set up, then pytest benchmarks --benchmark-only
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
TEST_DEPS := pytest pytest-benchmark hypothesis scipy expecttest numpy matplotlib timm onnx onnxscript onnxruntime pillow scikit-learn captum tensorboard optuna pyyaml
DEPS_STAMP := $(VENV)/.recogfast-deps
BUILD_STAMP := $(VENV)/.recogfast-build
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh') setup.py pyproject.toml
CMAKE_BUILD := build/cmake
CMAKE_CUDA ?= OFF
# The second environment of compat-test: the GPU machine's pair (torch 2.11 / Python 3.12), the oldest
# torch the stable-ABI binary targets (setup.py STABLE_ABI_TARGET).
COMPAT_VENV ?= .venv-compat
COMPAT_TORCH ?= 2.11.0
COMPAT_PYTHON ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12; do \
  $$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { command -v $$p; break; }; done)
COMPAT_TESTS := tests/test_op_contracts.py tests/test_se_gate.py tests/test_cubs.py tests/test_ms_loss.py

.PHONY: setup demo test pytest cpp-test compat-test bench clean readme-numbers readme-check

setup: $(BUILD_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): | $(PY)
	$(PY) -m pip install -q --upgrade pip setuptools wheel ninja
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q $(TEST_DEPS)
	$(PY) -m pip install -q --no-deps pytorch-metric-learning tqdm
	$(PY) -m pip install -q nvidia-dali-cuda130 || echo "DALI not installed: the torchvision data backend will be used"
	touch $@

# First time: an editable install that compiles the kernels against the venv's torch (hence
# --no-build-isolation). Later source changes: an incremental in-place rebuild (ninja, build/).
$(BUILD_STAMP): $(DEPS_STAMP) $(SOURCES)
	@if $(PY) -m pip show -q recogfast >/dev/null 2>&1; then \
	  $(PY) setup.py -q build_ext --inplace; \
	else \
	  $(PY) -m pip install --no-build-isolation --no-deps -e .; \
	fi
	@$(PY) -m recogfast.info | grep -E '^(CPU|CUDA) kernels'
	touch $@

demo: setup
	$(PY) -m recogfast.info
	$(PY) -m recogfast.demo

pytest: setup
	$(PY) -m pytest tests -q

cpp-test: setup
	@site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	cmake -S . -B $(CMAKE_BUILD) -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV))/bin/ninja \
	  -DPython3_EXECUTABLE=$(abspath $(PY)) -DRECOGFAST_WITH_CUDA=$(CMAKE_CUDA) \
	  -DCUDA_TOOLKIT_ROOT_DIR=/usr/local/cuda -DCUDAToolkit_ROOT=/usr/local/cuda \
	  -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc \
	  -DCUDA_NVRTC_LIB=$$site/nvidia/cu13/lib/libnvrtc.so.13 \
	  -DCMAKE_CXX_FLAGS="-I$$site/nvidia/cu13/include" >/dev/null
	cmake --build $(CMAKE_BUILD) -j2
	ctest --test-dir $(CMAKE_BUILD) --output-on-failure

# The binary built above (recogfast/_C.abi3.so: torch 2.14 headers, Python 3.11) loaded, unchanged, by torch
# $(COMPAT_TORCH) under Python 3.12 in a venv of its own, running every op test there. torch is installed
# without its CUDA wheels (--no-deps): it borrows them from .venv (the same cu13 family), as tools/gpu_prepare.sh.
compat-test: setup
	@[[ -n "$(COMPAT_PYTHON)" ]] || { echo "compat-test: no python3.12 found (set COMPAT_PYTHON)"; exit 2; }
	@[[ -x $(COMPAT_VENV)/bin/python ]] || $(COMPAT_PYTHON) -m venv $(COMPAT_VENV)
	@[[ -f $(COMPAT_VENV)/.deps-$(COMPAT_TORCH) ]] || \
	  { $(COMPAT_VENV)/bin/python -m pip install -q --no-deps torch==$(COMPAT_TORCH) && \
	    $(COMPAT_VENV)/bin/python -m pip install -q numpy pytest hypothesis typing_extensions sympy mpmath filelock \
	      jinja2 markupsafe networkx fsspec setuptools && touch $(COMPAT_VENV)/.deps-$(COMPAT_TORCH); }
	@nv=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia; \
	export LD_LIBRARY_PATH=$$nv/cu13/lib:$$nv/cudnn/lib:$$nv/cusparselt/lib:$$nv/nccl/lib:$$nv/nvshmem/lib; \
	PYTHONPATH=$(CURDIR) $(COMPAT_VENV)/bin/python tools/compat_check.py && \
	PYTHONPATH=$(CURDIR) $(COMPAT_VENV)/bin/python -m pytest $(COMPAT_TESTS) -q -p no:cacheprovider

test: cpp-test pytest compat-test

bench: setup
	$(PY) -m pytest benchmarks --benchmark-only -q

clean:
	rm -rf build *.egg-info recogfast/_C*.so $(BUILD_STAMP) $(COMPAT_VENV)

# The README's Task 4 lines, re-run (a few minutes a run on 2 cores): written into README.md, or checked.
readme-numbers: setup
	$(PY) tools/readme_numbers.py

readme-check: setup
	$(PY) tools/readme_numbers.py --check
