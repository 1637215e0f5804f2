"""The numerics policy of the fused attention ops (README "Numerics"), fused against the pure-PyTorch
reference and against float64, for the inputs issue 13 found them to disagree on:

- large activations (x * 1e4: saturated softmax rows) — fused fp32 within the fp32 rule of the op tests;
- huge activations (x * 1e30) — fused fp32 finite and close to the float64 truth (the fp32 reference
  overflows q k to inf and returns NaN there: the fused ops are right, not the reference);
- NaN or +-inf anywhere in x — every output the reference makes non-finite is non-finite in the fused op too
  (never a finite number from a non-finite input);
- zero-size maps (H = 0) — y is empty and every gradient is exactly 0 (no output depends on any input;
  the references' NaN weight gradients for SE and Block 1 are 0 * the mean of no pixels).
"""

import pytest
import torch

from conftest import DEVICES
from recogfast.ops import cubs_channel_reference, cubs_spatial_reference, se_gate_reference

import test_cubs
import test_se_gate

OPS = {
    "se_gate": (torch.ops.recogfast.se_gate, se_gate_reference, lambda *s, **k: test_se_gate.make_args(*s, **k),
                (2, 16, 3, 3, 4)),
    "cubs_channel": (torch.ops.recogfast.cubs_channel, cubs_channel_reference, test_cubs.make_args1, (2, 16, 3, 3, 8)),
    "cubs_spatial": (torch.ops.recogfast.cubs_spatial, cubs_spatial_reference, test_cubs.make_args2, (2, 16, 3, 3)),
}


def _value_and_grads(fn, args, gy):
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    y = fn(*leaves)
    return [y.detach(), *torch.autograd.grad(y, leaves, gy.to(y.dtype))]


def _run(op, device, edit):
    fused, ref, make, shape = OPS[op]
    args64 = make(*shape, device=device)
    edit(args64[0])
    gy = torch.randn_like(args64[0])
    args32 = [a.float() for a in args64]
    return (_value_and_grads(fused, args32, gy), _value_and_grads(ref, args32, gy),
            _value_and_grads(ref, args64, gy))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", list(OPS))
def test_large_activations_fp32_within_the_reference_rule(device, op):
    f, r, truth = _run(op, device, lambda x: x.mul_(1e4))
    grad_scale = max(t.abs().max().item() for t in truth[1:])
    for i, (a, b, t) in enumerate(zip(f, r, truth)):
        scale = t.abs().max().item() if i == 0 else grad_scale
        err, ref_err = (a.double() - t).abs().max().item(), (b.double() - t).abs().max().item()
        assert err <= 2e-5 * scale + 2 * ref_err, f"{op} output {i}: {err} vs {ref_err} (scale {scale})"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", list(OPS))
def test_huge_activations_fused_fp32_is_finite_and_right(device, op):
    f, _, truth = _run(op, device, lambda x: x.mul_(1e30))
    grad_scale = max(t.abs().max().item() for t in truth[1:])
    for i, (a, t) in enumerate(zip(f, truth)):
        assert torch.isfinite(a).all(), f"{op} output {i} is not finite"
        scale = t.abs().max().item() if i == 0 else grad_scale
        err = (a.double() - t).abs().max().item()
        assert err <= 1e-5 * scale, f"{op} output {i}: error {err} at scale {scale}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_input_never_gives_a_finite_output(device, op, bad):
    def edit(x):
        x[0, 1, 1, 1] = bad

    f, r, _ = _run(op, device, edit)
    for i, (a, b) in enumerate(zip(f, r)):
        assert bool(torch.isfinite(a).all()) == bool(torch.isfinite(b).all()), f"{op} output {i}"
    assert not torch.isfinite(f[0][0]).all()  # the sample holding the bad value
    assert torch.isfinite(f[0][1]).all()  # the other sample is untouched (samples are independent)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", list(OPS))
def test_zero_size_maps_give_an_empty_output_and_zero_gradients(device, op):
    fused, _, make, shape = OPS[op]
    args = make(shape[0], shape[1], 0, *shape[3:], device=device)
    out = _value_and_grads(fused, args, torch.randn_like(args[0]))
    assert out[0].shape == args[0].shape and out[0].numel() == 0
    for i, g in enumerate(out[1:]):
        assert torch.equal(g, torch.zeros_like(g)), f"{op} gradient {i}"
