"""CUBS Block 1 / Block 2 ops and modules: the references against the SPEC written out by hand, the
fused ops against the references (values, gradients, dtypes, layouts, shapes), gradcheck (opcheck: test_op_contracts.py),
torch.compile, bad-input messages, the placements, and a memory test proving no HW×HW matrix is built."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recogfast
from conftest import DEVICES, MIXED_DTYPES, mixed_errors
from recogfast.nn import CUBSBlock, CUBSBlock1, CUBSBlock2, attention_names, create_attention
from recogfast.ops import cubs_channel, cubs_channel_reference, cubs_spatial, cubs_spatial_reference

FORMATS = [torch.contiguous_format, torch.channels_last]
# Block 1 (B, C, H, W, N): B = 1, 1x1 and 2x2 maps, C = 3, N = 1, odd sizes, ResNet stages (14x14, 56x56).
SHAPES1 = [(2, 16, 5, 7, 8), (1, 3, 1, 1, 1), (1, 3, 2, 2, 1), (3, 33, 4, 3, 5), (2, 64, 14, 14, 32), (2, 1, 3, 3, 1),
           (1, 8, 56, 56, 4)]
# Block 2 (B, C, H, W): B = 1, 1x1 and 2x2 maps, C = 3, odd H·W, 56x56.
SHAPES2 = [(2, 16, 5, 7), (1, 3, 1, 1), (1, 3, 2, 2), (3, 33, 3, 5), (1, 1, 9, 9), (2, 8, 56, 56)]


def make_args1(B, C, H, W, N, dtype=torch.float64, device="cpu", memory_format=torch.contiguous_format, grad=False):
    x = torch.randn(B, C, H, W, dtype=dtype, device=device).to(memory_format=memory_format)
    args = [x]
    for shape, fan_in in (((N, C), C), ((N,), 0), ((N, C), C), ((N,), 0), ((N, C), C), ((N,), 0), ((C, N), N), ((C,), 0)):
        t = torch.randn(*shape, dtype=dtype, device=device)
        # q and k of order a few, so the softmax rows are neither flat nor one-hot.
        args.append(t * (2.0 / math.sqrt(fan_in)) if fan_in else 0.3 * t)
    if grad:
        for a in args:
            a.requires_grad_(True)
    return args


def make_args2(B, C, H, W, dtype=torch.float64, device="cpu", memory_format=torch.contiguous_format, grad=False):
    x = torch.randn(B, C, H, W, dtype=dtype, device=device).to(memory_format=memory_format)
    args = [x]
    for _ in range(3):
        args.append(torch.randn(C, dtype=dtype, device=device) * (1.5 / math.sqrt(C)))
        args.append(0.3 * torch.randn(1, dtype=dtype, device=device))
    if grad:
        for a in args:
            a.requires_grad_(True)
    return args


# --- the references, against the SPEC written out with explicit loops -------------------------------

def _softmax_attention_loops(q, k, v):
    f = torch.empty_like(q)
    for i in range(q.numel()):
        row = [math.exp(float(q[i] * k[j])) for j in range(k.numel())]
        z = sum(row)
        f[i] = sum(r / z * float(v[j]) for j, r in enumerate(row))
    return f


def test_channel_reference_matches_spec_loops():
    x, wq, bq, wk, bk, wv, bv, wo, bo = make_args1(2, 6, 3, 4, 3)
    y = cubs_channel_reference(x, wq, bq, wk, bk, wv, bv, wo, bo)
    for b in range(2):
        g = x[b].mean(dim=(1, 2))
        q, k, v = wq @ g + bq, wk @ g + bk, wv @ g + bv
        f = _softmax_attention_loops(q, k, v)
        z = wo @ f + bo + g
        torch.testing.assert_close(y[b], x[b] * torch.sigmoid(z)[:, None, None])


def test_spatial_reference_matches_spec_loops():
    x, wq, bq, wk, bk, wv, bv = make_args2(2, 5, 3, 4)
    y = cubs_spatial_reference(x, wq, bq, wk, bk, wv, bv)
    for b in range(2):
        xf = x[b].reshape(5, 12)
        q, k, v = wq @ xf + bq, wk @ xf + bk, wv @ xf + bv
        f = _softmax_attention_loops(q, k, v)
        torch.testing.assert_close(y[b], x[b] * torch.sigmoid(f).reshape(1, 3, 4))


def test_references_keep_channels_last_values():
    args = make_args2(2, 4, 3, 5)
    y = cubs_spatial_reference(*args)
    y_cl = cubs_spatial_reference(args[0].to(memory_format=torch.channels_last), *args[1:])
    torch.testing.assert_close(y_cl, y)
    args = make_args1(2, 4, 3, 5, 2)
    torch.testing.assert_close(cubs_channel_reference(args[0].to(memory_format=torch.channels_last), *args[1:]),
                               cubs_channel_reference(*args))


# --- modules and the registry (reference implementation) ----------------------------------------------

def test_block1_module_layers_and_reference():
    m = CUBSBlock1(12, impl="reference").double()
    assert m.inner == 6 and CUBSBlock1(3).inner == 1 and CUBSBlock1(8, inner=3).inner == 3
    assert set(m.state_dict()) == {f"{n}.{p}" for n in ("q", "k", "v", "out") for p in ("weight", "bias")}
    assert m.q.weight.shape == (6, 12) and m.out.weight.shape == (12, 6)
    x = torch.randn(2, 12, 5, 3, dtype=torch.float64)
    p = [t for lin in (m.q, m.k, m.v, m.out) for t in (lin.weight, lin.bias)]
    torch.testing.assert_close(m(x), cubs_channel_reference(x, *p))


def test_block2_module_layers_and_reference():
    m = CUBSBlock2(7, impl="reference").double()
    assert set(m.state_dict()) == {f"{n}.{p}" for n in ("q", "k", "v") for p in ("weight", "bias")}
    assert m.q.weight.shape == (1, 7, 1, 1)
    x = torch.randn(2, 7, 4, 3, dtype=torch.float64)
    # A 1x1 convolution C -> 1 is the per-pixel projection of the SPEC.
    q = m.q(x).flatten(1)
    torch.testing.assert_close(q, torch.einsum("bcp,c->bp", x.flatten(2), m.q.weight.flatten()) + m.q.bias)
    p = [t for conv in (m.q, m.k, m.v) for t in (conv.weight.flatten(), conv.bias)]
    torch.testing.assert_close(m(x), cubs_spatial_reference(x, *p))


@pytest.mark.parametrize("placement", ["serial12", "serial21", "parallel"])
def test_composite_placements(placement):
    m = CUBSBlock(10, placement=placement, impl="reference").double()
    x = torch.randn(2, 10, 4, 4, dtype=torch.float64)
    b1, b2 = m.block1(x), m.block2(x)
    want = {"parallel": b1 + b2, "serial12": m.block2(b1), "serial21": m.block1(b2)}[placement]
    torch.testing.assert_close(m(x), want)
    assert f"placement={placement!r}" in repr(m)


def test_composite_rejects_unknown_placement():
    with pytest.raises(ValueError, match="placement must be one of 'serial12', 'serial21', 'parallel'"):
        CUBSBlock(8, placement="serial")


def test_create_attention_builds_every_cubs_name():
    names = attention_names()
    for name in ("se", "cubs1", "cubs2", "cubs_parallel", "cubs_serial12", "cubs_serial21"):
        assert name in names
    assert isinstance(create_attention("cubs1", 16, impl="reference"), CUBSBlock1)
    assert isinstance(create_attention("cubs2", 16), CUBSBlock2)
    for placement in ("parallel", "serial12", "serial21"):
        m = create_attention(f"cubs_{placement}", 16, impl="reference")
        assert isinstance(m, CUBSBlock) and m.placement == placement
        assert m.block1.impl == "reference" and m.block2.impl == "reference"
    assert create_attention("cubs1", 16, inner=4).inner == 4
    with pytest.raises(ValueError, match="unknown attention 'cubs3'; choose one of: .*cubs_serial21"):
        create_attention("cubs3", 16)


# --- the fused ops against the references -------------------------------------------------------------

OPS = {
    "channel": (torch.ops.recogfast.cubs_channel, cubs_channel_reference, make_args1, SHAPES1),
    "spatial": (torch.ops.recogfast.cubs_spatial, cubs_spatial_reference, make_args2, SHAPES2),
}


def sample_inputs(which, device="cpu", dtype=torch.float64, grad=False, shapes=None):
    """One generator for the reference tests, gradcheck and opcheck."""
    _, _, make, default_shapes = OPS[which]
    for shape in shapes or default_shapes:
        for fmt in FORMATS:
            yield make(*shape, dtype=dtype, device=device, memory_format=fmt, grad=grad)


def output_and_grads(fn, args, grad_out=None):
    """fn's output on fresh leaf copies of args and the gradients of its inputs (grad_out: ones if not given)."""
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    y = fn(*leaves)
    return y, torch.autograd.grad(y, leaves, grad_out if grad_out is not None else torch.ones_like(y))


def fused_and_reference(which, args, grad_out=None):
    """Outputs and input gradients of the fused op and of the reference on the same inputs."""
    return [output_and_grads(fn, args, grad_out) for fn in OPS[which][:2]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("which", ["channel", "spatial"])
def test_matches_reference_float64(device, which):
    for args in sample_inputs(which, device):
        gy = torch.randn_like(args[0])
        (y, g), (y_ref, g_ref) = fused_and_reference(which, args, gy)
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
        for i, (a, b) in enumerate(zip(g, g_ref)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m, i=i: f"grad of arg {i}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("which", ["channel", "spatial"])
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_output_keeps_memory_format(device, which, fmt):
    op, _, make, shapes = OPS[which]
    x, *w = make(*shapes[0], dtype=torch.float32, device=device, memory_format=fmt)
    assert op(x, *w).is_contiguous(memory_format=fmt)
    backward = getattr(torch.ops.recogfast, f"_cubs_{which}_backward")
    assert backward(torch.randn_like(x), x, *w)[0].is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("which", ["channel", "spatial"])
def test_non_contiguous_input_and_grad(which):
    _, _, make, shapes = OPS[which]
    x, *w = make(*((3, 6, 8, 8, 2) if which == "channel" else (3, 6, 8, 8)))
    gy = torch.randn(3, 6, 8, 8, dtype=torch.float64)[:, :, 1::2, ::2]
    (y, g), (y_ref, g_ref) = fused_and_reference(which, [x[:, :, ::2, 1::2], *w], gy)
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


# (device, which, dtype, layout) cases measured outside the bound, marked strict xfail with the measurement.
# Three H200 runs of 2026-12-04 put the CUDA Block 2 gradients outside it (fp16 grad bq of 2x16x28x28 0.0157 vs
# the reference's 0.0030, bf16 grad bv of 2x32x14x15 0.108 vs 0.036 and of 4x64x7x7 0.057 vs 0.0055), and Block 1's
# saturated fp32 grad wq (test_saturated_softmax_fp32_gradients_match_the_reference: 10.4 vs 1.69). The fp32 gap
# of the cross-check's shapes was the CUDA kernels' summation (one serial fp32 accumulator a row, the covariance
# formed in fp32): tools/cuda_emulation reproduces it (`run.sh acc`) and passes with the blocked, compensated sums
# of cubs_common.cuh. The emulation did not reproduce the saturated case, and the fix has not run on a GPU: the
# first GPU run decides (benchmarks/RESULTS.md), so no xfail is kept.
CUDA_SPATIAL_PRECISION_GAP: set = set()
CUDA_SPATIAL_PRECISION_GAP_WHY = ""

LOW_PRECISION_SHAPES = {
    "channel": [(4, 64, 7, 7, 32), (2, 256, 2, 2, 128), (1, 3, 1, 1, 1), (8, 32, 14, 14, 16)],
    "spatial": [(4, 64, 7, 7), (2, 16, 28, 28), (1, 3, 1, 1), (2, 32, 14, 15)],
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("which", ["channel", "spatial"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_low_precision_error_within_twice_the_reference(device, which, dtype, fmt, request):
    """fp16/bf16: error against the float64 truth is at most 2x the error of the same-precision
    reference (plus one rounding unit of the tensor's scale). fp32: close to the truth (both accumulate
    in fp32; the fused exp has ~1e-7 relative error)."""
    if (device, which, dtype, fmt) in CUDA_SPATIAL_PRECISION_GAP:
        request.applymarker(pytest.mark.xfail(strict=True, reason=CUDA_SPATIAL_PRECISION_GAP_WHY))
    _, _, make, _ = OPS[which]
    for shape in LOW_PRECISION_SHAPES[which]:
        args64 = make(*shape, device=device, memory_format=fmt)
        gy64 = torch.randn_like(args64[0])
        truth_y, truth_g = fused_and_reference(which, args64, gy64)[1]
        (y, g), (y_ref, g_ref) = fused_and_reference(which, [a.to(dtype) for a in args64], gy64.to(dtype))
        # Some gradients are exactly zero in exact arithmetic (grad bk: softmax ignores a shift of k; with
        # one position, grad wq and wk): both implementations then return rounding noise of cancelling
        # sums, measured on the scale of the call's largest gradient.
        grad_scale = max(t.abs().max().item() for t in truth_g)
        for i, (out, ref, truth) in enumerate(zip((y, *g), (y_ref, *g_ref), (truth_y, *truth_g))):
            scale = truth.abs().max().item()
            if i > 0 and scale < 1e-9 * grad_scale:
                scale = grad_scale
            err = (out.double() - truth).abs().max().item()
            ref_err = (ref.double() - truth).abs().max().item()
            if dtype == torch.float32:
                assert err <= 2e-5 * scale + 2 * ref_err + 1e-6, f"output {i} {shape}: {err} vs {ref_err} (scale {scale})"
            else:
                assert err <= 2 * ref_err + torch.finfo(dtype).eps * scale, f"output {i} {shape}: {err} vs {ref_err}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("which", ["channel", "spatial"])
@pytest.mark.parametrize("dtype", MIXED_DTYPES)
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_mixed_fp32_weights_within_twice_the_reference(device, which, dtype, fmt):
    """float32 weights with a bf16 / fp16 x (docs/SPEC.md "Dtypes"): the kernels read the weights as fp32;
    y and grad_x come back in x's dtype, the weight gradients in float32, each within 2x the mixed
    reference's error against the float64 truth (conftest.mixed_errors)."""
    fused, reference, make, _ = OPS[which]
    for shape in LOW_PRECISION_SHAPES[which]:
        args64 = make(*shape, device=device, memory_format=fmt)
        mixed_errors(fused, reference, args64, torch.randn_like(args64[0]), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("placement", ["serial12", "parallel"])
def test_module_with_fp32_params_under_autocast_reads_them_without_a_cast(device, placement):
    """CUBSBlock's fp32 parameters with a bf16 activation under autocast: one autograd node whose inputs are
    the parameters themselves (no cast node), fp32 parameter gradients, the mixed reference's values."""
    block = CUBSBlock(16, placement, impl="fused").to(device)
    ref = CUBSBlock(16, placement, impl="reference").to(device)
    ref.load_state_dict(block.state_dict())
    x = torch.randn(2, 16, 6, 6, device=device).bfloat16().requires_grad_(True)
    with torch.autocast(device, dtype=torch.bfloat16):
        y, y_ref = block(x), ref(x)
    assert y.dtype == torch.bfloat16
    assert type(y.grad_fn).__name__ == "_FusedPairBackward"
    assert {type(f).__name__ for f, _ in y.grad_fn.next_functions if f is not None} == {"AccumulateGrad"}
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)
    y.float().square().sum().backward()
    y_ref.float().square().sum().backward()
    for p, q in zip(block.parameters(), ref.parameters()):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, q.grad, rtol=5e-2, atol=5e-2)


SATURATED = [("channel", (4, 64, 4, 4, 16), 100.0), ("channel", (2, 32, 3, 3, 8), 30.0),
             ("spatial", (2, 16, 8, 8), 10.0), ("spatial", (2, 8, 6, 6), 40.0)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("which,shape,gain", SATURATED, ids=lambda v: str(v))
def test_saturated_softmax_fp32_gradients_match_the_reference(device, which, shape, gain):
    """Issue 13: with activations of ordinary size times `gain` the attention rows saturate (one column takes
    almost all the weight). fp32 outputs and gradients must meet the fp32 rule of
    test_low_precision_error_within_twice_the_reference (2e-5 of the scale plus twice the fp32 reference's
    error), gradients on the call's gradient scale: the plain formulas cancelled (sum e k v / l - f sum e k / l,
    q k - q k*) and were off by 2.0 where the true gradient was 1e-4 (0.17 of the gradient scale)."""
    make = OPS[which][2]
    args64 = make(*shape, device=device)
    args64[0] = args64[0] * gain
    gy64 = torch.randn_like(args64[0])
    truth_y, truth_g = fused_and_reference(which, args64, gy64)[1]
    (y, g), (y_ref, g_ref) = fused_and_reference(which, [a.float() for a in args64], gy64.float())
    grad_scale = max(t.abs().max().item() for t in truth_g)
    for i, (out, ref, truth) in enumerate(zip((y, *g), (y_ref, *g_ref), (truth_y, *truth_g))):
        err = (out.double() - truth).abs().max().item()
        ref_err = (ref.double() - truth).abs().max().item()
        scale = truth.abs().max().item() if i == 0 else grad_scale
        assert err <= 2e-5 * scale + 2 * ref_err, f"output {i}: {err} vs the reference's {ref_err} (scale {scale})"


def _reference_reordered(which, args, gy, gen):
    """The reference on the same inputs summed in another order, its output and gradients mapped back: the channels
    permuted (both blocks are equivariant in C), and Block 1's projection width N (invariant) or Block 2's pixels
    (equivariant) permuted. The same function, another draw of its fp32 rounding."""
    x = args[0]
    B, C, H, W = x.shape
    fmt = torch.contiguous_format if x.is_contiguous() else torch.channels_last
    pc = torch.randperm(C, generator=gen).to(x.device)
    ic = torch.argsort(pc)
    if which == "channel":
        _, wq, bq, wk, bk, wv, bv, wo, bo = args
        pn = torch.randperm(wq.size(0), generator=gen).to(x.device)
        jn = torch.argsort(pn)

        def there(t):
            return t[:, pc]

        def back(t):
            return t[:, ic]

        weights = [wq[pn][:, pc], bq[pn], wk[pn][:, pc], bk[pn], wv[pn][:, pc], bv[pn], wo[pc][:, pn], bo[pc]]

        def weights_back(g):
            return (g[0][jn][:, ic], g[1][jn], g[2][jn][:, ic], g[3][jn], g[4][jn][:, ic], g[5][jn],
                    g[6][ic][:, jn], g[7][ic])
    else:
        _, wq, bq, wk, bk, wv, bv = args
        pp = torch.randperm(H * W, generator=gen).to(x.device)
        ip = torch.argsort(pp)

        def there(t):
            return t.reshape(B, C, H * W)[:, pc][:, :, pp].reshape(B, C, H, W)

        def back(t):
            return t.reshape(B, C, H * W)[:, ic][:, :, ip].reshape(B, C, H, W)

        weights = [wq[pc], bq, wk[pc], bk, wv[pc], bv]

        def weights_back(g):
            return g[0][ic], g[1], g[2][ic], g[3], g[4][ic], g[5]
    y, g = output_and_grads(OPS[which][1], [there(x).contiguous(memory_format=fmt), *weights],
                            there(gy).contiguous(memory_format=fmt))
    return back(y), (back(g[0]), *weights_back(g[1:]))


def _reference_errors(which, args32, gy32, ref, truths, seed):
    """Per output (y, then each gradient) the fp32 reference's error against the float64 truths: the median over
    five summation orders, as given (ref: its (y, grads)) and _reference_reordered four times. One order's error is a
    single draw from a wide spread, and which draw depends on the BLAS the CPU gets (Block 1 at x * 10, seed 38,
    channels_last: grad wk's error 0.202 in the given order on an Intel Xeon with MKL, 0.127-3.63, median 1.03, over
    15 reorderings; the kernel's 0.427 failed twice that one lucky order there and passed on an AMD EPYC)."""
    gen = torch.Generator().manual_seed(seed)
    refs = [ref] + [_reference_reordered(which, args32, gy32, gen) for _ in range(4)]
    cols = zip(*((r[0], *r[1]) for r in refs))
    return [sorted((o.double() - t).abs().max().item() for o in col)[2] for col, t in zip(cols, truths)]


# Issue 25: seeds of the 4x64x7x7 case whose fp32 grad bq (and grad wq / wk) the CPU kernel put outside this
# bound before the fix (seed 47: grad bq 6.6e-6 from the truth against the reference's 1.0e-7 and a bound of
# 5.0e-6; seed 54: 3.3x the bound), all inside it after.
BIAS_GRAD_SEEDS = [30, 46, 47, 54, 109]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("seed", BIAS_GRAD_SEEDS)
def test_spatial_fp32_gradients_within_twice_the_reference_seeded(device, fmt, seed):
    """Issue 25: Block 2 fp32, every gradient within 2x the fp32 reference's error against the float64 truth
    plus one fp32 rounding unit of the call's largest gradient. The CPU kernel formed dq_i = df_i cov_i with
    cov = (skv - sv sk / l) / l about v* (cancelling), q, k, v and d in one serial fp32 sum over the channels and
    the bias gradients (sums of dq, dk, dv over pixels that cancel) in fp32: grad bq was up to 84x the
    reference's error. The CUDA kernels take the same moments and sums since issue 25 part 5 (proven under the host
    emulation, tools/cuda_emulation `run.sh acc`, which runs these seeds, not yet on a GPU): as for
    CUDA_SPATIAL_PRECISION_GAP above, no xfail is kept for what no GPU has measured; the first GPU run decides.
    The reference's error: the median over five summation orders (_reference_errors). Tightest case on the CPU
    (Intel Xeon, 2026-12-08): seed 30 channels_last grad bk, 0.82 of the bound (the kernel's 4.7e-6 against the
    reference's 0.48-3.6e-6 over 15 orders: inside the bound by its one-ulp floor)."""
    torch.manual_seed(seed)
    args64 = make_args2(4, 64, 7, 7, device=device, memory_format=fmt)
    gy64 = torch.randn_like(args64[0])
    truth_y, truth_g = output_and_grads(OPS["spatial"][1], args64, gy64)
    args32, gy32 = [a.float() for a in args64], gy64.float()
    (_, g), ref = fused_and_reference("spatial", args32, gy32)
    ref_errs = _reference_errors("spatial", args32, gy32, ref, (truth_y, *truth_g), seed)[1:]
    floor = torch.finfo(torch.float32).eps * max(t.abs().max().item() for t in truth_g)
    names = ["x", "wq", "bq", "wk", "bk", "wv", "bv"]
    for name, out, truth, ref_err in zip(names, g, truth_g, ref_errs):
        err = (out.double() - truth).abs().max().item()
        assert err <= 2 * ref_err + floor, f"grad {name}: {err:.3g} vs the reference's {ref_err:.3g} (floor {floor:.3g})"


# Issue 25 (Block 1): (shape, gain, seed) draws whose fp32 output or gradients the CPU kernel put outside this bound
# before the fix (tools/repro_b1.py; err / bound 1.3-1.8 at gain 1, 2.9-4.9 at x * 10, e.g. 2x256x2x2 seed 38 in
# NCHW grad wk 4.4x the bound), all within 0.7 of it after (one summation order of the reference, an AMD EPYC); with
# the median over five orders (_reference_errors) within 0.55 on an Intel Xeon (2026-12-08).
CHANNEL_SEEDED = [((4, 64, 7, 7, 32), 1.0, s) for s in (1, 18, 52)] + \
    [((2, 256, 2, 2, 128), 1.0, s) for s in (1, 6, 9)] + [((2, 256, 2, 2, 128), 10.0, s) for s in (0, 38, 60)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("shape,gain,seed", CHANNEL_SEEDED, ids=lambda v: str(v))
def test_channel_fp32_gradients_within_twice_the_reference_seeded(device, fmt, shape, gain, seed):
    """Issue 25: Block 1 fp32, y and every gradient within 2x the fp32 reference's error against the float64 truth
    plus one fp32 rounding unit (of max |y|, or of the call's largest gradient). Before the fix the kernels took
    the row sums about the dominant column's v* (f's error eps |f - v*| where f ~ mean v; dq's cov cancelled: grad
    bq up to 27x the reference's error) and summed q, k, v in fp32 (at x * 10 the saturated exponents q (k - k*)
    amplified that rounding: y and every gradient up to 9-35x). The CUDA kernel carries the same fix, proven
    under tools/cuda_emulation (`run.sh acc`) but not yet on a GPU: no xfail, the first GPU run decides.

    The reference's error: the median over five summation orders (_reference_errors)."""
    torch.manual_seed(seed)
    args64 = make_args1(*shape, device=device)
    args64[0] = (args64[0] * gain).contiguous(memory_format=fmt)
    gy64 = torch.randn_like(args64[0])
    truth_y, truth_g = output_and_grads(OPS["channel"][1], args64, gy64)
    args32, gy32 = [a.float() for a in args64], gy64.float()
    (y, g), ref = fused_and_reference("channel", args32, gy32)
    ref_errs = _reference_errors("channel", args32, gy32, ref, (truth_y, *truth_g), seed)
    eps = torch.finfo(torch.float32).eps
    grad_floor = eps * max(t.abs().max().item() for t in truth_g)
    names = ["y", "x", "wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo"]
    for i, (name, out, truth, ref_err) in enumerate(zip(names, (y, *g), (truth_y, *truth_g), ref_errs)):
        err = (out.double() - truth).abs().max().item()
        floor = eps * truth.abs().max().item() if i == 0 else grad_floor
        assert err <= 2 * ref_err + floor, f"{name}: {err:.3g} vs the reference's {ref_err:.3g} (floor {floor:.3g})"


@pytest.mark.parametrize("which", ["channel", "spatial"])
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_reordered_reference_is_the_same_function(which, fmt):
    """_reference_reordered in float64: the given order's output and gradients, to rounding."""
    torch.manual_seed(3)
    args = OPS[which][2](2, 16, 3, 5, *((8,) if which == "channel" else ()))
    args[0] = args[0].contiguous(memory_format=fmt)
    gy = torch.randn_like(args[0])
    y, g = fused_and_reference(which, args, gy)[1]
    y2, g2 = _reference_reordered(which, args, gy, torch.Generator().manual_seed(1))
    torch.testing.assert_close(y2, y, rtol=1e-12, atol=1e-12)
    for a, b in zip(g2, g):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 3), C=st.integers(1, 24), H=st.integers(1, 9), W=st.integers(1, 9), N=st.integers(1, 12),
    channels_last=st.booleans(), which=st.sampled_from(["channel", "spatial"]),
)
def test_fuzzed_shapes_match_reference(B, C, H, W, N, channels_last, which):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    shape = (B, C, H, W, N) if which == "channel" else (B, C, H, W)
    args = OPS[which][2](*shape, memory_format=fmt)
    (y, g), (y_ref, g_ref) = fused_and_reference(which, args, torch.randn_like(args[0]))
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("which", ["channel", "spatial"])
def test_gradcheck_float64(device, which):
    shapes = {"channel": [(2, 5, 3, 4, 3), (1, 3, 1, 1, 1), (2, 4, 2, 2, 1)],
              "spatial": [(2, 5, 3, 4), (1, 3, 1, 1), (1, 2, 3, 3)]}[which]
    for args in sample_inputs(which, device, grad=True, shapes=shapes):
        assert torch.autograd.gradcheck(OPS[which][0], args, eps=1e-6, atol=1e-7)


# opcheck of every sample: tests/test_op_contracts.py


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("which", ["channel", "spatial"])
def test_empty_batch(device, which):
    _, _, make, shapes = OPS[which]
    x, *w = make(0, *shapes[0][1:], device=device, grad=True)
    y = OPS[which][0](x, *w)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    for t in w:
        assert torch.equal(t.grad, torch.zeros_like(t))


def test_large_logits_stay_finite():
    """|q k| up to ~1e4: the rank-one row maximum keeps every exponent <= 0 (the naive exp overflows)."""
    x, wq, bq, wk, bk, wv, bv = make_args2(2, 4, 6, 6)
    args = [x * 30, wq * 30, bq, wk * 30, bk, wv, bv]
    (y, g), (y_ref, g_ref) = fused_and_reference("spatial", args, torch.randn_like(x))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)
    y32 = torch.ops.recogfast.cubs_spatial(*[a.float() for a in args])
    torch.testing.assert_close(y32.double(), y_ref, rtol=1e-4, atol=1e-4)


# --- modules: fused against reference, placements, torch.compile --------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["cubs1", "cubs2", "cubs_parallel", "cubs_serial12", "cubs_serial21"])
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_module_fused_matches_reference(device, name, fmt):
    fused = create_attention(name, 12, impl="fused").to(device).double()
    ref = create_attention(name, 12, impl="reference").to(device).double()
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(3, 12, 5, 4, dtype=torch.float64, device=device).to(memory_format=fmt)
    outs = []
    for m in (fused, ref):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.square().sum().backward()
        outs.append((y, xi.grad, [p.grad for p in m.parameters()]))
        m.zero_grad()
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])
    for a, b in zip(outs[0][2], outs[1][2]):
        torch.testing.assert_close(a, b)


def test_module_under_bf16_autocast_runs_fused_in_activation_dtype():
    block = CUBSBlock(16, "serial12")
    x = torch.randn(2, 16, 6, 6).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    assert y.dtype == torch.bfloat16
    ref = CUBSBlock(16, "serial12", impl="reference").double()
    ref.load_state_dict(block.state_dict())
    torch.testing.assert_close(y.double(), ref(x.double()), rtol=3e-2, atol=3e-2)


class BasicBlock(torch.nn.Module):
    """A ResNet-18 basic block with the attention after the body, before the add (SPEC "Placement")."""

    def __init__(self, channels, attention):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(channels)
        self.attn = attention

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.attn(self.bn2(self.conv2(out)))
        return torch.relu(out + x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("placement", ["serial12", "parallel"])
def test_compiled_resnet_block_matches_eager(device, placement):
    block = BasicBlock(16, CUBSBlock(16, placement, impl="fused")).to(device)
    x = torch.randn(4, 16, 8, 8, device=device).to(memory_format=torch.channels_last)
    # cuDNN runs fp32 convolutions in TF32 by default and eager and compiled runs may pick different
    # algorithms (measured on the H200: 1.6% apart in the gradients): compare exact fp32 convolutions.
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        _compiled_matches_eager(block, x)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def _compiled_matches_eager(block, x):
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ye = block(xe)  # train mode: batch statistics, so both runs see the same normalisation
    ye.square().sum().backward()
    grads_e = [xe.grad] + [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    yc = compiled(xc)
    yc.square().sum().backward()
    torch.testing.assert_close(yc, ye)
    grads_c = [xc.grad] + [p.grad for p in block.parameters()]
    # CUDA: cuDNN may pick other (fp32) convolution-backward algorithms for the two graphs; measured on
    # the H200 without TF32: 1.8e-4 relative, 5.6e-5 absolute apart.
    tol = dict(rtol=1e-3, atol=2e-4) if x.is_cuda else {}
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b, **tol)


def test_compiled_with_inductor_matches_eager():
    block = BasicBlock(8, CUBSBlock(8, "serial21", impl="fused")).eval()
    x = torch.randn(2, 8, 6, 6)
    compiled = torch.compile(block, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), block(x))


# --- bad input: every message names the argument -------------------------------------------------------

def _bad_cases_channel():
    x, wq, bq, wk, bk, wv, bv, wo, bo = make_args1(2, 8, 4, 4, 3, dtype=torch.float32)
    rest = (wk, bk, wv, bv, wo, bo)
    yield "x must be a 4-D tensor", (x[0], wq, bq, *rest)
    yield r"wq must have shape \[N, C\]", (x, wq[:, :5], bq, *rest)
    yield r"bq must have shape \[N\]", (x, wq, bq[:1], *rest)
    yield r"wk must have shape \[N, C\]", (x, wq, bq, wk[:2], bk, wv, bv, wo, bo)
    yield r"wv must have shape \[N, C\]", (x, wq, bq, wk, bk, wv[:, :2], bv, wo, bo)
    yield r"wo must have shape \[C, N\]", (x, wq, bq, wk, bk, wv, bv, wo.t(), bo)
    yield r"bo must have shape \[C\]", (x, wq, bq, wk, bk, wv, bv, wo, bo[:3])
    yield "wo must be a 2-D tensor", (x, wq, bq, wk, bk, wv, bv, wo[0], bo)
    yield "x must be a floating-point tensor", (x.long(), wq, bq, *rest)
    yield "wv must be a floating-point tensor", (x, wq, bq, wk, bk, wv.int(), bv, wo, bo)
    yield "bk has dtype torch.float64|bk has dtype Double", (x, wq, bq, wk, bk.double(), wv, bv, wo, bo)


def _bad_cases_spatial():
    x, wq, bq, wk, bk, wv, bv = make_args2(2, 8, 4, 4, dtype=torch.float32)
    yield "x must be a 4-D tensor", (x[0], wq, bq, wk, bk, wv, bv)
    yield r"wq must have shape \[C\]", (x, wq[:5], bq, wk, bk, wv, bv)
    yield r"bk must have shape \[1\]", (x, wq, bq, wk, torch.zeros(2), wv, bv)
    yield "wv must be a 1-D tensor", (x, wq, bq, wk, bk, wv[None], bv)
    yield "x must be a floating-point tensor", (x.int(), wq, bq, wk, bk, wv, bv)
    yield "wk must be a floating-point tensor", (x, wq, bq, wk.long(), bk, wv, bv)
    yield "bv has dtype torch.float16|bv has dtype Half", (x, wq, bq, wk, bk, wv, bv.half())
    xb = x.bfloat16()
    yield "wq has dtype torch.float16 but x has dtype torch.bfloat16; the weights must have x's dtype, or be float32", \
        (xb, wq.half(), bq, wk, bk, wv, bv)
    yield "bq has dtype torch.float64 but x has dtype torch.float16", \
        (x.half(), wq.half(), bq.double(), wk.half(), bk.half(), wv.half(), bv.half())
    yield "wk has dtype torch.bfloat16 but wq has dtype torch.float32; all weights must have one dtype", \
        (xb, wq, bq, wk.bfloat16(), bk, wv, bv)


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("which", ["channel", "spatial"])
def test_bad_input_names_the_argument(impl, which):
    wrapper = cubs_channel if which == "channel" else cubs_spatial
    cases = _bad_cases_channel() if which == "channel" else _bad_cases_spatial()
    for pattern, args in cases:
        with pytest.raises((RuntimeError, TypeError), match=pattern):
            wrapper(*args, impl=impl)
        with pytest.raises((RuntimeError, TypeError), match=pattern):
            OPS[which][0](*args)


def test_mixed_devices_name_the_argument():
    x, wq, bq, wk, bk, wv, bv = make_args2(2, 8, 4, 4, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="wk is on meta but x is on cpu"):
        torch.ops.recogfast.cubs_spatial(x, wq, bq, wk.to("meta"), bk, wv, bv)
    x, *w = make_args1(2, 8, 4, 4, 3, dtype=torch.float32)
    w[6] = w[6].to("meta")
    with pytest.raises(RuntimeError, match="wo is on meta but x is on cpu"):
        torch.ops.recogfast.cubs_channel(x, *w)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_mixed_cpu_cuda_names_the_argument():
    x, wq, bq, wk, bk, wv, bv = make_args2(2, 8, 4, 4, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="wq is on cuda"):
        torch.ops.recogfast.cubs_spatial(x, wq.cuda(), bq, wk, bk, wv, bv)


# --- memory: the HW×HW matrix is never built ----------------------------------------------------------

_MEMORY_SCRIPT = r"""
import torch
import recogfast

def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)

torch.manual_seed(0)
C, H, W = 8, 192, 192
x = torch.randn(1, C, H, W)
w = [torch.randn(C) / C**0.5 if i % 2 == 0 else torch.zeros(1) for i in range(6)]
# Warm up threads and the allocator on a small input, then measure the big one from a reset peak:
# writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS (Linux >= 4.0).
torch.ops.recogfast._cubs_spatial_backward(torch.randn(1, C, 8, 8), torch.randn(1, C, 8, 8), *w)
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before, reset = status_kib("VmRSS"), 1
except OSError:  # no reset: measure growth of the peak itself (a weaker bound, still far below 5.4 GB)
    before, reset = status_kib("VmHWM"), 0
y = torch.ops.recogfast.cubs_spatial(x, *w)
gx, *gw = torch.ops.recogfast._cubs_spatial_backward(torch.ones_like(y), x, *w)
assert torch.isfinite(y).all() and torch.isfinite(gx).all()
print((status_kib("VmHWM") - before) * 1024, x.numel() * x.element_size(), reset)
"""


def test_spatial_192x192_never_builds_the_hw_by_hw_matrix():
    """Block 2 on one 8×192×192 input, forward and backward on the CPU: the similarity matrix alone
    would be (192·192)² · 4 B = 5.4 GB; the peak RSS may grow by at most 16 × the input (19 MB).
    The op's own buffers are y, grad_y, grad_x (3 × the input) and about 13 floats a pixel of scratch."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    grown, input_bytes, reset = map(int, out.stdout.split())
    if reset:
        assert grown > 0  # the measurement sees the op's own buffers
    assert grown <= 16 * input_bytes, f"peak RSS grew by {grown / 2**20:.1f} MiB for a {input_bytes / 2**20:.1f} MiB input"


@pytest.mark.skipif(not (torch.cuda.is_available() and recogfast.dispatch.cuda_kernels_compiled()),
                    reason="needs a GPU and the CUDA kernels")
def test_cuda_spatial_backward_indices_past_2_to_the_31_with_one_channel():
    """C = 1: the backward kernel reads dqkv[2·B·P + bp] < 3·B·P, beyond x's numel: with B·P = 7.3e8 that
    passes 2^31 while numel does not, so the index width must come from 3·B·P. Samples are independent,
    so the last samples' gradients must equal those of a small call on just those samples (~15 s on an H200)."""
    free, _ = torch.cuda.mem_get_info()
    if free < 40 * 2**30:
        pytest.skip("needs 40 GiB of free GPU memory")
    B, H, W = 65535, 100, 111  # the kernel's batch limit; 3·B·P = 2.18e9 > 2^31 - 1 > numel = 7.3e8
    x = torch.randn(B, 1, H, W, device="cuda", dtype=torch.bfloat16)
    w = [torch.randn(1, device="cuda", dtype=torch.bfloat16) for _ in range(6)]
    gy = torch.randn_like(x)
    x_tail, gy_tail = x[-1000:].clone(), gy[-1000:].clone()
    gx = torch.ops.recogfast._cubs_spatial_backward(gy, x, *w)[0][-1000:].clone()
    del gy
    torch.cuda.empty_cache()
    gx_tail = torch.ops.recogfast._cubs_spatial_backward(gy_tail, x_tail, *w)[0]
    torch.testing.assert_close(gx, gx_tail)
