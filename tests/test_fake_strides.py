"""Every op's fake (meta) kernel gives its outputs the strides the real kernel gives them, also for
non-contiguous inputs (transposed weights, transposed embeddings, strided activations): torch.compile
plans its buffers from the fake strides, so a mismatch is a silent layout bug in compiled graphs."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from conftest import DEVICES


def _t(rows, cols, device):
    """A [rows, cols] tensor stored transposed (strides (1, rows)): dense but not contiguous."""
    return torch.randn(cols, rows, device=device).t()


def _x(B, C, H, W, device):
    """A strided [B, C, H, W] view (every other column of a wider tensor)."""
    return torch.randn(B, C, H, 2 * W, device=device)[..., ::2]


def cases(device):
    B, C, H, W, R, N = 2, 6, 4, 5, 3, 2
    x = _x(B, C, H, W, device)
    gy = _x(B, C, H, W, device)
    se = [_t(R, C, device), torch.randn(R, device=device), _t(C, R, device), torch.randn(C, device=device)]
    ch = [_t(N, C, device), torch.randn(N, device=device), _t(N, C, device), torch.randn(N, device=device),
          _t(N, C, device), torch.randn(N, device=device), _t(C, N, device), torch.randn(C, device=device)]
    sp = [torch.randn(C, device=device), torch.randn(1, device=device)] * 3
    e, ref = _t(24, 16, device), _t(10, 16, device)
    labels = (torch.arange(24, device=device) // 4)
    ref_labels = torch.arange(10, device=device) % 6
    ops = torch.ops.recogfast
    yield "se_gate", ops.se_gate.default, [x, *se]
    yield "se_gate_backward", ops._se_gate_backward.default, [gy, x, *se]
    yield "cubs_channel", ops.cubs_channel.default, [x, *ch]
    yield "cubs_channel_backward", ops._cubs_channel_backward.default, [gy, x, *ch]
    yield "cubs_spatial", ops.cubs_spatial.default, [x, *sp]
    yield "cubs_spatial_backward", ops._cubs_spatial_backward.default, [gy, x, *sp]
    yield "cubs_spatial_forward_train", ops._cubs_spatial_forward_train.default, [x, *sp]
    stats = ops._cubs_spatial_forward_train.default(x, *sp)[1]
    yield "cubs_spatial_backward_saved", ops._cubs_spatial_backward_saved.default, [gy, x, stats, *sp]
    out = ops.ms_loss.default(e, labels, ref, ref_labels, 2.0, 50.0, 0.5, 0.1, "ms", False)
    yield "ms_loss", ops.ms_loss.default, [e, labels, ref, ref_labels, 2.0, 50.0, 0.5, 0.1, "ms", False]
    yield "ms_loss_backward", ops._ms_loss_backward.default, [
        torch.ones((), device=device), e, labels, ref, ref_labels, out[1], out[2], out[3],
        2.0, 50.0, 0.5, 0.1, "ms", True]


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


@pytest.mark.parametrize("device", DEVICES)
def test_fake_kernels_give_the_real_strides(device):
    checked = 0
    for name, op, args in cases(device):
        real = _flat(op(*args))
        with FakeTensorMode(allow_non_fake_inputs=False) as mode:
            fargs = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            fake = _flat(op(*fargs))
        assert len(real) == len(fake), name
        for i, (r, f) in enumerate(zip(real, fake)):
            assert tuple(r.shape) == tuple(f.shape), f"{name} output {i}: shape {tuple(r.shape)} vs fake {tuple(f.shape)}"
            if r.numel() > 1:
                assert r.stride() == f.stride(), f"{name} output {i}: strides {r.stride()} vs fake {f.stride()}"
            assert r.dtype == f.dtype, f"{name} output {i}"
            checked += 1
    assert checked >= 39  # every output of the ten ops


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_backward_with_transposed_embeddings_matches_eager(device):
    """The ms_loss gradient of transposed embeddings under torch.compile (which uses the fake strides)."""
    from recogfast.ops import ms_loss

    e = _t(24, 16, device)
    labels = torch.arange(24, device=device) // 4

    def f(x):
        return ms_loss(x, labels, impl="fused") * 3

    ee = e.detach().clone().requires_grad_(True)
    f(ee).backward()
    ec = e.detach().clone().requires_grad_(True)
    torch.compile(f, fullgraph=True, backend="aot_eager")(ec).backward()
    torch.testing.assert_close(ec.grad, ee.grad)
    assert ec.grad.stride() == ee.grad.stride()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,cl", [((2, 3, 0, 2), False), ((2, 3, 1, 5), True), ((1, 3, 1, 1), False),
                                      ((2, 1, 4, 4), True), ((2, 3, 4, 5), True)])
def test_outputs_have_torch_empty_strides(device, shape, cl):
    """The kernels allocate through the stable C shim with strides they compute (csrc/ops/stable.h `empty`):
    every output, also of an empty batch or with dimensions of size 1, has the strides torch.empty gives its
    layout (channels_last only where x is that and not also contiguous: memory_format in _spec.py)."""
    from recogfast.ops._spec import memory_format

    x = torch.randn(shape, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if cl else x
    C, R = shape[1], 2
    w = [torch.randn(R, C, device=device), torch.randn(R, device=device), torch.randn(C, R, device=device),
         torch.randn(C, device=device)]
    ops = torch.ops.recogfast
    outs = [ops.se_gate(x, *w), *ops._se_gate_backward(torch.randn_like(x), x, *w)]
    fmts = [memory_format(x)] * 2 + [torch.contiguous_format] * 4
    for i, (out, fmt) in enumerate(zip(outs, fmts)):
        assert out.stride() == torch.empty(out.shape, memory_format=fmt).stride(), f"output {i}"
