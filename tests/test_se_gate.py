"""The SE gate op against its pure-PyTorch reference: values, gradients, dtypes, layouts, shapes,
gradcheck, torch.compile, and the errors bad arguments get."""

import sys
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DEVICES, MIXED_DTYPES, mixed_errors, variant_fwd_bwd, variant_runs
from recogfast import dispatch
from recogfast.nn import SEBlock
from recogfast.ops import se_gate, se_gate_reference

# (B, C, H, W, R): B = 1, 1x1 and 2x2 maps, C = 1 and 3, odd sizes, C = 1000, a ResNet stage.
SHAPES = [(2, 16, 5, 7, 4), (1, 3, 1, 1, 1), (1, 1, 3, 3, 1), (3, 33, 4, 3, 2), (2, 1000, 2, 2, 62), (2, 64, 14, 14, 4)]
FORMATS = [torch.contiguous_format, torch.channels_last]


def make_args(B, C, H, W, R, dtype=torch.float64, device="cpu", memory_format=torch.contiguous_format, grad=False):
    x = torch.randn(B, C, H, W, dtype=dtype, device=device).to(memory_format=memory_format)
    # Weights scaled like a trained SE block: pre-activations of order one, some relu units off.
    w1 = torch.randn(R, C, dtype=dtype, device=device) / C**0.5
    b1 = 0.1 * torch.randn(R, dtype=dtype, device=device)
    w2 = torch.randn(C, R, dtype=dtype, device=device) / R**0.5
    b2 = 0.1 * torch.randn(C, dtype=dtype, device=device)
    args = [x, w1, b1, w2, b2]
    if grad:
        for a in args:
            a.requires_grad_(True)
    return args


def sample_inputs(device="cpu", dtype=torch.float64, grad=False):
    """One generator for the reference tests, gradcheck and opcheck."""
    for shape in SHAPES:
        for fmt in FORMATS:
            yield make_args(*shape, dtype=dtype, device=device, memory_format=fmt, grad=grad)


def fused_and_reference(args, grad_out=None):
    """Outputs and input gradients of the fused op and of the reference on the same inputs."""
    out = []
    for fn in (torch.ops.recogfast.se_gate, se_gate_reference):
        leaves = [a.detach().clone().requires_grad_(True) for a in args]
        y = fn(*leaves)
        gy = grad_out if grad_out is not None else torch.ones_like(y)
        grads = torch.autograd.grad(y, leaves, gy)
        out.append((y, grads))
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference_float64(device):
    for args in sample_inputs(device):
        gy = torch.randn_like(args[0])
        (y, g), (y_ref, g_ref) = fused_and_reference(args, gy)
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
        for name, a, b in zip(("x", "w1", "b1", "w2", "b2"), g, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_output_keeps_memory_format(device, fmt):
    x, *w = make_args(4, 8, 3, 5, 2, dtype=torch.float32, device=device, memory_format=fmt)
    y = torch.ops.recogfast.se_gate(x, *w)
    assert y.is_contiguous(memory_format=fmt)
    gx = torch.ops.recogfast._se_gate_backward(torch.randn_like(x), x, *w)[0]
    assert gx.is_contiguous(memory_format=fmt)


def test_non_contiguous_input_and_grad():
    x, *w = make_args(3, 6, 8, 8, 2)
    x_strided = x[:, :, ::2, 1::2]  # neither contiguous nor channels_last
    gy = torch.randn(3, 6, 8, 8, dtype=torch.float64)[:, :, 1::2, ::2]
    (y, g), (y_ref, g_ref) = fused_and_reference([x_strided, *w], gy)
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_low_precision_error_within_twice_the_reference(device, dtype, fmt, request):
    """fp16/bf16: error against the float64 truth is at most 2x the error of the same-precision
    reference (plus one rounding unit of the tensor's scale, for values the reference gets exact).
    fp32: both accumulate in fp32, so the fused result is simply close to the truth."""
    if device == "cuda" and dtype == torch.float16 and fmt == torch.contiguous_format:
        # Measured on the H200 (2026-12-04): grad b1 of (8, 32, 14, 14, R=2) is 0.0141 from the truth vs the
        # CUDA eager reference's 0.0043 (scale 2.67), while tools/gpu_crosscheck.py finds the CUDA kernel
        # within 2x of the CPU kernel everywhere. Unexplained; suspected: a hidden unit at the relu boundary
        # that fp16 input rounding flips. Strict: a fix (or a disproof) turns this red.
        request.applymarker(pytest.mark.xfail(strict=True, reason="fp16 grad b1 on CUDA, measured on H200"))
    for shape in [(4, 64, 7, 7, 4), (2, 1000, 2, 2, 62), (1, 3, 1, 1, 1), (8, 32, 14, 14, 2)]:
        args64 = make_args(*shape, device=device, memory_format=fmt)
        gy64 = torch.randn_like(args64[0])
        truth_y, truth_g = fused_and_reference(args64, gy64)[1]
        (y, g), (y_ref, g_ref) = fused_and_reference([a.to(dtype) for a in args64], gy64.to(dtype))
        for name, out, ref, truth in zip(("y", "grad x", "grad w1", "grad b1", "grad w2", "grad b2"),
                                         (y, *g), (y_ref, *g_ref), (truth_y, *truth_g)):
            scale = truth.abs().max().item()
            err = (out.double() - truth).abs().max().item()
            if dtype == torch.float32:
                assert err <= 1e-5 * scale + 1e-6, f"{name} {shape}: {err}"
            else:
                ref_err = (ref.double() - truth).abs().max().item()
                assert err <= 2 * ref_err + torch.finfo(dtype).eps * scale, f"{name} {shape}: {err} vs {ref_err}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", MIXED_DTYPES)
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_mixed_fp32_weights_within_twice_the_reference(device, dtype, fmt):
    """float32 weights with a bf16 / fp16 x (docs/SPEC.md "Dtypes"): the kernels read the weights as fp32;
    y and grad_x come back in x's dtype, the weight gradients in float32, each within 2x the mixed
    reference's error against the float64 truth (conftest.mixed_errors)."""
    for shape in [(4, 64, 7, 7, 4), (2, 1000, 2, 2, 62), (1, 3, 1, 1, 1), (8, 32, 14, 14, 2)]:
        args64 = make_args(*shape, device=device, memory_format=fmt)
        mixed_errors(torch.ops.recogfast.se_gate, se_gate_reference, args64, torch.randn_like(args64[0]), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", MIXED_DTYPES)
def test_module_with_fp32_params_under_autocast_reads_them_without_a_cast(device, dtype):
    """SEBlock's fp32 parameters with a 16-bit activation under autocast: one autograd node whose inputs are
    the parameters themselves (no cast node), fp32 parameter gradients, the mixed reference's values."""
    block = SEBlock(16, reduction=4, impl="fused").to(device)
    ref = SEBlock(16, reduction=4, impl="reference").to(device)
    ref.load_state_dict(block.state_dict())
    x = torch.randn(2, 16, 4, 4, device=device).to(dtype).requires_grad_(True)
    with torch.autocast(device, dtype=dtype):
        y, y_ref = block(x), ref(x)
    assert y.dtype == dtype
    assert type(y.grad_fn).__name__ == "_FusedGateBackward"
    assert {type(f).__name__ for f, _ in y.grad_fn.next_functions if f is not None} == {"AccumulateGrad"}
    torch.testing.assert_close(y, y_ref, rtol=1e-2, atol=1e-2)
    y.float().square().sum().backward()
    y_ref.float().square().sum().backward()
    for p, q in zip(block.parameters(), ref.parameters()):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-2, atol=2e-2)


def test_refuses_other_dtype_pairs_in_one_line():
    x, w1, b1, w2, b2 = make_args(2, 8, 4, 4, 2, dtype=torch.bfloat16)
    allowed = "the weights must have x's dtype, or be float32 with a float16 or bfloat16 x"
    for args, want in [((x, w1.half(), b1, w2, b2), "w1 has dtype torch.float16 but x has dtype torch.bfloat16"),
                       ((x.half(), w1.double(), b1.half(), w2.half(), b2.half()),
                        "w1 has dtype torch.float64 but x has dtype torch.float16"),
                       ((x.float(), w1.float(), b1.double(), w2.float(), b2.float()),
                        "b1 has dtype torch.float64 but x has dtype torch.float32")]:
        for fn in (torch.ops.recogfast.se_gate, lambda *a: se_gate(*a, impl="reference")):
            with pytest.raises(RuntimeError) as info:
                fn(*args)
            assert str(info.value) == f"recogfast::se_gate: {want}; {allowed}"
    # mixed is all the weights or none
    with pytest.raises(RuntimeError, match="^recogfast::se_gate: b1 has dtype torch.bfloat16 but w1 has dtype "
                                           "torch.float32; all weights must have one dtype$"):
        torch.ops.recogfast.se_gate(x, w1.float(), b1, w2.float(), b2.float())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 4), C=st.integers(1, 40), H=st.integers(1, 9), W=st.integers(1, 9), R=st.integers(1, 6),
    channels_last=st.booleans(),
)
def test_fuzzed_shapes_match_reference(B, C, H, W, R, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    args = make_args(B, C, H, W, R, memory_format=fmt)
    (y, g), (y_ref, g_ref) = fused_and_reference(args, torch.randn_like(args[0]))
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    for shape in [(2, 5, 3, 4, 2), (1, 3, 1, 1, 1), (3, 7, 2, 3, 3)]:
        for fmt in FORMATS:
            args = make_args(*shape, device=device, memory_format=fmt, grad=True)
            assert torch.autograd.gradcheck(torch.ops.recogfast.se_gate, args, eps=1e-6, atol=1e-7)


# opcheck of every sample: tests/test_op_contracts.py


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x, *w = make_args(0, 8, 4, 4, 2, device=device, grad=True)
    y = torch.ops.recogfast.se_gate(x, *w)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    for t in w:
        assert torch.equal(t.grad, torch.zeros_like(t))


@pytest.mark.parametrize("device", DEVICES)
def test_module_matches_torchvision_squeeze_excitation(device):
    tv_ops = pytest.importorskip("torchvision.ops")
    ref = tv_ops.SqueezeExcitation(48, 12).to(device).double()
    block = SEBlock(48, reduction=4, impl="fused").to(device).double()
    block.load_state_dict(ref.state_dict())  # same names and shapes: fc1, fc2
    x = torch.randn(3, 48, 6, 5, dtype=torch.float64, device=device, requires_grad=True)
    y, y_ref = block(x), ref(x)
    torch.testing.assert_close(y, y_ref)
    gx, = torch.autograd.grad(y.square().sum(), x)
    gx_ref, = torch.autograd.grad(y_ref.square().sum(), x)
    torch.testing.assert_close(gx, gx_ref)
    assert set(block.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}


def test_module_reduction_and_repr():
    assert SEBlock(64).rd_channels == 4
    assert SEBlock(3, reduction=16).rd_channels == 1
    assert "impl='auto'" in repr(SEBlock(8))
    with pytest.raises(ValueError, match="impl must be one of"):
        SEBlock(8, impl="fast")


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_module_matches_eager(device):
    block = SEBlock(32, reduction=8, impl="fused").to(device)
    x = torch.randn(4, 32, 8, 8, device=device).to(memory_format=torch.channels_last)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ye, yc = block(xe), compiled(xc)
    torch.testing.assert_close(yc, ye)
    ye.square().sum().backward()
    yc.square().sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad)


def test_compiled_with_inductor_matches_eager():
    block = SEBlock(16, reduction=4, impl="fused")
    x = torch.randn(2, 16, 5, 5)
    compiled = torch.compile(block, fullgraph=True)
    torch.testing.assert_close(compiled(x), block(x))


def test_module_under_bf16_autocast_runs_fused_with_activation_dtype():
    block = SEBlock(16, reduction=4)
    x = torch.randn(2, 16, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    assert y.dtype == torch.bfloat16
    ref = se_gate_reference(x.double(), *(t.double().flatten(1) if t.dim() == 4 else t.double() for t in
                                          (block.fc1.weight, block.fc1.bias, block.fc2.weight, block.fc2.bias)))
    torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=2e-2)


# --- bad input: every message names the argument ---------------------------------------------------

def _bad_cases():
    x, w1, b1, w2, b2 = make_args(2, 8, 4, 4, 2, dtype=torch.float32)
    yield "x must be a 4-D tensor", (x[0], w1, b1, w2, b2)
    yield r"w1 must have shape \[R, C\]", (x, w1[:, :5], b1, w2, b2)
    yield r"b1 must have shape \[R\]", (x, w1, b1[:1], w2, b2)
    yield r"w2 must have shape \[C, R\]", (x, w1, b1, w2.t(), b2)
    yield r"b2 must have shape \[C\]", (x, w1, b1, w2, b2[:3])
    yield "w1 must be a 2-D tensor", (x, w1[0], b1, w2, b2)
    yield "x must be a floating-point tensor", (x.long(), w1, b1, w2, b2)
    yield "w2 must be a floating-point tensor", (x, w1, b1, w2.int(), b2)
    yield "b2 has dtype torch.float64|b2 has dtype Double", (x, w1, b1, w2, b2.double())


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bad_input_names_the_argument(impl):
    for pattern, args in _bad_cases():
        with pytest.raises((RuntimeError, TypeError), match=pattern):
            se_gate(*args, impl=impl)
        with pytest.raises((RuntimeError, TypeError), match=pattern):
            torch.ops.recogfast.se_gate(*args)


def test_mixed_devices_name_the_argument():
    x, w1, b1, w2, b2 = make_args(2, 8, 4, 4, 2, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="w2 is on meta but x is on cpu"):
        torch.ops.recogfast.se_gate(x, w1, b1, w2.to("meta"), b2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_mixed_cpu_cuda_names_the_argument():
    x, w1, b1, w2, b2 = make_args(2, 8, 4, 4, 2, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="w1 is on cuda"):
        torch.ops.recogfast.se_gate(x, w1.cuda(), b1, w2, b2)


# --- which implementation runs -----------------------------------------------------------------------

def test_env_forces_reference(monkeypatch):
    x, *w = make_args(2, 8, 4, 4, 2, dtype=torch.float32)
    monkeypatch.setenv("RECOGFAST_IMPL", "reference")
    assert not dispatch.use_fused("se_gate", "fused", x)
    assert dispatch.describe("cpu") == "reference (RECOGFAST_IMPL=reference)"
    calls = []
    op_module = sys.modules["recogfast.ops.se_gate"]  # the attribute recogfast.ops.se_gate is the function
    monkeypatch.setattr(op_module, "se_gate_reference", lambda *a: calls.append(1) or a[0])
    se_gate(x, *w)
    assert calls == [1]
    monkeypatch.setenv("RECOGFAST_IMPL", "bogus")
    with pytest.raises(ValueError, match="RECOGFAST_IMPL must be one of"):
        se_gate(x, *w)


def test_auto_falls_back_with_one_warning_and_fused_refuses(monkeypatch):
    x, *w = make_args(2, 8, 4, 4, 2, dtype=torch.float32)
    monkeypatch.delenv("RECOGFAST_IMPL", raising=False)
    monkeypatch.setattr(dispatch, "unsupported_reason", lambda device, dtype: "test reason")
    monkeypatch.setattr(dispatch, "_warned", set())
    with pytest.warns(RuntimeWarning, match="se_gate: running the pure-PyTorch reference because test reason"):
        y = se_gate(x, *w)
    torch.testing.assert_close(y, se_gate_reference(x, *w))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        se_gate(x, *w)  # warned once already
    with pytest.raises(RuntimeError, match="impl='fused' was asked for, but test reason"):
        se_gate(x, *w, impl="fused")


def test_auto_uses_fused_kernel_on_cpu(monkeypatch):
    monkeypatch.delenv("RECOGFAST_IMPL", raising=False)
    x = torch.randn(1, 4, 2, 2)
    assert dispatch.use_fused("se_gate", "auto", x)
    assert dispatch.describe("cpu", torch.bfloat16) == "fused (cpu kernel)"
    assert not dispatch.use_fused("se_gate", "reference", x)


# RECOGFAST_SE_VARIANT (csrc/ops/cuda/se_gate_fused.cuh): "fused" runs one CTA a sample where it fits in shared
# memory, "split"/"auto" today's passes. The benchmark's headline C and H (benchmarks/test_se_gate_bench.py,
# B = 256 there; B = 16 here so the float64 CPU truth stays quick), both layouts, bf16, fp32 and mixed weights.
SE_HEADLINE = [(16, 64, 56), (16, 128, 28), (16, 256, 14), (16, 512, 7)]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


SE_VARIANT = ("RECOGFAST_SE_VARIANT", torch.ops.recogfast.se_gate)  # conftest.variant_fwd_bwd's var and op


@needs_cuda
@pytest.mark.parametrize("shape", SE_HEADLINE, ids=["56", "28", "14", "7"])
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32", "bf16-w32"])
def test_cuda_fused_variant_matches_split_and_cpu(monkeypatch, shape, fmt, dtype):
    """The one-CTA kernels against the split kernels and the CPU kernel: every output within the split
    kernel's error against the float64 CPU truth (2x plus one rounding unit of the scale)."""
    B, C, H = shape
    torch.manual_seed(0)
    args64 = make_args(B, C, H, H, max(1, C // 16), memory_format=fmt)
    gy64 = torch.randn_like(args64[0])
    fused, split, truth = variant_runs(monkeypatch, *SE_VARIANT, args64, gy64, dtype)
    for name, f, s, t in zip(("y", "grad x", "grad w1", "grad b1", "grad w2", "grad b2"), fused, split, truth):
        assert f.dtype == s.dtype and f.shape == s.shape, name
        scale = t.abs().max().item()
        err, split_err = ((o.cpu().double() - t).abs().max().item() for o in (f, s))
        eps = torch.finfo(f.dtype).eps
        assert err <= 2 * split_err + eps * scale, f"{name} {shape} {dtype}: fused {err} vs split {split_err}"


@needs_cuda
def test_cuda_se_variant_auto_is_split_and_fused_is_deterministic(monkeypatch):
    """"auto" is the variant the tuned table names for the device (recogfast/tuned.py se_variant; the split path
    until a GPU run has cross-checked the fused kernels and found them faster), bit for bit; the fused kernels sum in
    a fixed order (two calls agree bit for bit)."""
    from recogfast.tuned import effective

    args = make_args(8, 256, 14, 14, 16, dtype=torch.bfloat16, device="cuda", memory_format=torch.channels_last)
    gy = torch.randn_like(args[0])
    monkeypatch.delenv("RECOGFAST_SE_VARIANT", raising=False)
    table = effective("se_variant", torch.cuda.get_device_capability(), torch.bfloat16)
    auto, split = (variant_fwd_bwd(monkeypatch, *SE_VARIANT, v, args, gy) for v in ("auto", table))
    first, second = (variant_fwd_bwd(monkeypatch, *SE_VARIANT, "fused", args, gy) for _ in range(2))
    for a, s, f1, f2 in zip(auto, split, first, second):
        assert torch.equal(a, s) and torch.equal(f1, f2)


@needs_cuda
def test_cuda_se_variant_bad_value_is_one_line(monkeypatch):
    monkeypatch.setenv("RECOGFAST_SE_VARIANT", "fast")
    x, w1, b1, w2, b2 = make_args(2, 8, 3, 3, 2, dtype=torch.float32, device="cuda")
    with pytest.raises(RuntimeError, match="RECOGFAST_SE_VARIANT must be auto, fused or split, got 'fast'") as e:
        torch.ops.recogfast.se_gate(x, w1, b1, w2, b2)
    assert "\n" not in str(e.value)
