"""Per-op ``.tflite`` codecs: each op's writer (options table, constant tensors, operator) and
reader (options and constants back onto the graph op), used through :mod:`.ops`.

Writers take the ``tflite._Writer`` and the op; readers take the reader's context
(``tflite._ReadCtx``: the flatbuffer's model, subgraph, schema classes and constants) and the
op to fill. Neither imports a graph class.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import MobilenetsError
from .arith import padding_kind, same_padding

ACTIVATIONS = {"none": 0, "relu": 1, "relu_n1_to_1": 2, "relu6": 3}  # fused, int8-capable
PADDING = {"SAME": 0, "VALID": 1}
FLOAT32, INT32, INT8 = 0, 2, 9


# ---------------------------------------------------------------- writers


def _weights(w: Any, op: Any, dim: int) -> tuple[int, int]:
    """(weights, bias) tensors of a conv/FC op."""
    g = w.graph
    s_in = np.float32(g.tensors[op.inputs[0]].scale)
    n = op.bias.shape[0]
    if g.is_float:
        wt = w.tensor(f"{op.name}.weight", op.weights.shape, FLOAT32, op.weights.astype("<f4"))
        bt = w.tensor(f"{op.name}.bias", (n,), FLOAT32, op.bias.astype("<f4"))
        return wt, bt
    scales = op.weight_scales.astype(np.float32)
    zeros = [0] * n
    if np.all(scales == scales[0]):
        w_q = ([scales[0]], [0], 0)  # one scale for the whole tensor (the classifier)
    else:
        w_q = (scales, zeros, dim)
    wt = w.tensor(f"{op.name}.weight", op.weights.shape, INT8, op.weights, w_q)
    bias_scales = (s_in * scales).astype(np.float32)
    b_q = ([bias_scales[0]], [0], 0) if len(w_q[0]) == 1 else (bias_scales, zeros, 0)
    bt = w.tensor(f"{op.name}.bias", (n,), INT32, op.bias.astype("<i4"), b_q)
    return wt, bt


def _tf_padding(w: Any, op: Any, kernel) -> int:
    kind = padding_kind(op.padding, w.graph.tensors[op.inputs[0]].shape[1:3], kernel, op.stride)
    if kind is None:
        raise MobilenetsError(f"op {op.name}: padding {op.padding} is neither SAME nor VALID")
    return PADDING[kind]


def write_conv(w: Any, op: Any) -> None:
    """CONV_2D or DEPTHWISE_CONV_2D, its padding SAME or VALID (PAD ops carry any other)."""
    t, b, x, act = w.tfl, w.b, op.inputs[0], ACTIVATIONS[op.activation]
    wt, bt = _weights(w, op, 0 if op.kind == "conv2d" else 3)
    padding = _tf_padding(w, op, op.weights.shape[1:3])
    if op.kind == "conv2d":
        t.Conv2DOptionsStart(b)
        t.Conv2DOptionsAddPadding(b, padding)
        t.Conv2DOptionsAddStrideH(b, op.stride[0])
        t.Conv2DOptionsAddStrideW(b, op.stride[1])
        t.Conv2DOptionsAddFusedActivationFunction(b, act)
        t.Conv2DOptionsAddDilationHFactor(b, 1)
        t.Conv2DOptionsAddDilationWFactor(b, 1)
        opts, otype = t.Conv2DOptionsEnd(b), t.BuiltinOptions.Conv2DOptions
    else:
        t.DepthwiseConv2DOptionsStart(b)
        t.DepthwiseConv2DOptionsAddPadding(b, padding)
        t.DepthwiseConv2DOptionsAddStrideH(b, op.stride[0])
        t.DepthwiseConv2DOptionsAddStrideW(b, op.stride[1])
        t.DepthwiseConv2DOptionsAddDepthMultiplier(b, op.depth_multiplier)
        t.DepthwiseConv2DOptionsAddFusedActivationFunction(b, act)
        t.DepthwiseConv2DOptionsAddDilationHFactor(b, 1)
        t.DepthwiseConv2DOptionsAddDilationWFactor(b, 1)
        opts, otype = t.DepthwiseConv2DOptionsEnd(b), t.BuiltinOptions.DepthwiseConv2DOptions
    w.operator(op.kind, [x, wt, bt], [op.output], otype, opts)


def write_fully_connected(w: Any, op: Any) -> None:
    """FULLY_CONNECTED: weights (O, I), bias, the fused activation."""
    t, b = w.tfl, w.b
    wt, bt = _weights(w, op, 0)
    t.FullyConnectedOptionsStart(b)
    t.FullyConnectedOptionsAddFusedActivationFunction(b, ACTIVATIONS[op.activation])
    opts = t.FullyConnectedOptionsEnd(b)
    inputs = [op.inputs[0], wt, bt]
    w.operator(op.kind, inputs, [op.output], t.BuiltinOptions.FullyConnectedOptions, opts)


def _binary_inputs(w: Any, op: Any) -> list[int]:
    """ADD/MUL's input tensors; a constant operand (``op.weights``, centred) written as an int8
    tensor whose zero point keeps its values in range (0 when it can)."""
    if len(op.inputs) == 2:
        return list(op.inputs)
    k = np.asarray(op.weights, np.int64).reshape(-1)
    lo, hi = -128 - int(k.min()), 127 - int(k.max())
    zp = min(max(0, lo), hi)
    q = ([float(op.weight_scales[0])], [zp], 0)
    ct = w.tensor(f"{op.name}.constant", (k.size,), INT8, (k + zp).astype(np.int8), q)
    return [op.inputs[0], ct]


def write_add(w: Any, op: Any) -> None:
    """ADD: two inputs (or one and a constant), the fused activation."""
    t, b = w.tfl, w.b
    inputs = _binary_inputs(w, op)
    t.AddOptionsStart(b)
    t.AddOptionsAddFusedActivationFunction(b, ACTIVATIONS[op.activation])
    opts = t.AddOptionsEnd(b)
    w.operator(op.kind, inputs, [op.output], t.BuiltinOptions.AddOptions, opts)


def write_mul(w: Any, op: Any) -> None:
    """MUL: two inputs (the second may broadcast, or be a constant), the fused activation."""
    t, b = w.tfl, w.b
    inputs = _binary_inputs(w, op)
    t.MulOptionsStart(b)
    t.MulOptionsAddFusedActivationFunction(b, ACTIVATIONS[op.activation])
    opts = t.MulOptionsEnd(b)
    w.operator(op.kind, inputs, [op.output], t.BuiltinOptions.MulOptions, opts)


def write_pool(w: Any, op: Any) -> None:
    """AVERAGE_POOL_2D or MAX_POOL_2D (SAME or VALID padding)."""
    t, b = w.tfl, w.b
    padding = _tf_padding(w, op, op.kernel)
    t.Pool2DOptionsStart(b)
    t.Pool2DOptionsAddPadding(b, padding)
    t.Pool2DOptionsAddStrideH(b, op.stride[0])
    t.Pool2DOptionsAddStrideW(b, op.stride[1])
    t.Pool2DOptionsAddFilterHeight(b, op.kernel[0])
    t.Pool2DOptionsAddFilterWidth(b, op.kernel[1])
    t.Pool2DOptionsAddFusedActivationFunction(b, ACTIVATIONS[op.activation])
    opts = t.Pool2DOptionsEnd(b)
    w.operator(op.kind, [op.inputs[0]], [op.output], t.BuiltinOptions.Pool2DOptions, opts)


def write_mean(w: Any, op: Any) -> None:
    """MEAN over H and W (the axis list is a constant int32 tensor); keep_dims when the
    output is 4-D, else (1, C) as Keras's global average pooling converts."""
    t, b = w.tfl, w.b
    axes = w.tensor(f"{op.name}.axis", (2,), INT32, np.array([1, 2], "<i4"))
    t.ReducerOptionsStart(b)
    t.ReducerOptionsAddKeepDims(b, len(w.graph.tensors[op.output].shape) == 4)
    opts = t.ReducerOptionsEnd(b)
    w.operator(op.kind, [op.inputs[0], axes], [op.output], t.BuiltinOptions.ReducerOptions, opts)


def write_plain(w: Any, op: Any) -> None:
    """An op without options (HARD_SWISH, LOGISTIC, QUANTIZE, DEQUANTIZE)."""
    w.operator(op.kind, list(op.inputs), [op.output], 0, None)


def write_softmax(w: Any, op: Any) -> None:
    """SOFTMAX with its beta."""
    t, b = w.tfl, w.b
    t.SoftmaxOptionsStart(b)
    t.SoftmaxOptionsAddBeta(b, float(op.beta))
    opts = t.SoftmaxOptionsEnd(b)
    w.operator(op.kind, [op.inputs[0]], [op.output], t.BuiltinOptions.SoftmaxOptions, opts)


def write_pad(w: Any, op: Any) -> None:
    """PAD with its (4, 2) int32 paddings tensor (NHWC: H and W only)."""
    t, b = w.tfl, w.b
    top, bottom, left, right = op.padding
    table = np.array([[0, 0], [top, bottom], [left, right], [0, 0]], "<i4")
    pt = w.tensor(f"{op.name}.paddings", (4, 2), INT32, table)
    t.PadOptionsStart(b)
    opts = t.PadOptionsEnd(b)
    w.operator(op.kind, [op.inputs[0], pt], [op.output], t.BuiltinOptions.PadOptions, opts)


def write_padv2(w: Any, op: Any) -> None:
    """PADV2: PAD's table and a scalar int8 constant (the padding value)."""
    t, b = w.tfl, w.b
    top, bottom, left, right = op.padding
    table = np.array([[0, 0], [top, bottom], [left, right], [0, 0]], "<i4")
    pt = w.tensor(f"{op.name}.paddings", (4, 2), INT32, table)
    out = w.graph.tensors[op.output]
    value = out.zero_point if op.pad_value is None else op.pad_value
    q = ([out.scale], [out.zero_point], 0)
    vt = w.tensor(f"{op.name}.value", (1,), INT8, np.array([value], "i1"), q)
    t.PadV2OptionsStart(b)
    opts = t.PadV2OptionsEnd(b)
    w.operator(op.kind, [op.inputs[0], pt, vt], [op.output], t.BuiltinOptions.PadV2Options, opts)


def write_squeeze(w: Any, op: Any) -> None:
    """SQUEEZE of the size-1 axes of the input that the output drops."""
    t, b = w.tfl, w.b
    src, dst = w.graph.tensors[op.inputs[0]].shape, w.graph.tensors[op.output].shape
    dims = [i for i in range(1, len(src)) if src[i] == 1][: len(src) - len(dst)]
    squeeze = w.ints(t.SqueezeOptionsStartSqueezeDimsVector, dims)
    t.SqueezeOptionsStart(b)
    t.SqueezeOptionsAddSqueezeDims(b, squeeze)
    opts = t.SqueezeOptionsEnd(b)
    w.operator(op.kind, [op.inputs[0]], [op.output], t.BuiltinOptions.SqueezeOptions, opts)


def write_reshape(w: Any, op: Any) -> None:
    """RESHAPE to the output tensor's shape (in the options)."""
    t, b = w.tfl, w.b
    shape = w.graph.tensors[op.output].shape  # in the options only: no shape tensor to store
    new_shape = w.ints(t.ReshapeOptionsStartNewShapeVector, shape)
    t.ReshapeOptionsStart(b)
    t.ReshapeOptionsAddNewShape(b, new_shape)
    opts = t.ReshapeOptionsEnd(b)
    w.operator(op.kind, [op.inputs[0]], [op.output], t.BuiltinOptions.ReshapeOptions, opts)


def write_float_add(w: Any, op: Any) -> None:
    """A float island (:mod:`.float_islands`) as TFLite files hold it: each int8 input
    DEQUANTIZEd, float ADDs left to right, the sum QUANTIZEd into the op's output."""
    t, b = w.tfl, w.b
    shape = w.graph.tensors[op.output].shape
    base = op.name or w.graph.tensors[op.output].name
    acc = None
    for i, x in enumerate(op.inputs):
        f = w.tensor(f"{base}.dequantized{i}", shape, FLOAT32)
        w.operator("dequantize", [x], [f], 0, None)
        if acc is None:
            acc = f
            continue
        s = w.tensor(f"{base}.sum{i}", shape, FLOAT32)
        t.AddOptionsStart(b)
        t.AddOptionsAddFusedActivationFunction(b, 0)
        w.operator("add", [acc, f], [s], t.BuiltinOptions.AddOptions, t.AddOptionsEnd(b))
        acc = s
    w.operator("quantize", [acc], [op.output], 0, None)


# ---------------------------------------------------------------- readers


def _activation(ctx: Any, act: int) -> str:
    names = {v: k for k, v in ACTIVATIONS.items()}
    if act not in names:
        raise MobilenetsError(f"{ctx.path}: fused activation {act} is not supported")
    return names[act]


def _conv_padding(ctx: Any, op: Any, kind: int, kernel) -> tuple[int, int, int, int]:
    if kind == PADDING["VALID"]:
        return (0, 0, 0, 0)
    _, h, w, _ = ctx.shape(op.inputs[0])
    return same_padding(int(h), kernel[0], op.stride[0]) + same_padding(
        int(w), kernel[1], op.stride[1]
    )


def read_conv(ctx: Any, ins: list[int], op: Any) -> None:
    """CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED: weights, bias, scales and options."""
    tfl = ctx.tfl
    op.weights = ctx.const(ins[1])
    n = op.weights.shape[-1 if op.kind == "depthwise_conv2d" else 0]
    has_bias = len(ins) > 2 and ins[2] >= 0  # Keras writes -1 for a layer without bias
    op.bias = ctx.const(ins[2]) if has_bias else np.zeros(n, np.int32)
    q = ctx.sub.Tensors(ins[1]).Quantization()
    if q is not None and not q.ScaleIsNone():
        scales = np.asarray(q.ScaleAsNumpy(), np.float32)
        op.weight_scales = np.broadcast_to(scales, op.bias.shape).copy()
    cls = {
        "conv2d": tfl.Conv2DOptions,
        "depthwise_conv2d": tfl.DepthwiseConv2DOptions,
        "fully_connected": tfl.FullyConnectedOptions,
    }[op.kind]
    o = ctx.options(cls)
    op.activation = _activation(ctx, o.FusedActivationFunction())
    if op.kind != "fully_connected":
        if (o.DilationHFactor() or 1, o.DilationWFactor() or 1) != (1, 1):
            raise MobilenetsError(f"{ctx.path}: dilated {op.kind} is not supported")
        op.stride = (o.StrideH(), o.StrideW())
        if op.kind == "depthwise_conv2d":
            op.depth_multiplier = o.DepthMultiplier() or 1
        op.padding = _conv_padding(ctx, op, o.Padding(), op.weights.shape[1:3])


def read_binary(ctx: Any, ins: list[int], op: Any) -> None:
    """ADD, MUL: two inputs and the fused activation. A constant operand (Keras's hard
    sigmoid multiplies by 1/6) becomes the op's own: see :func:`_constant_operand`."""
    cls = ctx.tfl.AddOptions if op.kind == "add" else ctx.tfl.MulOptions
    op.activation = _activation(ctx, ctx.options(cls).FusedActivationFunction())
    consts = [ctx.is_const(i) for i in ins[:2]]
    if not any(consts):
        op.inputs = (ins[0], ins[1])
        return
    if all(consts):
        raise MobilenetsError(f"{ctx.path}: {op.kind.upper()} of two constants is not supported")
    x, c = (ins[1], ins[0]) if consts[0] else (ins[0], ins[1])  # both ops commute exactly
    op.inputs = (x,)
    _constant_operand(ctx, op, x, c)


def _constant_operand(ctx: Any, op: Any, x: int, c: int) -> None:
    """The constant operand of ADD/MUL as ``op.weights``: int16 values minus their zero point
    (one value, or one per channel of ``x``), its scale as ``op.weight_scales`` (one value)."""
    values = np.asarray(ctx.const(c))
    q = ctx.sub.Tensors(c).Quantization()
    if ctx.dtype(c) != INT8 or q is None or q.ScaleLength() != 1:
        raise MobilenetsError(
            f"{ctx.path}: {op.kind.upper()} by a constant that is not per-tensor int8 is not "
            "supported"
        )
    channels = ctx.shape(x)[-1]
    last = values.shape[-1] if values.ndim else 1
    if values.size not in (1, channels) or values.size != last:
        raise MobilenetsError(
            f"{ctx.path}: {op.kind.upper()} by a constant of shape {values.shape} is not "
            "supported (one value, or one per channel)"
        )
    zero_point = int(q.ZeroPoint(0)) if q.ZeroPointLength() else 0
    op.weights = values.reshape(-1).astype(np.int16) - np.int16(zero_point)
    op.weight_scales = np.array([q.Scale(0)], np.float32)


def read_pool(ctx: Any, ins: list[int], op: Any) -> None:
    """AVERAGE_POOL_2D, MAX_POOL_2D: window, stride, SAME/VALID padding, activation."""
    o = ctx.options(ctx.tfl.Pool2DOptions)
    op.stride, op.kernel = (o.StrideH(), o.StrideW()), (o.FilterHeight(), o.FilterWidth())
    op.padding = _conv_padding(ctx, op, o.Padding(), op.kernel)
    op.activation = _activation(ctx, o.FusedActivationFunction())


def read_mean(ctx: Any, ins: list[int], op: Any) -> None:
    """MEAN: only over H and W (axes 1 and 2) of an NHWC tensor."""
    axes = sorted(int(a) % 4 for a in np.asarray(ctx.const(ins[1])).reshape(-1))
    if axes != [1, 2] or len(ctx.shape(ins[0])) != 4:
        raise MobilenetsError(f"{ctx.path}: MEAN over axes {axes} is not supported (only H, W)")


def read_softmax(ctx: Any, ins: list[int], op: Any) -> None:
    """SOFTMAX: its beta."""
    op.beta = float(ctx.options(ctx.tfl.SoftmaxOptions).Beta())


def read_pad(ctx: Any, ins: list[int], op: Any) -> None:
    """PAD: the (4, 2) paddings table, H and W only."""
    table = ctx.const(ins[1])
    if np.any(table[0]) or np.any(table[3]):
        raise MobilenetsError(f"{ctx.path}: PAD of the batch or channel axis is not supported")
    op.padding = (*map(int, table[1]), *map(int, table[2]))


def read_padv2(ctx: Any, ins: list[int], op: Any) -> None:
    """PADV2: PAD's table and the constant value."""
    read_pad(ctx, ins, op)
    op.pad_value = int(np.asarray(ctx.const(ins[2])).reshape(-1)[0]) if len(ins) > 2 else None


def read_reshape(ctx: Any, ins: list[int], op: Any) -> None:
    """RESHAPE: the target shape (a constant, or folded at load from SHAPE/STRIDED_SLICE/PACK)
    must be the output tensor's: shapes are static here."""
    if len(ins) < 2 or ins[1] < 0:
        return
    want = [int(v) for v in np.asarray(ctx.const(ins[1])).reshape(-1)]
    out = list(ctx.shape(op.output))
    if -1 in want and want.count(-1) == 1:
        known = int(np.prod([v for v in want if v != -1]))
        want[want.index(-1)] = int(np.prod(out)) // max(known, 1)
    if want != out:
        raise MobilenetsError(
            f"{ctx.path}: RESHAPE to {want} but its output has shape {out}: dynamic shapes are "
            "not supported"
        )


def read_float_add(ctx: Any, ins: list[int], op: Any) -> None:
    """A float island's op (made at load by :mod:`.float_islands`): its int8 leaves, in order."""
    op.inputs = tuple(ins)


def read_none(ctx: Any, ins: list[int], op: Any) -> None:
    """An op whose one input and output say everything (RESHAPE, HARD_SWISH, ...)."""
