"""Every op's contract, tested once per op × case:

- an OpInfo-like list of samples (built from each op's own `sample_inputs` in its test file), one
  `torch.library.opcheck` test per sample for the op and for its private backward op, so that one failing
  case does not hide the others;
- one table of bad inputs per op, given to both entry points — the compiled op (whose checks are C++,
  csrc/ops/*.h) and the Python wrapper's reference path (recogfast/ops/_spec.py, ms_loss.check_args) — which
  must raise the same exception type with the same message.
"""

from __future__ import annotations

import pytest
import torch

import test_cubs
import test_ms_loss
import test_se_gate
from conftest import DEVICES, MIXED_DTYPES
from recogfast.ops import cubs_channel, cubs_spatial, ms_loss, se_gate

OPS = torch.ops.recogfast
GATE_WRAPPERS = {"se_gate": se_gate, "cubs_channel": cubs_channel, "cubs_spatial": cubs_spatial}


# --------------------------------------------------------------------------------------------- samples
def _gate_samples(name: str, device: str):
    if name == "se_gate":
        gen = test_se_gate.sample_inputs(device, grad=True)
    else:
        which = name.split("_")[1]
        gen = test_cubs.sample_inputs(which, device, grad=True, shapes=test_cubs.OPS[which][3][:4])
    return list(gen)


def _ms_samples(device: str):
    out = []
    for mining in ("ms", "all", "hardest"):
        for e, labels, ref, ref_labels in test_ms_loss.sample_inputs(device):
            for cache in ([False, True] if ref is not None else [False]):
                r = None if ref is None else ref.detach().requires_grad_(not cache)
                out.append((e.detach().requires_grad_(True), labels, r, ref_labels, 2.0, 50.0, 0.5, 0.1, mining, cache))
    return out


# Samples per op; the ids are op-index, so pytest reports each case on its own.
SAMPLE_COUNTS = {"se_gate": len(test_se_gate.SHAPES) * 2, "cubs_channel": 8, "cubs_spatial": 8, "ms_loss": 3 * 7}
CASES = [(op, i) for op, n in SAMPLE_COUNTS.items() for i in range(n)]


def _sample(op: str, i: int, device: str):
    samples = _ms_samples(device) if op == "ms_loss" else _gate_samples(op, device)
    assert len(samples) == SAMPLE_COUNTS[op], "update SAMPLE_COUNTS when a sample list changes"
    return samples[i]


# Mixed calls (docs/SPEC.md "Dtypes"): x in bf16 / fp16 with float32 weights, the first two samples of each gate
# op (contiguous and channels_last), forward and backward.
MIXED_CASES = [(op, i, dt) for op in GATE_WRAPPERS for i in range(2) for dt in MIXED_DTYPES]


def _mixed_sample(op: str, i: int, dt: torch.dtype, device: str):
    x, *w = (a.detach() for a in _gate_samples(op, device)[i])
    return [x.to(dt).requires_grad_(True), *(t.float().requires_grad_(True) for t in w)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,i,dt", MIXED_CASES, ids=[f"{op}-{i}-{str(dt)[6:]}" for op, i, dt in MIXED_CASES])
def test_opcheck_mixed(device, op, i, dt):
    args = _mixed_sample(op, i, dt, device)
    torch.library.opcheck(getattr(OPS, op).default, args)
    x = [a.detach() for a in args]
    torch.library.opcheck(getattr(OPS, f"_{op}_backward").default, [torch.randn_like(x[0]), *x])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,i", CASES, ids=[f"{op}-{i}" for op, i in CASES])
def test_opcheck_forward(device, op, i):
    torch.library.opcheck(getattr(OPS, op).default, _sample(op, i, device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,i", CASES, ids=[f"{op}-{i}" for op, i in CASES])
def test_opcheck_backward(device, op, i):
    args = _sample(op, i, device)
    backward = getattr(OPS, f"_{op}_backward").default
    if op != "ms_loss":
        x = [a.detach() for a in args]
        torch.library.opcheck(backward, [torch.randn_like(x[0]), *x])
        return
    e, labels, ref, ref_labels, alpha, beta, base, eps, mining, cache = args
    _, stats, hard_idx, ref_cache = OPS.ms_loss(*args)
    torch.library.opcheck(backward, (torch.tensor(1.0, dtype=e.dtype, device=device), e.detach(), labels,
                                     None if ref is None else ref.detach(), ref_labels, stats, hard_idx,
                                     ref_cache.detach(), alpha, beta, base, eps, mining, ref is not None and not cache))


# ------------------------------------------------------------------------------------------ bad inputs
def _gate_bad(op: str):
    """(what, args) for one op: every rule of its contract broken once."""
    if op == "se_gate":
        x, *w = test_se_gate.make_args(2, 8, 4, 4, 2, dtype=torch.float32)
    elif op == "cubs_channel":
        x, *w = test_cubs.make_args1(2, 8, 4, 4, 3, dtype=torch.float32)
    else:
        x, *w = test_cubs.make_args2(2, 8, 4, 4, dtype=torch.float32)
    yield "x rank", (x[0], *w)
    yield "x int", (x.long(), *w)
    for k in range(len(w)):
        def swap(t, k=k):
            return (x, *w[:k], t, *w[k + 1:])
        yield f"w{k} rank", swap(w[k][None])
        yield f"w{k} int", swap(w[k].int())
        yield f"w{k} shape", swap(torch.cat([w[k], w[k]]))
        yield f"w{k} dtype", swap(w[k].double())
        yield f"w{k} device", swap(w[k].to("meta"))
    if op != "cubs_spatial":
        yield "hidden 0", (x, *(t[:0] if k in (0, 1) else t for k, t in enumerate(w)))
    # dtype pairs outside the contract: fp16 weights with bf16 x, float64 with fp16 x, a partly mixed call
    yield "fp16 w with bf16 x", (x.bfloat16(), *(t.half() for t in w))
    yield "fp64 w with fp16 x", (x.half(), *(t.double() for t in w))
    yield "fp32 w with fp64 x", (x.double(), *w)
    yield "partly mixed", (x.bfloat16(), w[0], *(t.bfloat16() for t in w[1:]))


def _ms_bad():
    e, labels = torch.randn(6, 4), torch.arange(6) // 2
    ref, rl = torch.randn(3, 4), torch.zeros(3, dtype=torch.long)
    yield "labels float", (e, labels.float())
    yield "labels 2-D", (e, labels[:, None])
    yield "labels bool", (e, labels.bool())
    yield "labels count", (e, labels[:5])
    yield "labels device", (e, labels.to("meta"))
    yield "embeddings rank", (e[0], labels)
    yield "embeddings int", (e.long(), labels)
    yield "embeddings nan", (torch.full_like(e, float("nan")), labels)
    yield "ref D", (e, labels, torch.randn(3, 5), rl)
    yield "ref labels count", (e, labels, ref, rl[:2])
    yield "ref alone", (e, labels, ref, None)
    yield "ref labels alone", (e, labels, None, rl)
    yield "ref dtype", (e, labels, ref.double(), rl)
    yield "ref rank", (e, labels, ref[0], rl)
    yield "ref device", (e, labels, ref.to("meta"), rl)
    yield "ref inf", (e, labels, torch.full((3, 4), float("inf")), rl)
    yield "alpha", (e, labels, None, None, 0.0)
    yield "beta", (e, labels, None, None, 2.0, -1.0)
    yield "epsilon", (e, labels, None, None, 2.0, 50.0, 0.5, -0.5)
    yield "mining", (e, labels, None, None, 2.0, 50.0, 0.5, 0.1, "semihard")


def _error(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value).splitlines()[0]


BAD = ([(op, what, args) for op in GATE_WRAPPERS for what, args in _gate_bad(op)]
       + [("ms_loss", what, args) for what, args in _ms_bad()])


@pytest.mark.parametrize("op,what,args", BAD, ids=[f"{op}-{what}" for op, what, _ in BAD])
def test_both_entry_points_raise_the_same_error(op, what, args):
    if op == "ms_loss":
        full = (*args, *(None, None, 2.0, 50.0, 0.5, 0.1, "ms")[len(args) - 2:])
        compiled = _error(lambda: OPS.ms_loss(*full))
        e, labels, ref, ref_labels, alpha, beta, base, epsilon, mining = full
        python = _error(lambda: ms_loss(e, labels, alpha, beta, base, epsilon, mining, ref, ref_labels, impl="reference"))
    else:
        compiled = _error(lambda: getattr(OPS, op)(*args))
        python = _error(lambda: GATE_WRAPPERS[op](*args, impl="reference"))
    assert compiled == python
    assert compiled[1].startswith(f"recogfast::{op}: ")


@pytest.mark.parametrize("op", list(GATE_WRAPPERS))
def test_backward_ops_check_grad_y_like_their_fake(op):
    from recogfast.ops import GATE_OPS

    args = next(iter(_gate_samples(op, "cpu")))
    x = [a.detach().float() for a in args]
    backward = getattr(OPS, f"_{op}_backward")
    for gy in (torch.randn(1, 2, 3, 4), torch.randn_like(x[0]).double()):
        compiled = _error(lambda: backward(gy, *x))
        python = _error(lambda: GATE_OPS[op].fake_backward(gy, *x))
        assert compiled == python
        assert compiled[1].startswith(f"recogfast::_{op}_backward: grad_y ")
