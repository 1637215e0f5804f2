"""Double backward through every fused op is refused with an error naming the op (issue 13: it came back
as wrong numbers, or None, with only a warning); first derivatives with create_graph=True still agree with
the reference, and the reference path gives correct second derivatives."""

import pytest
import torch

from conftest import DEVICES
from recogfast.ops import cubs_channel, cubs_spatial, ms_loss, se_gate


def _cases(device):
    d = dict(dtype=torch.float64, device=device)
    x = torch.randn(2, 6, 4, 5, **d)
    se = [torch.randn(3, 6, **d) * 0.4, torch.randn(3, **d) * 0.1, torch.randn(6, 3, **d) * 0.5,
          torch.randn(6, **d) * 0.1]
    ch = [torch.randn(4, 6, **d) * 0.8, torch.randn(4, **d) * 0.3] * 3 + [torch.randn(6, 4, **d) * 0.5,
                                                                          torch.randn(6, **d) * 0.3]
    ch = [t.clone() for t in ch]
    sp = [t.clone() for t in [torch.randn(6, **d) * 0.6, torch.randn(1, **d) * 0.3] * 3]
    yield "se_gate", se_gate, [x, *se]
    yield "cubs_channel", cubs_channel, [x, *ch]
    yield "cubs_spatial", cubs_spatial, [x, *sp]
    e = torch.randn(12, 5, **d)
    labels = torch.arange(12, device=device) // 3
    yield "ms_loss", lambda emb, impl: ms_loss(emb, labels, impl=impl), [e]


@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_raises_naming_the_op(device):
    for name, fn, args in _cases(device):
        leaves = [a.clone().requires_grad_(True) for a in args]
        y = fn(*leaves, impl="fused")
        (g,) = torch.autograd.grad(y.square().sum(), leaves[0], create_graph=True)
        # First derivatives under create_graph are right ...
        ref_leaves = [a.clone().requires_grad_(True) for a in args]
        (g_ref,) = torch.autograd.grad(fn(*ref_leaves, impl="reference").square().sum(), ref_leaves[0],
                                       create_graph=True)
        torch.testing.assert_close(g, g_ref)
        # ... and differentiating them again is one clear error.
        with pytest.raises(RuntimeError, match=f"recogfast::{name}: double backward .* impl='reference'"):
            torch.autograd.grad(g.square().sum(), leaves[0])
        # The reference path gives second derivatives (sanity: they exist and are finite).
        (gg,) = torch.autograd.grad(g_ref.square().sum(), ref_leaves[0])
        assert torch.isfinite(gg).all()
