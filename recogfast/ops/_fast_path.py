"""The modules' fast path (`GateOp.module_call`, `pair_call`): a gate op's forward and backward kernels, or two
gate ops' (a CUBS placement), as one autograd node in eager mode on plain tensors, with the weights prepared
outside autograd. For an op with saved statistics (CUBS Block 2) the node saves them and its backward reads them
(`GateOp.forward_saving` / `backward_saving`, recogfast/ops/_spec.py)."""

from __future__ import annotations

import contextlib

import torch

from recogfast import dispatch

_HALF = (torch.float16, torch.bfloat16)

# ------------------------------------------------------------------------------- the modules' fast path
_below_autograd = torch._C._AutoDispatchBelowAutograd
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _eager_plain(x, params) -> bool:
    """Eager mode on plain tensors: no compiler, exporter, jit tracer or functorch transform is looking."""
    if type(x) is not torch.Tensor or torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None \
            or torch._C._are_functorch_transforms_active():
        return False
    for p in params:
        if type(p) not in _PLAIN:
            return False
    return True


def _needs_grad(x, *param_lists) -> bool:
    """Grad mode is on and x or a parameter needs a gradient."""
    if not torch.is_grad_enabled():
        return False
    if x.requires_grad:
        return True
    for params in param_lists:
        for p in params:
            if p.requires_grad:
                return True
    return False


def _grad_mode_guard():
    """create_graph=True (grad mode on in backward): through the registered backward ops, whose autograd
    formula refuses a derivative of these gradients with an error naming the op; else below autograd."""
    return contextlib.nullcontext() if torch.is_grad_enabled() else _below_autograd()


def _prepare(dt, params, flat):
    """The weights as the op takes them: flattened per `flat`; fp32 parameters with a 16-bit x as they are
    (mixed, no cast), any other dtype cast to x's, as before mixed calls existed (float64 parameters with
    float32 x, 16-bit parameters with another x)."""
    mixed = dt in _HALF and all(p.dtype is torch.float32 for p in params)
    out = []
    for p, f in zip(params, flat):
        if p.dtype is not dt and not mixed:
            p = p.to(dt)
        out.append(p if f == 0 else p.flatten(1) if f == 1 else p.reshape(-1))
    return out


def _prepare_shaped(dt, params, flat, shapes: list):
    """`_prepare` for the one-node paths, in the same loop appending to `shapes` each parameter's shape where
    it is flattened (None elsewhere), which the backward views its gradient back to. (The reference path keeps
    `_prepare`.)"""
    mixed = dt in _HALF and all(p.dtype is torch.float32 for p in params)
    out = []
    for p, f in zip(params, flat):
        if p.dtype is not dt and not mixed:
            p = p.to(dt)
        if f == 0:
            shapes.append(None)
        else:
            shapes.append(p.shape)
            p = p.flatten(1) if f == 1 else p.reshape(-1)
        out.append(p)
    return out


def _unflatten(grads: list, start: int, shapes) -> tuple:
    """`grads` as the backward returns it, the gradients of the flattened weights (grads[start:], in the order
    of `shapes`) viewed back in their parameters' shapes. In place on the list: a generator spliced into a new
    tuple cost ~0.4 µs more a call."""
    for i, s in enumerate(shapes, start):
        if s is not None:
            # view(*shape): Tensor.view parses a torch.Size argument about 1 µs slower than the same ints as
            # varargs (a SE call views two gradients); a 0-d parameter's shape () has no varargs form
            grads[i] = grads[i].view(*s) if s else grads[i].view(s)
    return tuple(grads)


class _FusedGate(torch.autograd.Function):
    """One gate op's forward and backward kernels as one autograd node (see `GateOp.module_call`)."""

    @staticmethod
    def forward(ctx, spec, flat, x, *params):
        # grad mode is off in here: no autograd nodes; the flattened weights' shapes, to give their gradients
        # back in the parameters' shapes
        ctx.shapes = shapes = []
        weights = _prepare_shaped(x.dtype, params, flat, shapes)
        with _below_autograd():
            y, saved = spec.forward_saving(x, *weights)
        ctx.spec, ctx.n_saved = spec, len(saved)
        ctx.save_for_backward(x, *saved, *weights)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        saved = ctx.saved_tensors
        n = 1 + ctx.n_saved  # x, the forward's statistics, the weights
        with _grad_mode_guard():
            grads = ctx.spec.backward_saving(grad_y, saved[0], saved[1:n], saved[n:])
        # the gradients have the prepared weights' dtypes; where those were cast, the engine casts them back
        return _unflatten([None, None, *grads], 3, ctx.shapes)


def pair_call(placement: str, a, impl_a: str, params_a, flat_a, b, impl_b: str, params_b, flat_b, x):
    """Two gate ops on x as one autograd node when both run fused in eager mode on plain tensors and x or a
    weight needs a gradient: ``parallel`` a(x) + b(x), ``serial12`` b(a(x)), ``serial21`` a(b(x)). Returns
    None where that does not hold (the caller then runs the two modules); the values, gradients, saved
    tensors and errors are those of the two modules' calls (`GateOp.module_call`) one after the other."""
    if not _needs_grad(x, params_a, params_b) or not _eager_plain(x, params_a) or not _eager_plain(x, params_b):
        return None
    # the dispatch decisions in the order the modules would make them (records, warnings, impl='fused' errors)
    first, then = ((b, impl_b), (a, impl_a)) if placement == "serial21" else ((a, impl_a), (b, impl_b))
    if not (dispatch.use_fused(first[0].name, first[1], x) and dispatch.use_fused(then[0].name, then[1], x)):
        return None
    return _FusedPair.apply(placement, a, flat_a, b, flat_b, len(params_a), x, *params_a, *params_b)


class _FusedPair(torch.autograd.Function):
    """Two gate ops' forward and backward kernels as one autograd node (see `pair_call`)."""

    @staticmethod
    def forward(ctx, placement, a, flat_a, b, flat_b, n_a, x, *params):
        pa, pb = params[:n_a], params[n_a:]
        ctx.shapes = shapes = []
        wa, wb = _prepare_shaped(x.dtype, pa, flat_a, shapes), _prepare_shaped(x.dtype, pb, flat_b, shapes)
        with _below_autograd():
            if placement == "parallel":
                mid = x
                ya, sa = a.forward_saving(x, *wa)
                yb, sb = b.forward_saving(x, *wb)
                y = ya + yb
            elif placement == "serial12":
                mid, sa = a.forward_saving(x, *wa)
                y, sb = b.forward_saving(mid, *wb)
            else:
                mid, sb = b.forward_saving(x, *wb)
                y, sa = a.forward_saving(mid, *wa)
        ctx.placement, ctx.a, ctx.b, ctx.n_a, ctx.n_b = placement, a, b, len(wa), len(wb)
        ctx.n_sa = len(sa)
        ctx.save_for_backward(x, mid, *wa, *wb, *sa, *sb)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, mid, *w = ctx.saved_tensors
        n_w = ctx.n_a + ctx.n_b
        wa, wb, sa, sb = w[:ctx.n_a], w[ctx.n_a:n_w], w[n_w:n_w + ctx.n_sa], w[n_w + ctx.n_sa:]

        def a_bwd(gy, inp, *weights):
            return ctx.a.backward_saving(gy, inp, sa, weights)

        def b_bwd(gy, inp, *weights):
            return ctx.b.backward_saving(gy, inp, sb, weights)

        with _grad_mode_guard():
            if ctx.placement == "parallel":
                ga, gb = a_bwd(grad_y, x, *wa), b_bwd(grad_y, x, *wb)
                gx = ga[0] + gb[0]
            elif ctx.placement == "serial12":
                gb = b_bwd(grad_y, mid, *wb)
                ga = a_bwd(gb[0], x, *wa)
                gx = ga[0]
            else:
                ga = a_bwd(grad_y, mid, *wa)
                gb = b_bwd(ga[0], x, *wb)
                gx = gb[0]
        return _unflatten([None] * 6 + [gx, *ga[1:], *gb[1:]], 7, ctx.shapes)
