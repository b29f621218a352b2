"""The integer-only NumPy reference: :func:`run_int8`, one plain function per op.

Each function does what TFLite Micro's reference kernel does, on a batch (N, H, W, C):
accumulate ``(x - zp_in) * w`` in integers, add the int32 bias, requantize with the Q31
multiplier and shift that TFLite Micro derives at Prepare from the float32 scales
(:mod:`.arith`), add the output zero point, clamp to the fused activation range.

Integer sums of int8 products are computed with float64 matrix products: every partial sum is an
integer below 2^53, so float64 holds it exactly and BLAS does the work.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from .arith import conv_multipliers, multiply_by_quantized_multiplier, quantize_multiplier
from .graph import Op, QuantizedModel, Tensor


def requantize(acc: np.ndarray, op: Op, t_in: Tensor, t_out: Tensor) -> np.ndarray:
    """int32 accumulators (per output channel on the last axis) -> clamped int8 outputs."""
    m0, shift = conv_multipliers(t_in.scale, op.weight_scales, t_out.scale)
    out = multiply_by_quantized_multiplier(acc + op.bias.astype(np.int64), m0, shift)
    out += t_out.zero_point
    return np.clip(out, op.act_min, op.act_max, out=out).astype(np.int8)


def _padded(x: np.ndarray, t_in: Tensor, padding) -> np.ndarray:
    """``x - zero_point`` as int32, with ``padding`` (top, bottom, left, right) of zeros."""
    top, bottom, left, right = padding
    centered = x.astype(np.int32) - t_in.zero_point
    return np.pad(centered, ((0, 0), (top, bottom), (left, right), (0, 0)))


def _windows(xp: np.ndarray, kh: int, kw: int, stride, out_hw):
    """Yield (i, j, strided view of xp) for each kernel tap: rows i + stride*oh, cols j + ..."""
    sh, sw = stride
    oh, ow = out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]


def conv2d(x: np.ndarray, op: Op, t_in: Tensor, t_out: Tensor) -> np.ndarray:
    """CONV_2D: weights (O, KH, KW, I)."""
    xp = _padded(x, t_in, op.padding)
    _, kh, kw, _ = op.weights.shape
    n, oh, ow = x.shape[0], t_out.shape[1], t_out.shape[2]
    acc = np.zeros((n, oh, ow, op.weights.shape[0]), np.float64)
    w = op.weights.astype(np.float64)
    for i, j, view in _windows(xp, kh, kw, op.stride, (oh, ow)):
        acc += view.astype(np.float64) @ w[:, i, j, :].T
    return requantize(acc, op, t_in, t_out)


def depthwise_conv2d(x: np.ndarray, op: Op, t_in: Tensor, t_out: Tensor) -> np.ndarray:
    """DEPTHWISE_CONV_2D: weights (1, KH, KW, C * depth_multiplier)."""
    xp = _padded(x, t_in, op.padding)
    if op.depth_multiplier > 1:  # output channel c*dm + m reads input channel c
        xp = np.repeat(xp, op.depth_multiplier, axis=3)
    _, kh, kw, _ = op.weights.shape
    n, oh, ow, oc = x.shape[0], t_out.shape[1], t_out.shape[2], t_out.shape[3]
    acc = np.zeros((n, oh, ow, oc), np.int32)  # |sum| <= KH*KW*255*128: fits int32
    w = op.weights.astype(np.int32)
    for i, j, view in _windows(xp, kh, kw, op.stride, (oh, ow)):
        acc += view * w[0, i, j]
    return requantize(acc, op, t_in, t_out)


def fully_connected(x: np.ndarray, op: Op, t_in: Tensor, t_out: Tensor) -> np.ndarray:
    """FULLY_CONNECTED: weights (O, I), input flattened in NHWC order."""
    centered = x.reshape(x.shape[0], -1).astype(np.float64) - t_in.zero_point
    acc = centered @ op.weights.astype(np.float64).T
    return requantize(acc, op, t_in, t_out)


def add(x: np.ndarray, y: np.ndarray, op: Op, t_x: Tensor, t_y: Tensor, t_out: Tensor):
    """ADD (int8): both inputs shifted left by 20 and rescaled to twice the larger input scale,
    summed, then rescaled to the output (TFLite's multipliers, derived in double)."""
    left_shift = 20
    twice_max = 2 * max(float(np.float32(t_x.scale)), float(np.float32(t_y.scale)))
    mx, sx = quantize_multiplier(float(np.float32(t_x.scale)) / twice_max)
    my, sy = quantize_multiplier(float(np.float32(t_y.scale)) / twice_max)
    mo, so = quantize_multiplier(twice_max / ((1 << left_shift) * float(np.float32(t_out.scale))))
    xs = (x.astype(np.int64) - t_x.zero_point) * (1 << left_shift)
    ys = (y.astype(np.int64) - t_y.zero_point) * (1 << left_shift)
    total = multiply_by_quantized_multiplier(xs, mx, sx) + multiply_by_quantized_multiplier(
        ys, my, sy
    )
    out = multiply_by_quantized_multiplier(total, mo, so) + t_out.zero_point
    return np.clip(out, op.act_min, op.act_max).astype(np.int8)


def avg_pool2d(x: np.ndarray, op: Op, t_in: Tensor, t_out: Tensor) -> np.ndarray:
    """AVERAGE_POOL_2D (VALID): the window sum divided by its size, rounded half away from zero,
    in the input's scale (no rescaling)."""
    kh, kw = op.kernel
    acc = np.zeros((x.shape[0], t_out.shape[1], t_out.shape[2], x.shape[3]), np.int64)
    for _, _, view in _windows(x.astype(np.int64), kh, kw, op.stride, t_out.shape[1:3]):
        acc += view
    count = kh * kw
    avg = np.where(acc > 0, (acc + count // 2) // count, -((count // 2 - acc) // count))
    return np.clip(avg, op.act_min, op.act_max).astype(np.int8)


def max_pool2d(x: np.ndarray, op: Op, t_in: Tensor, t_out: Tensor) -> np.ndarray:
    """MAX_POOL_2D (VALID): the window maximum, clamped."""
    kh, kw = op.kernel
    out = None
    for _, _, view in _windows(x, kh, kw, op.stride, t_out.shape[1:3]):
        out = view if out is None else np.maximum(out, view)
    return np.clip(out, op.act_min, op.act_max).astype(np.int8)


def pad(x: np.ndarray, op: Op, t_in: Tensor, t_out: Tensor) -> np.ndarray:
    """PAD: zero-point padding (the real value 0)."""
    top, bottom, left, right = op.padding
    widths = ((0, 0), (top, bottom), (left, right), (0, 0))
    return np.pad(x, widths, constant_values=t_in.zero_point)


def reshape(x: np.ndarray, op: Op, t_in: Tensor, t_out: Tensor) -> np.ndarray:
    """RESHAPE: NHWC order is kept."""
    return x.reshape((x.shape[0], *t_out.shape[1:]))


KERNELS = {
    "conv2d": conv2d,
    "depthwise_conv2d": depthwise_conv2d,
    "fully_connected": fully_connected,
    "avg_pool2d": avg_pool2d,
    "max_pool2d": max_pool2d,
    "pad": pad,
    "reshape": reshape,
}


def run_int8(qmodel: QuantizedModel, x_int8: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """int8 logits (N, classes) of ``qmodel`` for int8 NHWC inputs ``x_int8`` (N, H, W, C).

    A single image (H, W, C) gives (classes,). Bit-exact with TFLite Micro's reference kernels.
    """
    x = np.asarray(x_int8)
    single = x.ndim == 3
    x = x[None] if single else x
    expect = qmodel.input_tensor.shape[1:]
    if x.dtype != np.int8 or x.shape[1:] != expect:
        raise UsageError(
            f"run_int8 needs int8 inputs of shape (N, {', '.join(map(str, expect))}), "
            f"got {x.dtype} {tuple(x.shape)}"
        )
    outs = [_run_batch(qmodel, x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    classes = qmodel.output_tensor.nbytes  # the logits tensor is (1, 1, 1, classes)
    out = np.concatenate(outs).reshape(len(x), classes) if outs else np.zeros((0, classes), np.int8)
    return out[0] if single else out


def _run_batch(qmodel: QuantizedModel, x: np.ndarray) -> np.ndarray:
    values: dict[int, np.ndarray] = {qmodel.input: x}
    t = qmodel.tensors
    for op in qmodel.ops:
        ins = [values[i] for i in op.inputs]
        if op.kind == "add":
            out = add(ins[0], ins[1], op, t[op.inputs[0]], t[op.inputs[1]], t[op.output])
        elif op.kind in KERNELS:
            out = KERNELS[op.kind](ins[0], op, t[op.inputs[0]], t[op.output])
        else:
            raise UsageError(f"op {op.name or op.kind}: {op.kind} has no reference kernel")
        values[op.output] = out
    return values[qmodel.output]
