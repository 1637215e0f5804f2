"""CUBS Block 2 in two B·HW² passes (issue 25 part 5): the training forward ``_cubs_spatial_forward_train`` saves
per row f_i, 1 / l_i and the covariance factor of dq_i, and ``_cubs_spatial_backward_saved`` reads them instead
of recomputing the row pass. Its y is the forward's and its gradients are the recomputing backward's, bit for bit
(the same sums in the same order, CPU and CUDA); the wrapper and the modules take it whenever a gradient will be
needed; gradcheck, opcheck, the bad-stats messages and the fp32 accuracy rule of test_cubs.py hold on it."""

import pytest
import torch

from conftest import DEVICES, MIXED_DTYPES
from recogfast.ops import cubs_spatial, cubs_spatial_reference
from test_cubs import BIAS_GRAD_SEEDS, FORMATS, make_args2

OPS = torch.ops.recogfast
# B = 1, 1x1 and 2x2 maps, C = 1 and 3, odd H·W, several 512-row tiles (the CUDA row / column passes' tiles).
SHAPES = [(2, 16, 5, 7), (1, 3, 1, 1), (1, 3, 2, 2), (3, 33, 3, 5), (1, 1, 9, 9), (2, 8, 23, 29)]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def _args(shape, dtype, device, fmt, mixed=False):
    args = make_args2(*shape, device=device, memory_format=fmt)
    x = args[0].to(dtype)
    wdt = torch.float32 if mixed else dtype
    return [x, *(t.to(wdt) for t in args[1:])]


def _saved(x, *w):
    """The wrapper's fused path with a gradient needed: the training forward and the saved-stats backward."""
    return cubs_spatial(x, *w, impl="fused")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype,mixed", [(d, False) for d in DTYPES] + [(d, True) for d in MIXED_DTYPES],
                         ids=lambda v: str(v).replace("torch.", ""))
def test_saved_stats_backward_equals_the_recomputing_backward(device, fmt, dtype, mixed):
    for shape in SHAPES:
        x, *w = _args(shape, dtype, device, fmt, mixed)
        gy = torch.randn_like(x)
        y, stats = OPS._cubs_spatial_forward_train(x, *w)
        assert torch.equal(y, OPS.cubs_spatial(x, *w)), shape
        assert y.is_contiguous(memory_format=fmt)
        want = torch.float64 if dtype is torch.float64 else torch.float32
        assert stats.shape == (3, shape[0], shape[2] * shape[3]) and stats.dtype is want and stats.is_contiguous()
        saved = OPS._cubs_spatial_backward_saved(gy, x, stats, *w)
        recomputed = OPS._cubs_spatial_backward(gy, x, *w)
        for i, (a, b) in enumerate(zip(saved, recomputed)):
            assert a.dtype == b.dtype and torch.equal(a, b), (shape, i)
        assert bool(((stats[1] > 0) & (stats[1] <= 1)).all())  # 1 / l with l >= 1 (the row maximum's term is 1)


@pytest.mark.parametrize("device", DEVICES)
def test_saved_stats_match_the_reference_float64(device):
    """f from the saved stats is the reference's attention output; the saved path's gradients the reference's."""
    for shape in SHAPES:
        for fmt in FORMATS:
            x, *w = make_args2(*shape, device=device, memory_format=fmt)
            _, stats = OPS._cubs_spatial_forward_train(x, *w)
            B, C, H, W = x.shape
            xf = x.reshape(B, C, H * W)
            q, k, v = (torch.einsum("bcp,c->bp", xf, w[2 * i]) + w[2 * i + 1] for i in range(3))
            s = q[:, :, None] * k[:, None, :]
            a = torch.softmax(s, dim=-1)
            f = (a * v[:, None, :]).sum(-1)
            torch.testing.assert_close(stats[0], f, rtol=1e-12, atol=1e-12)
            l = torch.exp(s - s.amax(-1, keepdim=True)).sum(-1)
            torch.testing.assert_close(stats[1], 1 / l, rtol=1e-12, atol=0)
            cov = (a * k[:, None, :] * (v[:, None, :] - f[:, :, None])).sum(-1)
            torch.testing.assert_close(stats[2], cov, rtol=1e-10, atol=1e-12)
            gy = torch.randn_like(x)
            leaves = [t.detach().clone().requires_grad_(True) for t in (x, *w)]
            g = torch.autograd.grad(_saved(*leaves), leaves, gy)
            leaves = [t.detach().clone().requires_grad_(True) for t in (x, *w)]
            g_ref = torch.autograd.grad(cubs_spatial_reference(*leaves), leaves, gy)
            for u, r in zip(g, g_ref):
                torch.testing.assert_close(u, r, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_saved_path_gradcheck_float64(device):
    for shape in [(2, 5, 3, 4), (1, 3, 1, 1), (1, 2, 3, 3)]:
        for fmt in FORMATS:
            args = make_args2(*shape, device=device, memory_format=fmt, grad=True)
            assert torch.autograd.gradcheck(_saved, args, eps=1e-6, atol=1e-7)


def test_wrapper_and_module_take_the_training_forward_only_with_a_gradient():
    """With a gradient needed the wrapper and the module fast path call the training forward and the saved-stats
    backward; without one, only the inference forward (l and sv: as cheap as before)."""
    from recogfast.nn import CUBSBlock2

    args = make_args2(2, 8, 5, 5)
    m = CUBSBlock2(8, impl="fused").double()
    with torch.profiler.profile() as prof:
        leaves = [a.clone().requires_grad_(True) for a in args]
        cubs_spatial(*leaves, impl="fused").sum().backward()  # wrapper, grad
        with torch.no_grad():
            cubs_spatial(*leaves, impl="fused")  # wrapper, no grad
        cubs_spatial(*args, impl="fused")  # wrapper, nothing needs a gradient
        m(args[0]).sum().backward()  # module, its parameters need a gradient
        with torch.no_grad():
            m(args[0])  # module, no grad
    counts = {}
    for e in prof.events():
        if e.name.startswith("recogfast::"):
            counts[e.name] = counts.get(e.name, 0) + 1
    assert counts.get("recogfast::_cubs_spatial_forward_train", 0) == 2, counts
    assert counts.get("recogfast::_cubs_spatial_backward_saved", 0) == 2, counts
    assert counts.get("recogfast::_cubs_spatial_backward", 0) == 0, counts
    assert counts.get("recogfast::cubs_spatial", 0) == 3, counts


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("seed", BIAS_GRAD_SEEDS)
def test_saved_path_fp32_gradients_within_twice_the_reference_seeded(device, fmt, seed):
    """test_cubs.py's seeded fp32 rule (issue 25) on the saved-stats path: every gradient within 2x the fp32
    reference's error against the float64 truth plus one fp32 rounding unit of the call's largest gradient."""
    torch.manual_seed(seed)
    args64 = make_args2(4, 64, 7, 7, device=device, memory_format=fmt)
    gy64 = torch.randn_like(args64[0])

    def grads(fn, args, gy):
        leaves = [a.detach().clone().requires_grad_(True) for a in args]
        return torch.autograd.grad(fn(*leaves), leaves, gy)

    truth = grads(cubs_spatial_reference, args64, gy64)
    args32 = [a.float() for a in args64]
    g, g_ref = grads(_saved, args32, gy64.float()), grads(cubs_spatial_reference, args32, gy64.float())
    floor = torch.finfo(torch.float32).eps * max(t.abs().max().item() for t in truth)
    for name, out, ref, t in zip(["x", "wq", "bq", "wk", "bk", "wv", "bv"], g, g_ref, truth):
        err = (out.double() - t).abs().max().item()
        ref_err = (ref.double() - t).abs().max().item()
        assert err <= 2 * ref_err + floor, f"grad {name}: {err:.3g} vs the reference's {ref_err:.3g} (floor {floor:.3g})"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mixed", [False, True])
def test_opcheck_training_ops(device, mixed):
    for i, shape in enumerate(SHAPES[:4]):
        fmt = FORMATS[i % 2]
        dtype = torch.bfloat16 if mixed else torch.float64
        x, *w = _args(shape, dtype, device, fmt, mixed)
        torch.library.opcheck(OPS._cubs_spatial_forward_train.default,
                              [x.requires_grad_(True), *(t.requires_grad_(True) for t in w)])
        x, w = x.detach(), [t.detach() for t in w]
        _, stats = OPS._cubs_spatial_forward_train(x, *w)
        torch.library.opcheck(OPS._cubs_spatial_backward_saved.default, [torch.randn_like(x), x, stats, *w])


def test_bad_stats_are_named_in_one_line():
    x, *w = make_args2(2, 4, 3, 3)
    gy = torch.randn_like(x)
    _, stats = OPS._cubs_spatial_forward_train(x, *w)
    op = "recogfast::_cubs_spatial_backward_saved: stats"
    cases = [(stats[:, :1], "must have shape \\[3, B, H\\*W\\] = \\[3, 2, 9\\], got \\[3, 1, 9\\]"),
             (stats.float(), "must have dtype torch.float64 \\(the forward's\\), got torch.float32"),
             (stats.transpose(1, 2).contiguous().transpose(1, 2), "must be contiguous")]
    for bad, msg in cases:
        with pytest.raises(RuntimeError, match=f"^{op} {msg}") as info:
            OPS._cubs_spatial_backward_saved(gy, x, bad, *w)
        assert "\n" not in str(info.value).strip()
    with pytest.raises(RuntimeError, match=f"^{op} is on meta but x is on cpu"):
        OPS._cubs_spatial_backward_saved(gy, x, stats.to("meta"), *w)
