"""The fused modules' eager fast path (issue 25, the host cost cut): SEBlock and the CUBS blocks call their
kernels through one autograd node (recogfast/ops/_fast_path.py `_FusedGate`; `CUBSBlock` both blocks through
`_FusedPair`), with the weights flattened (and, unless the call is mixed, cast) outside autograd. It must give
bit for bit what the module's plain body gives (the wrapper on weights prepared with autograd, one module after
the other; fp32 weights with a 16-bit x passed as they are, docs/SPEC.md "Dtypes"): outputs, input and weight
gradients (dtype, shape, strides), under autocast, in channels_last; refuse
a double backward naming the op; and leave hooks, parametrizations and the dispatch record working."""

import pytest
import torch
from torch.nn.utils import parametrize

from conftest import DEVICES
from recogfast import dispatch
from recogfast.nn import CUBSBlock, CUBSBlock1, CUBSBlock2, SEBlock
from recogfast.ops import cubs_channel, cubs_spatial, se_gate


def _cast(ts, dt):
    """fp32 weights stay as they are with a 16-bit x (mixed); any other dtype is cast to x's."""
    if dt in (torch.float16, torch.bfloat16) and all(t.dtype == torch.float32 for t in ts):
        return list(ts)
    return [t.to(dt) for t in ts]


def _old_se(m, x):
    return se_gate(x, *_cast([m.fc1.weight.flatten(1), m.fc1.bias, m.fc2.weight.flatten(1), m.fc2.bias], x.dtype),
                   impl=m.impl)


def _old_b1(m, x):
    return cubs_channel(x, *_cast([t for lin in (m.q, m.k, m.v, m.out) for t in (lin.weight, lin.bias)], x.dtype),
                        impl=m.impl)


def _old_b2(m, x):
    return cubs_spatial(x, *_cast([t for c in (m.q, m.k, m.v) for t in (c.weight.reshape(-1), c.bias)], x.dtype),
                        impl=m.impl)


def _old_pair(m, x):
    b1, b2 = (lambda t: _old_b1(m.block1, t)), (lambda t: _old_b2(m.block2, t))
    if m.placement == "parallel":
        return b1(x) + b2(x)
    return b2(b1(x)) if m.placement == "serial12" else b1(b2(x))


# (x dtype, module dtype, channels_last, autocast to bfloat16, x requires grad)
CASES = [(torch.float32, torch.float32, False, False, True), (torch.float64, torch.float64, True, False, True),
         (torch.bfloat16, torch.float32, True, True, True), (torch.float16, torch.float32, False, False, True),
         (torch.float32, torch.float32, True, False, False)]
MODULES = [("se", lambda: SEBlock(16, rd_channels=4, impl="fused"), _old_se),
           ("cubs1", lambda: CUBSBlock1(16, impl="fused"), _old_b1),
           ("cubs2", lambda: CUBSBlock2(16, impl="fused"), _old_b2)] + [
    (p, (lambda p=p: CUBSBlock(16, p, impl="fused")), _old_pair) for p in ("serial12", "serial21", "parallel")]


def _run(fn, m, x, gy, autocast, x_grad):
    m.zero_grad(set_to_none=True)
    xx = x.detach().clone().requires_grad_(x_grad)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        y = fn(xx)
    y.backward(gy)
    return [y, xx.grad, *(p.grad for p in m.parameters())]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{str(c[0])[6:]}{'-cl' if c[2] else ''}{'-autocast' if c[3] else ''}"
                         f"{'' if c[4] else '-weights-only'}")
@pytest.mark.parametrize("name,make,old", MODULES, ids=[m[0] for m in MODULES])
def test_fast_path_is_bitwise_the_previous_module_body(device, case, name, make, old):
    x_dtype, m_dtype, channels_last, autocast, x_grad = case
    torch.manual_seed(0)
    m = make().to(device=device, dtype=m_dtype)
    x = torch.randn(3, 16, 5, 4, device=device).to(x_dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    gy = torch.randn_like(x)
    got = _run(m, m, x, gy, autocast, x_grad)
    want = _run(lambda t: old(m, t), m, x, gy, autocast, x_grad)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
            continue
        assert (g.dtype, g.shape, g.stride()) == (w.dtype, w.shape, w.stride())
        assert torch.equal(g, w)
    with torch.no_grad():
        assert torch.equal(m(x), old(m, x))
    node = m(x.detach().requires_grad_()).grad_fn  # one autograd node for the whole call
    assert type(node).__name__ == ("_FusedPairBackward" if isinstance(m, CUBSBlock) else "_FusedGateBackward")


@pytest.mark.parametrize("name,make,old", MODULES, ids=[m[0] for m in MODULES])
def test_fast_path_refuses_double_backward(name, make, old):
    m = make()
    x = torch.randn(2, 16, 3, 3, requires_grad=True)
    (g,) = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def test_pair_falls_back_to_the_blocks_for_hooks_and_mixed_impls():
    m = CUBSBlock(16, "serial12", impl="fused")
    seen = []
    m.block1.register_forward_hook(lambda mod, i, o: seen.append("block1"))
    m(torch.randn(2, 16, 3, 3, requires_grad=True)).sum().backward()
    assert seen == ["block1"]
    m = CUBSBlock(16, "serial21", impl="fused")
    with dispatch.record() as calls:
        m(torch.randn(2, 16, 3, 3, requires_grad=True)).sum().backward()
    assert calls == {"cubs_spatial": {"fused cpu/float32"}, "cubs_channel": {"fused cpu/float32"}}
    m.block2.impl = "reference"
    with dispatch.record() as calls:
        m(torch.randn(2, 16, 3, 3, requires_grad=True)).sum().backward()
    assert calls == {"cubs_spatial": {"reference cpu/float32"}, "cubs_channel": {"fused cpu/float32"}}


class _Double(torch.nn.Module):
    def forward(self, w):
        return 2 * w


def test_parametrized_weights_get_their_gradients():
    m = SEBlock(16, rd_channels=4, impl="fused")
    parametrize.register_parametrization(m.fc1, "weight", _Double())
    x = torch.randn(2, 16, 3, 3)
    y = m(x)
    y.sum().backward()
    torch.testing.assert_close(y, _old_se(m, x), rtol=0, atol=0)
    assert m.fc1.parametrizations.weight.original.grad is not None
    m = CUBSBlock(16, "parallel", impl="fused")
    parametrize.register_parametrization(m.block2.q, "weight", _Double())
    m(x).sum().backward()
    assert m.block2.q.parametrizations.weight.original.grad is not None


def test_unflatten_gives_each_gradient_its_parameter_shape():
    # view(*shape) has no form for a 0-d parameter's shape (); flattened by reshape(-1) its gradient has shape [1]
    from recogfast.ops._fast_path import _unflatten

    grads = [torch.ones(1), torch.ones(4, 3), torch.ones(5)]
    shapes = [torch.Size([]), torch.Size([4, 3, 1, 1]), None]
    out = _unflatten([None, *grads], 1, shapes)
    assert out[0] is None and out[3] is grads[2]
    assert [g.shape for g in out[1:]] == [torch.Size([]), torch.Size([4, 3, 1, 1]), torch.Size([5])]
