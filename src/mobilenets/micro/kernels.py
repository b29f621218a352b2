"""The NumPy int8 reference kernels, one plain function per op (see :mod:`.reference`).

Every kernel has the signature ``kernel(xs, op, ts, t_out) -> int8 array``: ``xs`` the input
batches (N, ...), ``op`` the graph op, ``ts`` the input tensors (scales, zero points, shapes),
``t_out`` the output tensor. Each does what TFLite Micro's reference kernel does: accumulate in
integers, requantize with the multipliers TFLite Micro derives at Prepare (:mod:`.arith`, shared
with the C generator), add the output zero point, clamp to the fused activation range.

Integer sums of int8 products are computed with float64 matrix products: every partial sum is an
integer below 2^53, so float64 holds it exactly and BLAS does the work. This module imports no
graph class (the op registry :mod:`.ops` sits between it and :mod:`.graph`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .arith import (
    ADD_LEFT_SHIFT,
    add_multipliers,
    conv_multipliers,
    dequantize_table,
    exp_on_negative_values,
    get_reciprocal,
    hard_swish_params,
    logistic_fixed,
    logistic_params,
    mean_multiplier,
    mul_multiplier,
    multiply_by_quantized_multiplier,
    quantize_f32,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
    softmax_params,
)


def requantize(acc: np.ndarray, op: Any, t_in: Any, t_out: Any) -> np.ndarray:
    """int32 accumulators (per output channel on the last axis) -> clamped int8 outputs."""
    m0, shift = conv_multipliers(t_in.scale, op.weight_scales, t_out.scale)
    out = multiply_by_quantized_multiplier(acc + op.bias.astype(np.int64), m0, shift)
    out += t_out.zero_point
    return np.clip(out, op.act_min, op.act_max, out=out).astype(np.int8)


def _padded(x: np.ndarray, zero_point: int, padding) -> np.ndarray:
    """``x - zero_point`` as int32, with ``padding`` (top, bottom, left, right) of zeros."""
    top, bottom, left, right = padding
    centered = x.astype(np.int32) - zero_point
    return np.pad(centered, ((0, 0), (top, bottom), (left, right), (0, 0)))


def _windows(xp: np.ndarray, kh: int, kw: int, stride, out_hw):
    """Yield (i, j, strided view of xp) for each kernel tap: rows i + stride*oh, cols j + ..."""
    sh, sw = stride
    oh, ow = out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]


def conv2d(xs, op, ts, t_out) -> np.ndarray:
    """CONV_2D: weights (O, KH, KW, I)."""
    x, t_in = xs[0], ts[0]
    xp = _padded(x, t_in.zero_point, op.padding)
    _, kh, kw, _ = op.weights.shape
    n, oh, ow = x.shape[0], t_out.shape[1], t_out.shape[2]
    acc = np.zeros((n, oh, ow, op.weights.shape[0]), np.float64)
    w = op.weights.astype(np.float64)
    for i, j, view in _windows(xp, kh, kw, op.stride, (oh, ow)):
        acc += view.astype(np.float64) @ w[:, i, j, :].T
    return requantize(acc, op, t_in, t_out)


def depthwise_conv2d(xs, op, ts, t_out) -> np.ndarray:
    """DEPTHWISE_CONV_2D: weights (1, KH, KW, C * depth_multiplier)."""
    x, t_in = xs[0], ts[0]
    xp = _padded(x, t_in.zero_point, op.padding)
    if op.depth_multiplier > 1:  # output channel c*dm + m reads input channel c
        xp = np.repeat(xp, op.depth_multiplier, axis=3)
    _, kh, kw, _ = op.weights.shape
    n, oh, ow, oc = x.shape[0], t_out.shape[1], t_out.shape[2], t_out.shape[3]
    acc = np.zeros((n, oh, ow, oc), np.int32)  # |sum| <= KH*KW*255*128: fits int32
    w = op.weights.astype(np.int32)
    for i, j, view in _windows(xp, kh, kw, op.stride, (oh, ow)):
        acc += view * w[0, i, j]
    return requantize(acc, op, t_in, t_out)


def fully_connected(xs, op, ts, t_out) -> np.ndarray:
    """FULLY_CONNECTED: weights (O, I), input flattened in NHWC order; one multiplier per
    output channel (per-tensor weights repeat theirs), rounded as TFLite Micro does."""
    x, t_in = xs[0], ts[0]
    centered = x.reshape(x.shape[0], -1).astype(np.float64) - t_in.zero_point
    acc = centered @ op.weights.astype(np.float64).T
    out = requantize(acc, op, t_in, t_out)
    return out.reshape((x.shape[0], *t_out.shape[1:]))


@dataclass(frozen=True)
class _Constant:
    """The quantization of an op's constant operand (its values are already centred)."""

    scale: float
    zero_point: int = 0


def _operands(xs, op, ts) -> tuple[list[Any], list[Any]]:
    """ADD/MUL's two operands; a constant one (``op.weights``: centred int16 values, one or one
    per channel; ``op.weight_scales[0]`` its scale) broadcasts over the last axis."""
    if len(xs) == 2:
        return list(xs), list(ts)
    return [xs[0], op.weights], [ts[0], _Constant(float(op.weight_scales[0]))]


def add(xs, op, ts, t_out) -> np.ndarray:
    """ADD (int8): both inputs shifted left by 20 and rescaled to twice the larger input scale,
    summed, then rescaled to the output; broadcasting as NumPy (TFLite's rules)."""
    (x, y), (t_x, t_y) = _operands(xs, op, ts)
    mx, sx, my, sy, mo, so = add_multipliers(t_x.scale, t_y.scale, t_out.scale)
    xs_ = (x.astype(np.int64) - t_x.zero_point) * (1 << ADD_LEFT_SHIFT)
    ys_ = (y.astype(np.int64) - t_y.zero_point) * (1 << ADD_LEFT_SHIFT)
    total = multiply_by_quantized_multiplier(xs_, mx, sx) + multiply_by_quantized_multiplier(
        ys_, my, sy
    )
    out = multiply_by_quantized_multiplier(total, mo, so) + t_out.zero_point
    return np.clip(out, op.act_min, op.act_max).astype(np.int8)


def mul(xs, op, ts, t_out) -> np.ndarray:
    """MUL (int8): ``(x - zx) * (y - zy)`` rescaled by ``sx * sy / s_out``; NumPy broadcasting
    ([1, H, W, C] x [1, 1, 1, C] for squeeze-excite)."""
    (x, y), (t_x, t_y) = _operands(xs, op, ts)
    m0, shift = mul_multiplier(t_x.scale, t_y.scale, t_out.scale)
    prod = (x.astype(np.int64) - t_x.zero_point) * (y.astype(np.int64) - t_y.zero_point)
    out = multiply_by_quantized_multiplier(prod, m0, shift) + t_out.zero_point
    return np.clip(out, op.act_min, op.act_max).astype(np.int8)


def _round_div(acc: np.ndarray, count) -> np.ndarray:
    """C's ``acc > 0 ? (acc + n/2) / n : (acc - n/2) / n`` (truncating division)."""
    count = np.asarray(count, np.int64)
    half = count // 2
    return np.where(acc > 0, (acc + half) // count, -((half - acc) // count))


def _pool_geometry(x: np.ndarray, op, t_out):
    """The input padded with a marker value (for max) and the tap validity mask (for average)."""
    top, bottom, left, right = op.padding
    widths = ((0, 0), (top, bottom), (left, right), (0, 0))
    valid = np.pad(np.ones(x.shape[1:3], np.int64), widths[1:3])[None, :, :, None]
    return widths, valid


def avg_pool2d(xs, op, ts, t_out) -> np.ndarray:
    """AVERAGE_POOL_2D: the sum over the window's taps inside the input divided by their count,
    rounded half away from zero, in the input's scale (no rescaling)."""
    x = xs[0].astype(np.int64)
    kh, kw = op.kernel
    widths, valid = _pool_geometry(x, op, t_out)
    xp = np.pad(x, widths)
    out_hw = t_out.shape[1:3]
    acc = np.zeros((x.shape[0], *out_hw, x.shape[3]), np.int64)
    count = np.zeros((1, *out_hw, 1), np.int64)
    for _, _, view in _windows(xp, kh, kw, op.stride, out_hw):
        acc += view
    for _, _, view in _windows(valid, kh, kw, op.stride, out_hw):
        count += view
    return np.clip(_round_div(acc, count), op.act_min, op.act_max).astype(np.int8)


def max_pool2d(xs, op, ts, t_out) -> np.ndarray:
    """MAX_POOL_2D: the maximum over the window's taps inside the input, clamped."""
    kh, kw = op.kernel
    widths, _ = _pool_geometry(xs[0], op, t_out)
    xp = np.pad(xs[0].astype(np.int16), widths, constant_values=-32768)
    out = None
    for _, _, view in _windows(xp, kh, kw, op.stride, t_out.shape[1:3]):
        out = view if out is None else np.maximum(out, view)
    return np.clip(out, op.act_min, op.act_max).astype(np.int8)


def mean(xs, op, ts, t_out) -> np.ndarray:
    """MEAN over H and W, int8: the centred sum times a multiplier that holds both
    ``s_in / s_out`` and the division by H * W (TFLite's ``QuantizedMeanOrSum``)."""
    x, t_in = xs[0], ts[0]
    acc = (x.astype(np.int64) - t_in.zero_point).sum(axis=(1, 2), keepdims=True)
    m0, shift = mean_multiplier(t_in.scale, t_out.scale, x.shape[1] * x.shape[2])
    out = multiply_by_quantized_multiplier(acc, m0, shift) + t_out.zero_point
    return np.clip(out, op.act_min, op.act_max).astype(np.int8).reshape((len(x), *t_out.shape[1:]))


def _srdhm16(a: np.ndarray, b) -> np.ndarray:
    """gemmlowp's int16 SaturatingRoundingDoublingHighMul (truncating division by 2^15)."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    s = ab + nudge
    q = np.where(s >= 0, s >> 15, -((-s) >> 15))
    return np.where((a == -32768) & (b == -32768), 32767, q)


def _sdhm16(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """TFLite's int16 SaturatingDoublingHighMul: ``a * b / 2^15`` truncated toward zero."""
    ab = np.asarray(a, np.int64) * np.asarray(b, np.int64)
    q = np.where(ab >= 0, ab >> 15, -((-ab) >> 15))
    return np.where((np.asarray(a) == -32768) & (np.asarray(b) == -32768), 32767, q)


def _rdbp(x: np.ndarray, exponent: int) -> np.ndarray:
    """RoundingDivideByPOT (half away from zero) for a scalar exponent >= 0."""
    if exponent <= 0:
        return x
    mask = (1 << exponent) - 1
    rem = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (rem > threshold)


def _sat16(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -32768, 32767)


def hard_swish(xs, op, ts, t_out) -> np.ndarray:
    """HARD_SWISH (int8), TFLite's int16 fixed-point arithmetic: ``x * relu6(x + 3) / 6``."""
    x, t_in = xs[0], ts[0]
    out_m, out_e, relu_m, relu_e = hard_swish_params(t_in.scale, t_out.scale)
    hires = (x.astype(np.int64) - t_in.zero_point) * 128
    preshift = _srdhm16(hires, out_m)
    relu = hires
    if relu_e > 0:
        relu = _sat16(relu * (1 << (relu_e - 1)))
    relu = _srdhm16(relu, relu_m)
    if relu_e > 0:
        relu = _sat16(relu * 2)
    elif relu_e < 0:
        relu = _rdbp(relu, -relu_e)
    relu = (relu + (1 << 15)) >> 1
    out = _rdbp(_sdhm16(relu, preshift), -out_e) + t_out.zero_point
    return np.clip(out, -128, 127).astype(np.int8)


def pad(xs, op, ts, t_out) -> np.ndarray:
    """PAD / PADV2: constant padding of H and W (PAD: the zero point, the real value 0)."""
    top, bottom, left, right = op.padding
    widths = ((0, 0), (top, bottom), (left, right), (0, 0))
    value = ts[0].zero_point if op.pad_value is None else op.pad_value
    return np.pad(xs[0], widths, constant_values=value)


def quantize(xs, op, ts, t_out) -> np.ndarray:
    """QUANTIZE float32 -> int8: ``round(x / scale) + zero_point`` in float32, half away from
    zero, clamped (TFLite's AffineQuantize)."""
    return quantize_f32(xs[0], t_out.scale, t_out.zero_point)


def float_add(xs, op, ts, t_out) -> np.ndarray:
    """A float island (:mod:`.float_islands`) as TFLite Micro computes it: each int8 input
    DEQUANTIZEd to float32, summed in float32 left to right (one float ADD each), the sum
    QUANTIZEd. Only float32 operations, each rounded as the C engine rounds it."""
    acc = None
    for x, t in zip(xs, ts, strict=True):
        d = dequantize_table(t.scale, t.zero_point)[x.astype(np.int64) + 128]
        acc = d if acc is None else (acc + d).astype(np.float32)
    return quantize_f32(acc, t_out.scale, t_out.zero_point)


def dequantize(xs, op, ts, t_out) -> np.ndarray:
    """DEQUANTIZE int8 -> float32: ``scale * (q - zero_point)``, the scale in double."""
    centered = xs[0].astype(np.int64) - ts[0].zero_point
    return (float(np.float32(ts[0].scale)) * centered).astype(np.float32)


def reshape(xs, op, ts, t_out) -> np.ndarray:
    """RESHAPE / SQUEEZE: NHWC order is kept."""
    return xs[0].reshape((xs[0].shape[0], *t_out.shape[1:]))


def logistic(xs, op, ts, t_out) -> np.ndarray:
    """LOGISTIC (int8 in, int8 out with scale 1/256 and zero point -128): the input in Q4.27,
    gemmlowp's fixed-point logistic, rounded to Q0.8; inputs beyond the radius saturate."""
    x = xs[0].astype(np.int64) - ts[0].zero_point
    m, shift, radius = logistic_params(ts[0].scale)
    q4 = multiply_by_quantized_multiplier(np.clip(x, -radius, radius), m, shift)
    out = rounding_divide_by_pot(logistic_fixed(q4, 4), 23) - 128
    out = np.where(x <= -radius, -128, np.where(x >= radius, 127, out))
    return np.clip(out, -128, 127).astype(np.int8)


def softmax(xs, op, ts, t_out) -> np.ndarray:
    """SOFTMAX over the last axis (int8 in, int8 out with scale 1/256 and zero point -128):
    differences to the row maximum in Q5.26, gemmlowp's exp, a Q12 sum and its reciprocal."""
    x = xs[0].astype(np.int64)
    m, shift, diff_min = softmax_params(ts[0].scale, op.beta)
    diff = x - x.max(axis=-1, keepdims=True)
    used = diff >= diff_min
    scaled = multiply_by_quantized_multiplier(np.where(used, diff, 0), m, shift)
    exps = np.where(used, exp_on_negative_values(scaled, 5), 0)
    total = rounding_divide_by_pot(exps, 12).sum(axis=-1, keepdims=True)
    recip, over = get_reciprocal(total, 12)
    out = rounding_divide_by_pot(saturating_rounding_doubling_high_mul(recip, exps), over + 23)
    out = np.where(used, out - 128, -128)
    return np.clip(out, -128, 127).astype(np.int8)
