"""TFLite's integer requantization arithmetic, exactly as TFLite Micro's reference kernels do it.

- ``quantize_multiplier``: a real multiplier as a Q31 ``m0`` in [2^30, 2^31) and a power-of-two
  ``shift`` (TFLite ``QuantizeMultiplier``: ``frexp``, then round half away from zero).
- ``multiply_by_quantized_multiplier``: saturating rounding doubling high multiply, then a
  rounding divide by a power of two (round half away from zero), vectorised over NumPy arrays.

Multipliers are always derived from the float32 scales stored in the file, in double precision,
as TFLite Micro does at Prepare; anything else is off by one LSB on some channels.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite ``QuantizeMultiplier``: ``real ~= m0 * 2^(shift - 31)``."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = math.floor(abs(q) * (1 << 31) + 0.5)  # TfLiteRound: half away from zero
    q_fixed = q_fixed if q >= 0 else -q_fixed
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        shift, q_fixed = 0, 0
    if shift > 30:
        shift, q_fixed = 30, (1 << 31) - 1
    return int(q_fixed), int(shift)


def conv_multipliers(
    input_scale: float, weight_scales: np.ndarray, output_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (m0, shift) for a conv/FC, from float32 scales, in double (TFLM Prepare)."""
    s_in = float(np.float32(input_scale))
    s_out = float(np.float32(output_scale))
    pairs = [
        quantize_multiplier(s_in * float(np.float32(s_w)) / s_out)
        for s_w in np.asarray(weight_scales, np.float32)
    ]
    return (
        np.array([m for m, _ in pairs], np.int64),
        np.array([s for _, s in pairs], np.int64),
    )


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp's SRDHM on int32 values held in int64 arrays.

    The C code adds a nudge of 2^30 (or 1 - 2^30 when ``a * b < 0``) and divides by 2^31
    truncating toward zero: that is ``floor(a * b / 2^31 + 1/2)`` for every sign, computed
    here as one arithmetic shift. The only saturating case (both INT32_MIN) is kept.
    """
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    high = (a * b + (1 << 30)) >> 31
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, INT32_MAX, high) if overflow.any() else high


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: divide by 2^exponent, round half away from zero.

    The C code adds 1 when the remainder exceeds half the divisor (half minus one for negative
    ``x``); adding ``2^(exponent-1)``, minus 1 for negative ``x``, before the shift is the same.
    """
    x = np.asarray(x, np.int64)
    exponent = np.asarray(exponent, np.int64)
    half = (np.int64(1) << exponent) >> 1
    return (x + half - ((x < 0) & (exponent > 0))) >> exponent


def multiply_by_quantized_multiplier(
    x: np.ndarray, m0: np.ndarray | int, shift: np.ndarray | int
) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier`` (int32 in, int32 out, as int64 arrays).

    The same steps as :func:`saturating_rounding_doubling_high_mul` then
    :func:`rounding_divide_by_pot`, done in place on one int64 copy (it runs on every output
    element of every layer). ``m0`` is a Q31 multiplier in [2^30, 2^31), so SRDHM never saturates.
    """
    shift = np.asarray(shift, np.int64)
    m0 = np.asarray(m0, np.int64)
    acc = np.array(x, np.int64)  # a copy
    if np.any(shift > 0):
        # The C code multiplies in int32: the left-shifted value must still fit.
        np.clip(acc << np.maximum(shift, 0), INT32_MIN, INT32_MAX, out=acc)
    right = np.maximum(-shift, 0)
    acc *= m0  # SRDHM: floor(x * m0 / 2^31 + 1/2)
    acc += 1 << 30
    acc >>= 31
    negative = acc < 0  # RoundingDivideByPOT: add half the divisor, minus 1 below zero
    negative &= right > 0
    acc += (np.int64(1) << right) >> 1
    acc -= negative
    acc >>= right
    return acc


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after) of one spatial dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def padding_kind(
    padding: tuple[int, int, int, int], hw: tuple[int, int], kernel: tuple[int, int], stride
) -> str | None:
    """``SAME``, ``VALID`` or None (neither: TFLite needs a PAD op)."""
    if tuple(padding) == (0, 0, 0, 0):
        return "VALID"
    same = same_padding(hw[0], kernel[0], stride[0]) + same_padding(hw[1], kernel[1], stride[1])
    return "SAME" if tuple(padding) == same else None


# ---------------------------------------------------------------- Prepare: once per op
# Each function below is what TFLite Micro's Prepare computes for one op from the float32
# scales in the file; the NumPy reference and the C generator both call it.


def _f32(x: float) -> float:
    return float(np.float32(x))


def add_multipliers(s1: float, s2: float, s_out: float) -> tuple[int, int, int, int, int, int]:
    """ADD (int8): (m1, e1, m2, e2, m_out, e_out); inputs are shifted left by
    :data:`ADD_LEFT_SHIFT` and rescaled to twice the larger input scale, in double."""
    a, b, o = _f32(s1), _f32(s2), _f32(s_out)
    twice_max = 2.0 * max(a, b)
    m1, e1 = quantize_multiplier(a / twice_max)
    m2, e2 = quantize_multiplier(b / twice_max)
    mo, eo = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * o))
    return m1, e1, m2, e2, mo, eo


ADD_LEFT_SHIFT = 20


def mul_multiplier(s1: float, s2: float, s_out: float) -> tuple[int, int]:
    """MUL (int8): ``s1 * s2 / s_out`` in double from the float32 scales."""
    return quantize_multiplier(_f32(s1) * _f32(s2) / _f32(s_out))


def rescale_multiplier(s_in: float, s_out: float) -> tuple[int, int]:
    """MEAN (int8): ``s_in / s_out`` in double from the float32 scales."""
    return quantize_multiplier(_f32(s_in) / _f32(s_out))


def mean_multiplier(s_in: float, s_out: float, count: int) -> tuple[int, int]:
    """MEAN (int8) over ``count`` values: TFLite's ``QuantizedMeanOrSum`` folds the division
    into the multiplier ``s_in / s_out``: shifted left by ``min(floor(log2(count)), 32,
    31 + shift)``, divided by ``count`` (integer division), the shift lowered by as much."""
    m0, shift = rescale_multiplier(s_in, s_out)
    up = min(count.bit_length() - 1, 32, 31 + shift)
    return (m0 << up) // count, shift - up


def _to_int16_multiplier(m: int) -> int:
    """TFLite ``DownScaleInt32ToInt16Multiplier``: a Q31 multiplier rounded to Q15."""
    if m >= INT32_MAX - (1 << 15):
        return 2**15 - 1
    return (m + (1 << 15)) >> 16


def hard_swish_params(s_in: float, s_out: float) -> tuple[int, int, int, int]:
    """HARD_SWISH (int8): (output m16, output exponent, reluish m16, reluish exponent).

    TFLite computes these scales in float32 (not double), then ``QuantizeMultiplier`` and
    rounds each Q31 multiplier to Q15."""
    hires = np.float32(1.0 / 128.0) * np.float32(s_in)
    out_m, out_e = quantize_multiplier(float(np.float32(hires / np.float32(s_out))))
    relu_m, relu_e = quantize_multiplier(float(np.float32(hires / np.float32(3.0 / 32768.0))))
    return _to_int16_multiplier(out_m), out_e, _to_int16_multiplier(relu_m), relu_e
