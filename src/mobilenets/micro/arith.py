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


# ---------------------------------------------------------------- fixed-point exp and 1/(1+x)
# gemmlowp's fixed-point functions as TFLite's LOGISTIC and SOFTMAX use them, on int32 raw
# values (held in int64 arrays): a value with ``ib`` integer bits has 31 - ib fractional bits.

_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
               (2, 39332535), (3, 720401), (4, 242))  # fmt: skip  # exp(-2^k) in Q0.31


def _wrap32(x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, np.int64) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _sat_shift_left(x: np.ndarray, exponent: int) -> np.ndarray:
    """gemmlowp's SaturatingRoundingMultiplyByPOT for a positive exponent."""
    return np.clip(np.asarray(x, np.int64) << exponent, INT32_MIN, INT32_MAX)


def _fx_mul(a, b) -> np.ndarray:
    return saturating_rounding_doubling_high_mul(a, b)


def _exp_quarter_interval(a: np.ndarray) -> np.ndarray:
    """exp(a) for a in [-1/4, 0), Q0.31 in and out: a Taylor expansion around -1/8."""
    x = _wrap32(a + (1 << 28))
    x2 = _fx_mul(x, x)
    x3 = _fx_mul(x2, x)
    x4 = _fx_mul(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    poly = rounding_divide_by_pot(_wrap32(_fx_mul(_wrap32(x4_over_4 + x3), 715827883) + x2), 1)
    return _wrap32(1895147668 + _fx_mul(1895147668, _wrap32(x + poly)))


def exp_on_negative_values(a: np.ndarray, ib: int) -> np.ndarray:
    """gemmlowp ``exp_on_negative_values``: exp(a) for a <= 0 with ``ib`` integer bits, Q0.31."""
    a = np.asarray(a, np.int64)
    fb = 31 - ib
    quarter = 1 << (fb - 2)
    a_mod = (a & (quarter - 1)) - quarter
    result = _exp_quarter_interval(_sat_shift_left(a_mod, ib) if ib else a_mod)
    remainder = _wrap32(a_mod - a)
    for exponent, multiplier in _EXP_BARREL:
        if ib > exponent:
            hit = (remainder & (1 << (fb + exponent))) != 0
            result = np.where(hit, _fx_mul(result, multiplier), result)
    if ib > 5:
        result = np.where(a < -(1 << (36 - ib)), 0, result)
    return np.where(a == 0, INT32_MAX, result)


def one_over_one_plus_x(a: np.ndarray) -> np.ndarray:
    """gemmlowp ``one_over_one_plus_x_for_x_in_0_1``: Q0.31 in and out, Newton-Raphson."""
    s = np.asarray(a, np.int64) + INT32_MAX
    half = np.where(s >= 0, (s + 1) // 2, -((-s + 1) // 2))  # RoundingHalfSum(a, 1)
    x = _wrap32(1515870810 + _fx_mul(half, -1010580540))  # 48/17 - 32/17 * d, Q2.29
    for _ in range(3):
        one_minus = _wrap32((1 << 29) - _fx_mul(half, x))
        x = _wrap32(x + _sat_shift_left(_fx_mul(x, one_minus), 2))
    return _sat_shift_left(x, 1)


def logistic_fixed(a: np.ndarray, ib: int) -> np.ndarray:
    """gemmlowp ``logistic``: 1 / (1 + exp(-a)) for ``ib`` integer bits in, Q0.31 out."""
    a = np.asarray(a, np.int64)
    positive = a > 0
    pos = one_over_one_plus_x(exp_on_negative_values(np.where(positive, -a, a), ib))
    return np.where(a == 0, 1 << 30, np.where(positive, pos, INT32_MAX - pos))


def get_reciprocal(x: np.ndarray, ib: int) -> tuple[np.ndarray, np.ndarray]:
    """TFLite ``GetReciprocal``: (1 / x in Q0.31 scaled, bits over unit) of positive x."""
    x = np.asarray(x, np.int64)
    headroom = 32 - np.frompyfunc(int.bit_length, 1, 1)(x).astype(np.int64)  # leading zeros
    shifted = _wrap32(((x << headroom) & 0xFFFFFFFF) - (1 << 31))
    return one_over_one_plus_x(shifted), ib - headroom


def _frexp_multiplier(real: float) -> tuple[int, int]:
    """``frexp`` then round half away from zero (TFLite's LOGISTIC Prepare)."""
    q, shift = math.frexp(real)
    return int(math.floor(q * (1 << 31) + 0.5)), shift


def input_radius(integer_bits: int, left_shift: int) -> int:
    """TFLite ``CalculateInputRadius`` (31 total signed bits)."""
    value = ((1 << integer_bits) - 1) * (1 << (31 - integer_bits)) / (1 << left_shift)
    return int(math.floor(value))


def logistic_params(s_in: float) -> tuple[int, int, int]:
    """LOGISTIC (int8): (multiplier, left shift, input radius) into Q4.27."""
    m, shift = _frexp_multiplier(float(np.float32(s_in)) * (1 << 27))
    return m, shift, input_radius(4, shift)


def softmax_params(s_in: float, beta: float = 1.0) -> tuple[int, int, int]:
    """SOFTMAX (int8): (multiplier, left shift, diff_min) into Q5.26 differences."""
    real = min(beta * float(np.float32(s_in)) * (1 << 26), (1 << 31) - 1.0)
    m, shift = quantize_multiplier(real)
    return m, shift, -input_radius(5, shift)


# ---------------------------------------------------------------- float islands (TFLite Micro's
# float32 DEQUANTIZE, ADD and QUANTIZE, as .float_islands runs them)


def dequantize_table(scale: float, zero_point: int) -> np.ndarray:
    """float32 values of the 256 int8 codes, index ``q + 128``: TFLite Micro's DEQUANTIZE
    (``static_cast<float>(double(scale) * (q - zero_point))``). The C engine reads this table,
    so its float island has no multiply that a compiler could fuse into an FMA."""
    q = np.arange(-128, 128, dtype=np.int64) - int(zero_point)
    return (float(np.float32(scale)) * q.astype(np.float64)).astype(np.float32)


def round_half_away_f32(v: np.ndarray) -> np.ndarray:
    """``std::round`` of float32 values (half away from zero), exactly: ``floor(|v| + 0.5)`` in
    float32 is wrong for 0.49999997 (the sum rounds up to 1.0)."""
    v = np.asarray(v, np.float32)
    a = np.abs(v)
    r = np.floor(a)
    r = r + (a - r >= np.float32(0.5))  # a - floor(a) is exact in float32
    return np.copysign(r, v).astype(np.float32)


def quantize_f32(v: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """TFLite Micro's AffineQuantize float32 -> int8: ``round(v / float(scale)) + zero_point``
    (float32 division, half away from zero), clamped to -128..127."""
    x = np.asarray(v, np.float32) / np.float32(scale)
    r = round_half_away_f32(np.clip(x, -512.0, 512.0))  # beyond +-512 clamps either way
    return np.clip(r.astype(np.int64) + int(zero_point), -128, 127).astype(np.int8)
