import pytest
import torch

import recogfast  # noqa: F401  (loads the extension and registers the ops)

HAS_CUDA = torch.cuda.is_available()
CUDA_KERNELS = recogfast.dispatch.cuda_kernels_compiled()

# Tests run on the CPU by default; every CUDA case is a separate parameter that skips without a GPU.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not (HAS_CUDA and CUDA_KERNELS), reason="needs a visible GPU and the CUDA kernels"),
    ),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
