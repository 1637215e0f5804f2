# The README's commands. Every target sets up .venv first (idempotent: a no-op when nothing changed).
#   make demo    set up, then the main job
#   make test    set up, then the whole test suite (the C++ ctest, then Python)
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

.PHONY: setup demo test pytest cpp-test bench clean

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

test: cpp-test pytest

bench: setup
	$(PY) -m pytest benchmarks --benchmark-only -q

clean:
	rm -rf build *.egg-info recogfast/_C*.so $(BUILD_STAMP)
