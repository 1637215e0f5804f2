"""Double backward through the fused ops: refused with an error naming the op.

Each op's backward is itself a compiled op (``recogfast::<op>_backward``) whose derivative is not
implemented. Without an autograd formula for it, PyTorch would treat its outputs as constants when a
caller differentiates a gradient (``create_graph=True``) and hand back wrong second derivatives or None
with only a warning. Registering this formula makes that one clear error instead; first derivatives, with
or without ``create_graph``, are unaffected.
"""

from __future__ import annotations

import torch


def refuse(op: str) -> None:
    """Register, for ``recogfast::<op>_backward``, an autograd formula that raises."""

    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(
            f"recogfast::{op}: double backward (the gradient of a gradient through the fused kernel, "
            f"create_graph=True) is not implemented; use impl='reference' for higher-order derivatives"
        )

    torch.library.register_autograd(f"recogfast::{op}_backward", backward, setup_context=setup_context)
