"""Host cost per module call (issue 25, part 2): the microseconds Python, the module glue, autograd and the
dispatcher spend on one call, measured on the CPU at a tiny shape (1x8x2x2, fp32, one intra-op thread) where
the arithmetic is negligible, forward (no_grad) and forward+backward (gradients set to None before each call,
untimed). Each recogfast module (fused) against the same module on its eager reference ("reference"), and,
for SE, the registered op through its Python autograd with weights prepared once ("fused_op"; the module's
own one-node path is faster than this) and torchvision's
``SqueezeExcitation`` / timm's ``SEModule`` of the same width (R = 8). On a GPU the same host work sits in
front of every launch: this is the overhead a CUDA graph removes.

    OMP_NUM_THREADS=1 python -m pytest benchmarks/test_host_overhead.py --benchmark-only -q

extra_info: host_us_median, host_us_min (per call); the closing table gives mean ms and the ratio to fused.

``test_host_mixed``: the modules with their fp32 parameters called on a bf16 activation (what autocast hands
them), fused and reference. Since the mixed contract (docs/SPEC.md "Dtypes") the fused kernels read the fp32
parameters as they are: no cast per weight and call, no cast-back of its gradient.
"""

import pytest
import torch

from conftest import grad_reset, run_benchmark
from recogfast.nn import create_attention

B, C, H = 1, 8, 2  # the smallest legal shape with a reduced width of 8 (timm's make_divisible(C/16, 8))
ROUNDS = 300
SE_IMPLS = ["fused", "fused_op", "reference", "torchvision", "timm"]
CUBS = ["cubs1", "cubs2", "cubs_serial12", "cubs_serial21", "cubs_parallel"]  # the three placements: CUBSBlock


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _se_module(impl):
    torch.manual_seed(0)
    if impl == "torchvision":
        from torchvision.ops import SqueezeExcitation

        return SqueezeExcitation(C, 8)
    if impl == "timm":
        timm_layers = pytest.importorskip("timm.layers")
        return timm_layers.SEModule(C)
    return create_attention("se", C, impl="reference" if impl == "reference" else "fused")


def _time(benchmark, group, impl, module, x, mode, call=None):
    call = call or module
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                call(x)
        reset = None
    else:
        x.requires_grad_(True)
        gy = torch.randn_like(x)

        def fn():
            call(x).backward(gy)
        reset = grad_reset(x, module)
    run_benchmark(benchmark, fn, device="cpu", group=group, impl=impl, rounds=ROUNDS, reset=reset)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info.update(host_us_median=stats.stats.median * 1e6, host_us_min=stats.stats.min * 1e6,
                                    threads=1, shape=f"{B}x{C}x{H}x{H}")


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", SE_IMPLS)
def test_host_se(benchmark, impl, mode):
    m = _se_module(impl)
    x = torch.randn(B, C, H, H)
    call = None
    if impl == "fused_op":  # the op alone: weights flattened once, outside the timed call
        w1, b1 = m.fc1.weight.detach().flatten(1).requires_grad_(), m.fc1.bias.detach().clone().requires_grad_()
        w2, b2 = m.fc2.weight.detach().flatten(1).requires_grad_(), m.fc2.bias.detach().clone().requires_grad_()
        m = torch.nn.ParameterList([w1, b1, w2, b2])  # for grad_reset

        def call(x):
            return torch.ops.recogfast.se_gate(x, w1, b1, w2, b2)
    _time(benchmark, f"host se {mode} cpu fp32 {B}x{C}x{H}x{H} 1 thread", impl, m, x, mode, call)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("name", CUBS)
def test_host_cubs(benchmark, name, impl, mode):
    torch.manual_seed(0)
    m = create_attention(name, C, impl=impl)
    _time(benchmark, f"host {name} {mode} cpu fp32 {B}x{C}x{H}x{H} 1 thread", impl, m, torch.randn(B, C, H, H), mode)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("name", ["se", "cubs1", "cubs2", "cubs_serial12"])
def test_host_mixed(benchmark, name, impl, mode):
    torch.manual_seed(0)
    m = create_attention(name, C, impl=impl)  # fp32 parameters
    x = torch.randn(B, C, H, H).bfloat16()
    _time(benchmark, f"host {name} {mode} cpu bf16 x fp32 params {B}x{C}x{H}x{H} 1 thread", impl, m, x, mode)
