"""Hand-built int8 graphs for the C generator's tests, and a plain NumPy int8 reference.

``random_qmodel`` builds a MobileNet V1/V2 graph (the papers' tables via ``block_specs``) with
random int8 weights and per-channel scales chosen so activations stay in range. ``reference``
runs any :class:`QuantizedModel` op by op with TFLite's arithmetic (``micro.arith``), written
for reading: it is the golden for the generated C until the int8 branch's ``run_int8`` is here.
"""

from __future__ import annotations

import math

import numpy as np

from mobilenets.config import ModelConfig
from mobilenets.micro.arith import conv_multipliers, multiply_by_quantized_multiplier
from mobilenets.micro.codegen import add_multipliers
from mobilenets.micro.graph import Op, QuantizedModel, Tensor
from mobilenets.micro.arith import quantize_multiplier
from mobilenets.models import block_specs


def same_padding(size: int, k: int, s: int) -> tuple[int, int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return out, total // 2, total - total // 2


class _Builder:
    def __init__(self, seed: int, symmetric: bool):
        self.rng = np.random.default_rng(seed)
        self.tensors: list[Tensor] = []
        self.ops: list[Op] = []
        self.symmetric = symmetric

    def tensor(self, shape, scale=None, zp=None) -> int:
        scale = scale if scale is not None else float(np.float32(self.rng.uniform(0.02, 0.06)))
        zp = zp if zp is not None else int(self.rng.integers(-20, 20))
        self.tensors.append(Tensor(f"t{len(self.tensors)}", tuple(shape), scale, zp))
        return len(self.tensors) - 1

    def conv(self, x: int, cout: int, k: int, s: int, depthwise=False, relu6=True, name=""):
        h, w, cin = self.tensors[x].shape[1:]
        if self.symmetric and s == 2 and k > 1:  # PyTorch-style padding: an explicit pad op
            p = k // 2
            xp = self.tensor(
                (1, h + 2 * p, w + 2 * p, cin), self.tensors[x].scale, self.tensors[x].zero_point
            )
            self.ops.append(Op("pad", (x,), xp, name=name + ".pad", padding=(p, p, p, p)))
            x, h, w, pad = xp, h + 2 * p, w + 2 * p, (0, 0, 0, 0)
            oh, ow = (h - k) // s + 1, (w - k) // s + 1
        else:
            oh, pt, pb = same_padding(h, k, s)
            ow, pl, pr = same_padding(w, k, s)
            pad = (pt, pb, pl, pr)
        fan = k * k * (1 if depthwise else cin)
        if depthwise:
            wq = self.rng.integers(-127, 128, (1, k, k, cin), dtype=np.int64).astype(np.int8)
            cout = cin
        else:
            wq = self.rng.integers(-127, 128, (cout, k, k, cin), dtype=np.int64).astype(np.int8)
        s_w = np.float32(self.rng.uniform(0.002, 0.01, cout))
        s_in = self.tensors[x].scale
        # output scale: the accumulator's spread (sqrt(fan) * 73 * |x - zp|) over ~ 40 LSB
        s_out = float(np.float32(s_in * float(s_w.mean()) * math.sqrt(fan) * 73 * 25 / 40))
        zp_out = -128 if relu6 else int(self.rng.integers(-10, 10))
        y = self.tensor((1, oh, ow, cout), s_out, zp_out)
        bias = self.rng.integers(-2000, 2000, cout).astype(np.int32)
        act_max = min(127, zp_out + round(6 / s_out)) if relu6 else 127
        self.ops.append(
            Op(
                "depthwise_conv2d" if depthwise else "conv2d",
                (x,),
                y,
                name=name,
                weights=wq,
                weight_scales=s_w,
                bias=bias,
                stride=(s, s),
                padding=pad,
                act_min=zp_out if relu6 else -128,
                act_max=act_max,
            )
        )
        return y

    def add(self, a: int, b: int, name="") -> int:
        s = max(self.tensors[a].scale, self.tensors[b].scale) * 1.3
        y = self.tensor(self.tensors[a].shape, float(np.float32(s)), 0)
        self.ops.append(Op("add", (a, b), y, name=name))
        return y


def random_qmodel(
    name: str = "mobilenet_v2",
    width: float = 0.35,
    resolution: int = 32,
    num_classes: int = 10,
    in_chans: int = 3,
    small_input: bool = False,
    seed: int = 0,
    symmetric: bool = False,
    pool: str = "mean",
) -> QuantizedModel:
    """A MobileNet int8 graph with random weights (``symmetric``: PyTorch pads as PAD ops)."""
    cfg = ModelConfig(name, width, resolution, num_classes, in_chans, small_input=small_input)
    b = _Builder(seed, symmetric)
    x = b.tensor((1, resolution, resolution, in_chans), float(np.float32(0.0178)), -14)
    stem, specs, head = block_specs(cfg)
    h = b.conv(x, stem, 3, 1 if small_input else 2, name="stem")
    for i, sp in enumerate(specs):
        if sp.kind == "ds":
            h = b.conv(h, sp.in_chs, 3, sp.stride, depthwise=True, name=f"b{i}.dw")
            h = b.conv(h, sp.out_chs, 1, 1, name=f"b{i}.pw")
            continue
        inp = h
        if sp.exp_chs != sp.in_chs:
            h = b.conv(h, sp.exp_chs, 1, 1, name=f"b{i}.expand")
        h = b.conv(h, sp.exp_chs, 3, sp.stride, depthwise=True, name=f"b{i}.dw")
        h = b.conv(h, sp.out_chs, 1, 1, relu6=False, name=f"b{i}.project")
        if sp.stride == 1 and sp.in_chs == sp.out_chs:
            h = b.add(h, inp, name=f"b{i}.add")
    if head:
        h = b.conv(h, head, 1, 1, name="head")
    _, hh, ww, c = b.tensors[h].shape
    if pool == "mean":
        p = b.tensor((1, 1, 1, c), float(np.float32(b.tensors[h].scale * 0.7)), -100)
        b.ops.append(Op("mean", (h,), p, name="pool"))
    else:
        t = b.tensors[h]
        p = b.tensor((1, 1, 1, c), t.scale, t.zero_point)
        b.ops.append(Op("avg_pool2d", (h,), p, name="pool", kernel=(hh, ww)))
    f = b.tensor((1, c), b.tensors[p].scale, b.tensors[p].zero_point)
    b.ops.append(Op("reshape", (p,), f, name="flatten"))
    wq = b.rng.integers(-127, 128, (num_classes, c), dtype=np.int64).astype(np.int8)
    s_w = np.float32(b.rng.uniform(0.002, 0.01, num_classes))
    s_out = float(np.float32(b.tensors[f].scale * float(s_w.mean()) * math.sqrt(c) * 73 * 20 / 40))
    y = b.tensor((1, num_classes), s_out, 3)
    bias = b.rng.integers(-2000, 2000, num_classes).astype(np.int32)
    b.ops.append(Op("fully_connected", (f,), y, "classifier", wq, s_w, bias))
    return QuantizedModel(b.tensors, b.ops, 0, y, cfg.to_dict(), {}, None)


# ---- the plain NumPy reference -------------------------------------------------------------


def _requant(acc, op, t_in, t_out):
    m0, shift = conv_multipliers(t_in.scale, op.weight_scales, t_out.scale)
    v = multiply_by_quantized_multiplier(acc, m0, shift) + t_out.zero_point
    return np.clip(v, op.act_min, op.act_max).astype(np.int8)


def _conv(x, op, t_in, t_out, depthwise):
    pt, pb, pl, pr = op.padding
    xp = np.pad(x.astype(np.int64) - t_in.zero_point, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    w = op.weights.astype(np.int64)
    _, kh, kw, _ = w.shape
    oh, ow = t_out.shape[1], t_out.shape[2]
    sh, sw = op.stride
    acc = np.zeros((oh, ow, t_out.shape[3]), np.int64) + op.bias
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[0, ky : ky + sh * oh : sh, kx : kx + sw * ow : sw, :]
            if depthwise:
                acc += patch * w[0, ky, kx]
            else:
                acc += patch @ w[:, ky, kx, :].T
    return _requant(acc, op, t_in, t_out)[None]


def _add(a, b, op, ta, tb, to):
    m1, s1, m2, s2, mo, so = add_multipliers(ta.scale, tb.scale, to.scale)
    sa = multiply_by_quantized_multiplier((a.astype(np.int64) - ta.zero_point) << 20, m1, s1)
    sb = multiply_by_quantized_multiplier((b.astype(np.int64) - tb.zero_point) << 20, m2, s2)
    v = multiply_by_quantized_multiplier(sa + sb, mo, so) + to.zero_point
    return np.clip(v, op.act_min, op.act_max).astype(np.int8)


def _pool(x, op, ti, to):
    n = x.shape[1] * x.shape[2]
    if op.kind == "mean":
        acc = (x.astype(np.int64) - ti.zero_point).sum((1, 2))
        m0, shift = quantize_multiplier(float(np.float32(ti.scale)) / float(np.float32(to.scale)))
        acc = multiply_by_quantized_multiplier(acc, m0, shift)
    else:
        acc = x.astype(np.int64).sum((1, 2))
    q = np.where(acc > 0, (acc + n // 2) // n, -((-acc + n // 2) // n))
    if op.kind == "mean":
        q = q + to.zero_point
    return np.clip(q, op.act_min, op.act_max).astype(np.int8).reshape(to.shape)


def reference(qm: QuantizedModel, x: np.ndarray) -> np.ndarray:
    """Run ``qm`` on one int8 NHWC input with TFLite's integer arithmetic."""
    vals = {qm.input: np.asarray(x, np.int8).reshape(qm.input_tensor.shape)}
    T = qm.tensors
    for op in qm.ops:
        a = vals[op.inputs[0]]
        ti, to = T[op.inputs[0]], T[op.output]
        if op.kind in ("conv2d", "depthwise_conv2d"):
            y = _conv(a, op, ti, to, op.kind == "depthwise_conv2d")
        elif op.kind == "pad":
            pt, pb, pl, pr = op.padding
            y = np.pad(a, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=ti.zero_point)
        elif op.kind == "add":
            y = _add(a, vals[op.inputs[1]], op, ti, T[op.inputs[1]], to)
        elif op.kind in ("mean", "avg_pool2d"):
            y = _pool(a, op, ti, to)
        elif op.kind == "reshape":
            y = a.reshape(to.shape)
        elif op.kind == "fully_connected":
            acc = (a.astype(np.int64).reshape(1, -1) - ti.zero_point) @ op.weights.astype(
                np.int64
            ).T + op.bias
            y = _requant(acc, op, ti, to)
        else:
            raise NotImplementedError(op.kind)
        vals[op.output] = y
    return vals[qm.output]
