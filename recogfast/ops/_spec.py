"""Each op's contract, written once.

A gate op (SE, CUBS Block 1, CUBS Block 2) is y = x * gate(x; weights) for an activation x [B, C, H, W]. Its
`GateOp` spec lists the weights (name, shape rule, how the message writes the shape), the hidden width if
there is one, and the pure-PyTorch reference. From the spec come:

- ``check``: the argument checks, in the order and with the messages of the C++ launchers
  (csrc/ops/checks.h ``gate_ranks`` / ``gate_shapes``); tests/test_op_contracts.py holds one table of bad
  inputs and asserts both entry points give the same exception type and message;
- ``call``: the Python wrapper's body (fused kernel or checked reference, as `recogfast.dispatch` decides);
- the fake (meta) kernels of the op and of its private backward op ``recogfast::_<op>_backward``, and
  the autograd registration, with a double-backward formula that refuses with an error naming the op;
- for an op with saved statistics (``stats``, CUBS Block 2): its training forward
  ``recogfast::_<op>_forward_train`` (x, *weights) -> (y, stats) and ``recogfast::_<op>_backward_saved``
  (grad_y, x, stats, *weights), which the wrapper and the modules take whenever a gradient will be needed, so
  that the backward reads what the forward computed instead of recomputing it; the op itself keeps its
  recomputing backward (what a direct ``torch.ops.recogfast.<op>`` call differentiates through).

`register_autograd` is the registration every op (the MS loss included) goes through.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from recogfast import dispatch
# The modules' fast path (one autograd node a module call), which GateOp.module_call takes.
from recogfast.ops._fast_path import _below_autograd, _eager_plain, _FusedGate, _needs_grad, _prepare

FLOAT_KINDS = "float32, float64, float16 or bfloat16"


def qualname(op: str) -> str:
    return f"recogfast::{op}"


def backward_name(op: str) -> str:
    """The private schema name of an op's backward (torchvision keeps these private, too)."""
    return f"_{op}_backward"


def train_name(op: str) -> str:
    """The private training forward of an op with saved statistics: (x, *weights) -> (y, stats)."""
    return f"_{op}_forward_train"


def saved_backward_name(op: str) -> str:
    """The private backward of an op with saved statistics: (grad_y, x, stats, *weights) -> gradients."""
    return f"_{op}_backward_saved"


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout the kernels keep: channels_last only when x is that and not also plain contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# ------------------------------------------------------------------------------------------ checks
def check_tensor(op: str, name: str, t, ndim: int, what: str = "") -> None:
    """`t` is a floating-point tensor of rank `ndim` (`what`, e.g. " [N, D]", follows the rank in the message)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{qualname(op)}: {name} must be a tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise RuntimeError(f"{qualname(op)}: {name} must be a {ndim}-D tensor{what}, got a {t.dim()}-D tensor of shape "
                           f"{list(t.shape)}")
    if not t.is_floating_point():
        raise RuntimeError(f"{qualname(op)}: {name} must be a floating-point tensor ({FLOAT_KINDS}), got {t.dtype}")


def check_shape(op: str, name: str, t: torch.Tensor, want: tuple, what: str) -> None:
    if tuple(t.shape) != tuple(want):
        raise RuntimeError(f"{qualname(op)}: {name} must have shape {what} = {list(want)}, got {list(t.shape)}")


def check_device(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise RuntimeError(f"{qualname(op)}: {name} is on {t.device} but {ref_name} is on {ref.device}; "
                           f"move all arguments to one device")


def check_like(op: str, name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    """grad_y: x's device and dtype."""
    check_device(op, name, t, "x", x)
    if t.dtype != x.dtype:
        raise RuntimeError(f"{qualname(op)}: {name} has dtype {t.dtype} but x has dtype {x.dtype}; "
                           f"{name} must have x's dtype")


_HALF = (torch.float16, torch.bfloat16)


def mixed_weights(x_dtype: torch.dtype, w_dtype: torch.dtype) -> bool:
    """float32 weights with a float16 / bfloat16 x (docs/SPEC.md "Dtypes"): the kernels read them as they are."""
    return w_dtype is torch.float32 and x_dtype in _HALF


def mixed_reference(reference: Callable) -> Callable:
    """A gate op's reference with the kernels' math for a mixed call (float32 weights, 16-bit x): computed in
    float32 from the weights as they are and x upcast, autocast off, the output rounded to x's dtype. Other
    calls (matching dtypes) run the reference as written."""

    @functools.wraps(reference)
    def wrapped(x, *weights):
        if weights and isinstance(x, torch.Tensor) and mixed_weights(x.dtype, weights[0].dtype):
            off = torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") \
                else contextlib.nullcontext()
            with off:
                return reference(x.float(), *weights).to(x.dtype)
        return reference(x, *weights)

    return wrapped


def check_weight(op: str, name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    """A weight: x's device, and x's dtype or float32 with a 16-bit x (csrc/ops/checks.h ``weight_like``)."""
    check_device(op, name, t, "x", x)
    if t.dtype != x.dtype and not mixed_weights(x.dtype, t.dtype):
        raise RuntimeError(f"{qualname(op)}: {name} has dtype {t.dtype} but x has dtype {x.dtype}; "
                           f"the weights must have x's dtype, or be float32 with a float16 or bfloat16 x")


# -------------------------------------------------------------------------------------- registration
def refuse_double_backward(op: str, target: str | None = None) -> None:
    """Register, for the op's backward op, an autograd formula that raises.

    The backward op is a compiled op whose own derivative is not implemented. Without a formula PyTorch
    would treat its outputs as constants when a caller differentiates a gradient (``create_graph=True``)
    and hand back wrong second derivatives or None with only a warning; this makes that one clear error.
    First derivatives, with or without ``create_graph``, are unaffected."""

    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(
            f"{qualname(op)}: double backward (the gradient of a gradient through the fused kernel, "
            f"create_graph=True) is not implemented; use impl='reference' for higher-order derivatives")

    torch.library.register_autograd(qualname(target or backward_name(op)), backward, setup_context=setup_context)


def register_autograd(op: str, fake: Callable, fake_backward: Callable, backward: Callable,
                      setup_context: Callable) -> None:
    """Fake kernels of the op and its backward op, the op's autograd formula and the double-backward refusal."""
    torch.library.register_fake(qualname(op))(fake)
    torch.library.register_fake(qualname(backward_name(op)))(fake_backward)
    torch.library.register_autograd(qualname(op), backward, setup_context=setup_context)
    refuse_double_backward(op)


# ------------------------------------------------------------------------------------------ gate ops
@dataclass(frozen=True)
class Weight:
    """One weight of a gate op: its rank, its shape from (C, hidden width), and the shape as messages write it."""

    name: str
    ndim: int
    shape: Callable[[int, int], tuple]
    what: str


@dataclass(frozen=True)
class GateOp:
    name: str                   # the schema name, "se_gate"
    weights: tuple[Weight, ...]
    reference: Callable         # reference(x, *weights) -> y
    hidden: str | None = None   # the weight whose rows give the hidden width, which must be >= 1 ...
    hidden_letter: str = ""     # ... and its letter in the messages ("R", "N")
    stats: Callable | None = None  # stats(x) -> the training forward's saved statistics, empty (ops with them)

    @property
    def arg_names(self) -> tuple[str, ...]:
        return ("x", *(w.name for w in self.weights))

    def check(self, x, *weights) -> int:
        """Raise as the C++ launcher would for a bad call; return the hidden width (0 without one)."""
        op = self.name
        if len(weights) != len(self.weights):
            raise TypeError(f"{qualname(op)}: expected {len(self.arg_names)} arguments "
                            f"({', '.join(self.arg_names)}), got {1 + len(weights)}")
        check_tensor(op, "x", x, 4)
        for spec, t in zip(self.weights, weights):
            check_tensor(op, spec.name, t, spec.ndim)
        width = 0
        if self.hidden is not None:
            h = weights[[w.name for w in self.weights].index(self.hidden)]
            width = h.shape[0]
            if width < 1:
                raise RuntimeError(f"{qualname(op)}: {self.hidden} must have at least one row "
                                   f"({self.hidden_letter} >= 1), got shape {list(h.shape)}")
        C = x.shape[1]
        for spec, t in zip(self.weights, weights):
            check_shape(op, spec.name, t, spec.shape(C, width), spec.what)
        for spec, t in zip(self.weights, weights):
            check_weight(op, spec.name, t, x)
        first = self.weights[0].name
        for spec, t in zip(self.weights, weights):
            if t.dtype != weights[0].dtype:
                raise RuntimeError(f"{qualname(op)}: {spec.name} has dtype {t.dtype} but {first} has dtype "
                                   f"{weights[0].dtype}; all weights must have one dtype")
        return width

    def check_backward(self, grad_y, x, *weights) -> None:
        self.check(x, *weights)
        op = backward_name(self.name)
        if not isinstance(grad_y, torch.Tensor):
            raise TypeError(f"{qualname(op)}: grad_y must be a tensor, got {type(grad_y).__name__}")
        check_shape(op, "grad_y", grad_y, tuple(x.shape), "x.shape")
        check_like(op, "grad_y", grad_y, x)

    def call(self, impl: str, x, *weights) -> torch.Tensor:
        """The Python wrapper: the fused op where `recogfast.dispatch` picks it, else the checked reference."""
        if dispatch.use_fused(self.name, impl, x):
            return self._fused(x, *weights)
        return self._reference(x, *weights)

    def _fused(self, x, *weights) -> torch.Tensor:
        """The registered op; for an op with saved statistics its training forward when a gradient will be needed."""
        if self.stats is not None and _needs_grad(x, weights):
            return getattr(torch.ops.recogfast, train_name(self.name))(x, *weights)[0]
        return getattr(torch.ops.recogfast, self.name)(x, *weights)

    def _reference(self, x, *weights) -> torch.Tensor:
        self.check(x, *weights)
        # The reference as its module holds it now (so that patching the module's function takes effect).
        reference = getattr(sys.modules[self.reference.__module__], self.reference.__name__, self.reference)
        return reference(x, *weights)

    def module_call(self, impl: str, x, params, flat: tuple) -> torch.Tensor:
        """A module's call with its parameters as it holds them (fp32 under autocast, convolution weights 4-D):
        each is flattened as `flat` says (0: as is, 1: ``flatten(1)``, 2: ``reshape(-1)``) and, unless the call is
        mixed (fp32 parameters, 16-bit x: the kernels read them as they are), cast to x's dtype (`_prepare`).

        Same result, gradients and errors as ``call(impl, x, *prepared)``; on plain tensors in eager mode the
        fused kernel runs through one ``autograd.Function`` (`_FusedGate`) that prepares the weights without
        autograd and calls the forward and backward kernels below the autograd key, so a call crosses Python
        autograd once and records no view or cast nodes (fp32 parameters get fp32 gradients from the kernels;
        in the cases still cast, the engine casts the gradients back to the parameters' dtype). Under torch.compile / export / jit tracing / functorch, or with tensor subclasses, it takes the
        registered op (what those systems trace)."""
        if dispatch.use_fused(self.name, impl, x):
            if _eager_plain(x, params):
                if _needs_grad(x, params):
                    return _FusedGate.apply(self, flat, x, *params)
                weights = _prepare(x.dtype, params, flat)
                with _below_autograd():
                    return self.op(x, *weights)
            return self._fused(x, *_prepare(x.dtype, params, flat))
        return self._reference(x, *_prepare(x.dtype, params, flat))

    # The ops' default overloads (OpOverload objects, which torch.compile and compiled autograd can trace).
    @functools.cached_property
    def op(self):
        return getattr(torch.ops.recogfast, self.name).default

    @functools.cached_property
    def backward_op(self):
        return getattr(torch.ops.recogfast, backward_name(self.name)).default

    @functools.cached_property
    def train_op(self):
        return getattr(torch.ops.recogfast, train_name(self.name)).default

    @functools.cached_property
    def saved_backward_op(self):
        return getattr(torch.ops.recogfast, saved_backward_name(self.name)).default

    # Below autograd, for the modules' fast path: the forward and what its backward needs besides x and the
    # weights (the saved statistics, or nothing), and the backward from them.
    def forward_saving(self, x, *weights):
        if self.stats is None:
            return self.op(x, *weights), ()
        y, stats = self.train_op(x, *weights)
        return y, (stats,)

    def backward_saving(self, grad_y, x, saved, weights):
        if self.stats is None:
            return self.backward_op(grad_y, x, *weights)
        return self.saved_backward_op(grad_y, x, *saved, *weights)

    # The fake kernels: outputs shaped and laid out as the kernels return them (torch.compile trusts these).
    def fake(self, x, *weights):
        self.check(x, *weights)
        return torch.empty_like(x, memory_format=memory_format(x))

    def fake_backward(self, grad_y, x, *weights):
        self.check_backward(grad_y, x, *weights)
        gx = torch.empty_like(x, memory_format=memory_format(x))
        return (gx, *(torch.empty_like(t, memory_format=torch.contiguous_format) for t in weights))

    def fake_train(self, x, *weights):
        return self.fake(x, *weights), self.stats(x)

    def fake_backward_saved(self, grad_y, x, stats, *weights):
        grads = self.fake_backward(grad_y, x, *weights)
        want = self.stats(x)
        op = qualname(saved_backward_name(self.name))
        if not isinstance(stats, torch.Tensor) or tuple(stats.shape) != tuple(want.shape):
            got = list(stats.shape) if isinstance(stats, torch.Tensor) else type(stats).__name__
            raise RuntimeError(f"{op}: stats must have shape [3, B, H*W] = {list(want.shape)}, got {got}")
        if stats.device != x.device:
            raise RuntimeError(f"{op}: stats is on {stats.device} but x is on {x.device}")
        if stats.dtype != want.dtype:
            raise RuntimeError(f"{op}: stats must have dtype {want.dtype} (the forward's), got {stats.dtype}")
        if not stats.is_contiguous():
            raise RuntimeError(f"{op}: stats must be contiguous (as _{self.name}_forward_train returns it)")
        return grads

    def register(self) -> None:
        backward_op = getattr(torch.ops.recogfast, backward_name(self.name))

        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        def backward(ctx, grad_y):
            return backward_op(grad_y, *ctx.saved_tensors)

        register_autograd(self.name, self.fake, self.fake_backward, backward, setup_context)
        if self.stats is None:
            return
        saved_op = getattr(torch.ops.recogfast, saved_backward_name(self.name))

        def setup_train(ctx, inputs, output):
            ctx.mark_non_differentiable(output[1])
            ctx.save_for_backward(inputs[0], output[1], *inputs[1:])

        def backward_train(ctx, grad_y, _grad_stats):
            x, stats, *weights = ctx.saved_tensors
            return saved_op(grad_y, x, stats, *weights)

        torch.library.register_fake(qualname(train_name(self.name)))(self.fake_train)
        torch.library.register_fake(qualname(saved_backward_name(self.name)))(self.fake_backward_saved)
        torch.library.register_autograd(qualname(train_name(self.name)), backward_train, setup_context=setup_train)
        refuse_double_backward(self.name, saved_backward_name(self.name))

