"""ONNX translations of the recogfast ops for ``torch.onnx.export(..., dynamo=True)``.

Each function receives the op's arguments as ONNX values and builds the op's reference math (the
``*_reference`` functions in recogfast/ops/) from standard ONNX operators (opset 18), so the exported
model runs in any ONNX runtime without recogfast. They are passed to the exporter through its
``custom_translation_table``, keyed by the op overload, as PyTorch's tutorial "Extending the ONNX exporter
operator support", section "Supporting a custom PyTorch operator", documents
(https://docs.pytorch.org/tutorials/beginner/onnx/onnx_registry_tutorial.html).

Block 2 (``cubs_spatial``) does not build the [B, HW, HW] similarity matrix: an ONNX ``Loop`` goes over
blocks of ``ROWS`` query positions, and each block needs only a [B, ROWS, HW] slice, with the stable
softmax shift of row i taken from the rank-one structure (max_j q_i k_j = q_i·max k if q_i >= 0, else
q_i·min k), as the fused kernels do. Block 1's matrix is [B, N, N] with N = C/2: it is built directly.
``ms_loss`` is a training loss and has no translation.
"""

from __future__ import annotations

import onnxscript
from onnxscript import FLOAT, INT64
from onnxscript import opset18 as op

OPSET = 18
ROWS = 64  # query positions per Loop iteration of the Block 2 attention: a few B·ROWS·HW blocks live at once


@onnxscript.script(default_opset=op)
def _rank_one_attention_rows(q: FLOAT[...], k: FLOAT[...], v: FLOAT[...], rows: INT64[...]) -> FLOAT[...]:
    """f[b, i] = sum_j softmax_j(q[b, i] k[b, j]) v[b, j] for q, k, v [B, L], `rows` rows at a time."""
    kmax = op.ReduceMax(k, [1], keepdims=1)
    kmin = op.ReduceMin(k, [1], keepdims=1)
    zero = op.CastLike(0.0, q)
    shift = op.Where(q >= zero, q * kmax, q * kmin)  # the row maxima of q kᵀ, [B, L]
    length = op.Shape(q, start=1, end=2)
    one = op.Constant(value_ints=[1])
    blocks = (length + rows - one) / rows
    k3 = op.Unsqueeze(k, [1])
    v3 = op.Unsqueeze(v, [1])
    f = op.CastLike(op.ConstantOfShape(op.Shape(q)), q)
    for i in range(op.Squeeze(blocks)):
        start = op.Reshape(i, [1]) * rows
        stop = op.Min(start + rows, length)
        qi = op.Slice(q, start, stop, [1])
        e = op.Exp(op.Unsqueeze(qi, [2]) * k3 - op.Unsqueeze(op.Slice(shift, start, stop, [1]), [2]))  # [B, T, L]
        fi = op.ReduceSum(e * v3, [2], keepdims=0) / op.ReduceSum(e, [2], keepdims=0)
        idx = op.Expand(op.Unsqueeze(op.Range(op.Squeeze(start), op.Squeeze(stop), op.Constant(value_int=1)), [0]),
                        op.Shape(fi))
        f = op.ScatterElements(f, idx, fi, axis=1)
    return f


def _linear(x, w, b):
    """x [B, K] · wᵀ [K, M] + b."""
    return op.Add(op.MatMul(x, op.Transpose(w, perm=[1, 0])), b)


def _pool(x):
    return op.ReduceMean(x, op.Constant(value_ints=[2, 3]), keepdims=0)


def _channel_gate(x, z):
    return op.Mul(x, op.Unsqueeze(op.Sigmoid(z), op.Constant(value_ints=[2, 3])))


def se_gate(x, w1, b1, w2, b2):
    """recogfast::se_gate: y = x · sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2)."""
    h = op.Relu(_linear(_pool(x), w1, b1))
    return _channel_gate(x, _linear(h, w2, b2))


def cubs_channel(x, wq, bq, wk, bk, wv, bv, wo, bo):
    """recogfast::cubs_channel (Block 1): y = x · sigmoid(Wo softmax(q kᵀ) v + bo + g), g = mean_hw(x)."""
    g = _pool(x)
    q, k, v = _linear(g, wq, bq), _linear(g, wk, bk), _linear(g, wv, bv)
    a = op.Softmax(op.Mul(op.Unsqueeze(q, op.Constant(value_ints=[2])), op.Unsqueeze(k, op.Constant(value_ints=[1]))),
                   axis=-1)  # [B, N, N]
    f = op.Squeeze(op.MatMul(a, op.Unsqueeze(v, op.Constant(value_ints=[2]))), op.Constant(value_ints=[2]))
    return _channel_gate(x, op.Add(_linear(f, wo, bo), g))


def cubs_spatial(x, wq, bq, wk, bk, wv, bv):
    """recogfast::cubs_spatial (Block 2): y = x · sigmoid(softmax(q kᵀ) v) per pixel, q = wq·x + bq etc."""
    batch = op.Shape(x, start=0, end=1)
    flat = op.Reshape(x, op.Concat(op.Shape(x, start=0, end=2), op.Constant(value_ints=[-1]), axis=0))  # [B, C, L]

    def proj(w, b):  # [C] · [B, C, L] -> [B, L]
        return op.Add(op.Squeeze(op.MatMul(op.Unsqueeze(w, op.Constant(value_ints=[0])), flat),
                                 op.Constant(value_ints=[1])), b)

    f = _rank_one_attention_rows(proj(wq, bq), proj(wk, bk), proj(wv, bv), op.Constant(value_ints=[ROWS]))
    shape = op.Concat(batch, op.Constant(value_ints=[1]), op.Shape(x, start=2, end=4), axis=0)
    return op.Mul(x, op.Reshape(op.Sigmoid(f), shape))


def translation_table() -> dict:
    """{op overload: ONNX translation} for ``torch.onnx.export(..., custom_translation_table=...)``."""
    import torch

    ops = torch.ops.recogfast
    return {ops.se_gate.default: se_gate, ops.cubs_channel.default: cubs_channel, ops.cubs_spatial.default: cubs_spatial}
