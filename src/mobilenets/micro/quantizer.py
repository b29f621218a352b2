"""Post-training int8 quantization to the LiteRT int8 spec: :func:`quantize_int8`.

- BN is folded (:func:`mobilenets.fold_bn`), then the model is lowered to NHWC ops (:mod:`.lower`).
- Weights: int8, symmetric, per output channel: ``s_w[c] = max|w[c]| / 127``, values in
  [-127, 127]. Bias: int32 with scale ``s_in * s_w[c]``.
- Activations: int8, asymmetric, per tensor, from ranges calibrated on real images. The range
  always contains 0 (zero padding and ReLU must be exact). ``avg_pool2d``, ``max_pool2d``,
  ``pad`` and ``reshape`` outputs share their input's parameters.
- Fused ReLU/ReLU6 become the output clamp, computed as TFLite's
  ``CalculateActivationRangeQuantized`` (in float32, rounded half away from zero).

Calibration methods (``method``):

- ``minmax``: the smallest and largest value seen (the floor).
- ``percentile``: the 0.01th and 99.99th percentiles of a sample of each tensor's values.
- ``mse``: per tensor, the clipping range (a fraction of the min/max range) that minimises the
  mean squared quantization error on that sample.

The evidence for the default is the comment at :data:`DEFAULT_METHOD`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import fx, nn

from ..errors import UsageError
from .graph import Op, QuantizedModel, Tensor
from .lower import lower
from .ops import FIXED_QUANT, spec

CALIB_METHODS = ("minmax", "percentile", "mse")
# Evidence (benchmarks/bench_tflite.py --calib-compare --checkpoint CKPT: 512 calibration
# images, all 10,000 Fashion-MNIST test images, int8 top-1 / top-1 agreement with fp32):
# - the demo's V1 a=0.25 small-input (3 epochs, fp32 89.28%): MinMax 89.30% / 99.13%,
#   percentile 89.34% / 99.40%, MSE 89.28% / 99.50%;
# - V2 a=0.35 small-input (3 epochs, fp32 90.62%): MinMax 90.55% / 99.13%, percentile
#   90.55% / 99.07%, MSE 90.71% / 99.21%.
# MSE disagrees with fp32 on 50 and 79 images where MinMax does on 87 and 87, and keeps top-1
# within 0.1 point on both: it is the default. (On a V1 trained for only 150 steps the three
# were within two of 300 test images: MinMax 76.3%, percentile 77.0%, MSE 76.7%.) It costs
# nothing measurable: 0.3-0.4 s to calibrate V1 a=0.25 @28 on 512 images or V2 a=0.35 @144
# on 64, as MinMax.
DEFAULT_METHOD = "mse"
_SAMPLE = 4096  # values kept per tensor and batch for percentile/MSE
MIN_SCALE = 1e-6  # the smallest activation scale (see tensor_params)


def _float32(x: float) -> float:
    return float(np.float32(x))


def tensor_params(lo: float, hi: float) -> tuple[float, int]:
    """Scale (float32-representable) and zero point of an int8 tensor holding [lo, hi] (0 in it)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < 255 * MIN_SCALE:  # a dead (all-zero) tensor: TFLite Micro refuses scales
        hi = lo + 255 * MIN_SCALE  # for which q(6) overflows int32 (ReLU6 clamp at Prepare)
    scale = _float32((hi - lo) / 255.0)
    zero_point = int(np.clip(round(-128 - lo / scale), -128, 127))
    return scale, zero_point


def activation_range(activation: str, scale: float, zero_point: int) -> tuple[int, int]:
    """TFLite ``CalculateActivationRangeQuantized`` for int8 (``f / scale`` in float32)."""

    def q(f: float) -> int:
        v = np.float32(f) / np.float32(scale)
        return zero_point + int(math.copysign(math.floor(abs(float(v)) + 0.5), float(v)))

    lo, hi = -128, 127
    if activation in ("relu", "relu6"):
        lo = max(lo, q(0.0))
    if activation == "relu6":
        hi = min(hi, q(6.0))
    if activation == "relu_n1_to_1":
        lo, hi = max(lo, q(-1.0)), min(hi, q(1.0))
    return lo, hi


# ---------------------------------------------------------------- calibration


class _Observer(fx.Interpreter):
    """Runs the traced float model and records each watched node's value range/sample."""

    def __init__(self, gm: fx.GraphModule, watch: set[str], method: str, seed: int = 0) -> None:
        super().__init__(gm)
        self.watch, self.method = watch, method
        self.lo: dict[str, float] = {}
        self.hi: dict[str, float] = {}
        self.samples: dict[str, list[np.ndarray]] = {}
        self.rng = np.random.default_rng(seed)

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.watch:
            v = out.detach().float()
            self.lo[n.name] = min(self.lo.get(n.name, math.inf), float(v.min()))
            self.hi[n.name] = max(self.hi.get(n.name, -math.inf), float(v.max()))
            if self.method != "minmax":
                flat = v.flatten().numpy()
                pick = self.rng.choice(flat.size, min(_SAMPLE, flat.size), replace=False)
                self.samples.setdefault(n.name, []).append(flat[pick])
        return out


def _mse_range(values: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    best, best_err = (lo, hi), math.inf
    for frac in np.linspace(0.3, 1.0, 36):
        a, b = lo * frac, hi * frac
        scale, zp = tensor_params(a, b)
        q = np.clip(np.round(values / scale) + zp, -128, 127)
        err = float(np.mean(((q - zp) * scale - values) ** 2))
        if err < best_err:
            best, best_err = (a, b), err
    return best


def _range(obs: _Observer, name: str, method: str) -> tuple[float, float]:
    lo, hi = obs.lo[name], obs.hi[name]
    if method == "minmax":
        return lo, hi
    values = np.concatenate(obs.samples[name])
    if method == "percentile":
        return float(np.percentile(values, 0.01)), float(np.percentile(values, 99.99))
    return _mse_range(values, lo, hi)


def calibrate(
    model: nn.Module,
    node_names: set[str],
    images: Iterable[torch.Tensor],
    method: str = DEFAULT_METHOD,
) -> dict[str, tuple[float, float]]:
    """(min, max) of each named fx node's output over ``images`` (float NCHW batches)."""
    gm = fx.symbolic_trace(model)
    obs = _Observer(gm, node_names, method)
    seen = 0
    with torch.no_grad():
        for x in images:
            obs.run(x.float())
            seen += len(x)
    if seen == 0:
        raise UsageError("calibration data is empty")
    return {n: _range(obs, n, method) for n in node_names}


# ---------------------------------------------------------------- quantization


def quantize_weights(
    w: np.ndarray, axis: int, bias: np.ndarray | None, s_in: float, per_tensor: bool = False
):
    """Symmetric int8 weights, per channel along ``axis`` (or one scale, repeated per channel);
    returns (q, float32 scales)."""
    moved = np.moveaxis(w.astype(np.float64), axis, 0)
    amax = np.abs(moved.reshape(moved.shape[0], -1)).max(1)
    if bias is not None:  # an all-zero channel still needs a scale under which its bias fits
        amax = np.maximum(amax, np.abs(bias) * 127.0 / (s_in * 2.0**30))
    if per_tensor:
        amax = np.full_like(amax, amax.max())
    scales = np.maximum(amax / 127.0, 1e-12).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scales.astype(np.float64).reshape(shape)), -127, 127)
    return q.astype(np.int8), scales


def _quantize_op(op: Op, tensors: list[Tensor]) -> Op:
    t_in, t_out = tensors[op.inputs[0]], tensors[op.output]
    q = Op(op.kind, op.inputs, op.output, op.name, stride=op.stride, padding=op.padding)
    q.kernel, q.depth_multiplier, q.activation = op.kernel, op.depth_multiplier, op.activation
    if op.weights is not None:
        axis = 3 if op.kind == "depthwise_conv2d" else 0
        # The classifier (a conv over the whole pooled map, see lower._linear) gets one weight
        # scale, as TFLite's FULLY_CONNECTED: 1000 per-channel scales and zero points would
        # add 24 KB to the file. TFLite Micro still derives a multiplier per output channel.
        classifier = op.kind == "conv2d" and op.weights.shape[1:3] == t_in.shape[1:3]
        classifier = classifier and t_out.shape[1:3] == (1, 1)
        q.weights, q.weight_scales = quantize_weights(
            op.weights, axis, op.bias, t_in.scale, per_tensor=classifier
        )
        bias_scale = np.float64(t_in.scale) * q.weight_scales.astype(np.float64)
        bias = np.round(op.bias.astype(np.float64) / bias_scale)
        q.bias = np.clip(bias, -(2**31), 2**31 - 1).astype(np.int32)
    q.act_min, q.act_max = activation_range(op.activation, t_out.scale, t_out.zero_point)
    return q


def quantize_graph(graph: QuantizedModel, ranges: dict[int, tuple[float, float]]):
    """The int8 graph of an fp32 graph, given each tensor's calibrated (min, max)."""
    tensors = [Tensor(t.name, t.shape, 0.0, 0) for t in graph.tensors]

    def assign(i: int) -> None:
        tensors[i].scale, tensors[i].zero_point = tensor_params(*ranges[i])

    assign(graph.input)
    for op in graph.ops:
        if spec(op.kind).quant == "input":  # the registry's quantization rule
            src = tensors[op.inputs[0]]
            tensors[op.output].scale, tensors[op.output].zero_point = src.scale, src.zero_point
        elif spec(op.kind).quant == "fixed":
            tensors[op.output].scale, tensors[op.output].zero_point = FIXED_QUANT
        else:
            assign(op.output)
    ops = [_quantize_op(op, tensors) for op in graph.ops]
    return QuantizedModel(tensors, ops, graph.input, graph.output, config=dict(graph.config))


def quantize_int8(
    model: nn.Module,
    calibration_images: torch.Tensor | np.ndarray | Iterable[torch.Tensor],
    *,
    method: str = DEFAULT_METHOD,
    batch_size: int = 64,
) -> QuantizedModel:
    """Quantize ``model`` (a mobilenets model) to an integer-only int8 :class:`QuantizedModel`.

    Args:
        calibration_images: normalized float model inputs (N, C, H, W), or batches of them:
            a few hundred training images.
        method: activation range calibration, one of ``minmax``, ``percentile``, ``mse``
            (default: :data:`DEFAULT_METHOD`, ``mse``).
    """
    from ..fold import fold_bn

    if method not in CALIB_METHODS:
        raise UsageError(f"method must be one of {', '.join(CALIB_METHODS)}, got {method!r}")
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise UsageError("quantize_int8 needs a mobilenets model (with a .config)")
    folded = fold_bn(model)
    lowered = lower(folded)
    batches = _batches(calibration_images, cfg, batch_size)
    nodes = set(lowered.node_of_tensor.values())
    by_node = calibrate(folded, nodes, batches, method)
    ranges = {t: by_node[n] for t, n in lowered.node_of_tensor.items()}
    ranges.update(lowered.fixed_ranges)  # e.g. a folded hard-sigmoid's exact [0, 1]
    qmodel = quantize_graph(lowered.graph, ranges)
    qmodel.config = cfg.to_dict()
    return qmodel


def _batches(data, cfg, batch_size: int) -> Iterable[torch.Tensor]:
    arrays = [data] if isinstance(data, (torch.Tensor, np.ndarray)) else data
    for arr in arrays:
        t = torch.as_tensor(arr)
        if t.ndim != 4 or t.shape[1] != cfg.in_chans:
            raise UsageError(
                f"calibration data must be (N, {cfg.in_chans}, H, W) float inputs for a "
                f"{cfg.in_chans}-channel model, got shape {tuple(t.shape)}"
            )
        if t.shape[2:] != (cfg.resolution, cfg.resolution):
            raise UsageError(
                f"calibration images are {t.shape[2]}x{t.shape[3]}, the model takes "
                f"{cfg.resolution}x{cfg.resolution}"
            )
        if not t.is_floating_point():
            raise UsageError(f"calibration data must be normalized floats, got {t.dtype}")
        yield from t.split(batch_size)
