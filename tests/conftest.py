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


# --- mixed calls: float32 weights with a float16 / bfloat16 x (docs/SPEC.md "Dtypes") ----------------------
MIXED_DTYPES = [torch.bfloat16, torch.float16]


def _fwd_bwd(fn, x, weights, gy):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, *weights)]
    y = fn(*leaves)
    return (y, *torch.autograd.grad(y, leaves, gy))


def mixed_errors(fused, reference, args64, gy64, dtype):
    """A gate op on x and grad_y in `dtype` with the weights in float32 (the inputs of `args64` rounded so),
    fused and reference, each against the float64 reference on those same rounded inputs. Asserts the dtypes
    (y and grad_x: x's; weight gradients: float32) and the house rule: every output's max error at most 2x
    the reference's plus, at the output's scale, one rounding unit of a 16-bit output or, for the float32
    weight gradients, the 2e-5 of tests/test_cubs.py's float32 rule (the fused exp and summation order).
    Exactly-zero gradients (grad bk) are measured on the call's largest gradient, as test_cubs.py does.
    Returns the worst error / scale of the fused outputs and of the reference's."""
    x, w, gy = args64[0].to(dtype), [a.float() for a in args64[1:]], gy64.to(dtype)
    truth = _fwd_bwd(reference, x.double(), [t.double() for t in w], gy.double())
    got, ref = _fwd_bwd(fused, x, w, gy), _fwd_bwd(reference, x, w, gy)
    grad_scale = max(t.abs().max().item() for t in truth[1:] if t.numel())
    worst = [0.0, 0.0]
    names = ["y", "grad x"] + [f"grad w{i}" for i in range(len(w))]
    for i, (name, out, r, t) in enumerate(zip(names, got, ref, truth)):
        want = dtype if i < 2 else torch.float32
        assert out.dtype == want and r.dtype == want, f"{name}: {out.dtype} / {r.dtype}, want {want}"
        if not t.numel():
            continue
        scale = t.abs().max().item()
        if i > 0 and scale < 1e-9 * grad_scale:
            scale = grad_scale
        err = (out.double() - t).abs().max().item()
        ref_err = (r.double() - t).abs().max().item()
        slack = torch.finfo(dtype).eps if i < 2 else 2e-5
        assert err <= 2 * ref_err + slack * scale, f"{name} {dtype}: {err} vs reference {ref_err} (scale {scale})"
        worst = [max(worst[0], err / scale), max(worst[1], ref_err / scale)]
    return worst


# --- the one-CTA variants (RECOGFAST_SE_VARIANT, RECOGFAST_CUBS_CHANNEL_VARIANT: read on every call) -------------
def variant_fwd_bwd(monkeypatch, var, op, variant, args, gy):
    """y and every gradient of one fwd+bwd of `op` under environment variable `var` = `variant`, on fresh leaves
    (no accumulation from an earlier call: the gradients are reset)."""
    monkeypatch.setenv(var, variant)
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    y = op(*leaves)
    return [y.detach(), *torch.autograd.grad(y, leaves, gy)]


def variant_runs(monkeypatch, var, op, args64, gy64, dtype):
    """(fused, split, truth) of one fwd+bwd on the GPU: the float64 inputs rounded as a variant test runs them
    (dtype "bf16": x and weights bf16; "fp32"; "bf16-w32": bf16 x, fp32 weights), then `var` = split and fused; the
    truth is the CPU kernel in float64 on the rounded inputs."""
    xdt = torch.float32 if dtype == "fp32" else torch.bfloat16
    wdt = torch.bfloat16 if dtype == "bf16" else torch.float32
    args = [args64[0].to(xdt).cuda()] + [a.to(wdt).cuda() for a in args64[1:]]
    gy = gy64.to(xdt).cuda()
    truth = variant_fwd_bwd(monkeypatch, var, op, "split", [a.cpu().double() for a in args], gy.cpu().double())
    split = variant_fwd_bwd(monkeypatch, var, op, "split", args, gy)
    fused = variant_fwd_bwd(monkeypatch, var, op, "fused", args, gy)
    return fused, split, truth
