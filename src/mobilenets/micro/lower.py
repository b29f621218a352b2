"""Lower a (BN-folded) PyTorch model to the fp32 graph: NHWC ops with TFLite weight layouts.

torch.fx traces the model; each traced node becomes an op of :mod:`.graph` or is absorbed:
ReLU/ReLU6 into the op that produced their input (the fused activation), identity and dropout
into nothing, a :func:`mobilenets.models.pad_same` call into the padding of the conv after it.
PyTorch's symmetric padding that is not TensorFlow SAME (stride-2 convs on even sizes) becomes
an explicit ``pad`` op, padding only the rows/columns the conv reads. The fp32 graph is what
the fp32 ``.tflite`` holds and what :mod:`.quantizer` quantizes.

MobileNetV3: hard-swish is TFLite's HARD_SWISH op; squeeze-excite is a global average pool,
two 1x1 convs and a broadcast MUL; its hard-sigmoid ``relu6(y + 3) / 6`` is folded into the
conv before it (weights / 6, bias (b + 3) / 6) whose int8 output holds exactly [0, 1], so the
int8 saturation is the clamp (:attr:`Lowered.fixed_ranges`; such a graph is int8-only).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import UsageError
from .arith import padding_kind, same_padding
from .graph import Op, QuantizedModel, Tensor

__all__ = ["Lowered", "lower", "padding_kind", "same_padding"]

_ADD = {operator.add, operator.iadd, torch.add}
_MUL = {operator.mul, operator.imul, torch.mul}
_ACT_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6"}
_ACT_FUNCTIONS = {torch.relu: "relu", nn.functional.relu: "relu", nn.functional.relu6: "relu6"}


def _effective(size: int, kernel: int, stride: int, pad: int) -> tuple[int, int]:
    """The (before, after) padding a PyTorch conv with symmetric ``pad`` actually reads."""
    out = (size + 2 * pad - kernel) // stride + 1
    return pad, max((out - 1) * stride + kernel - size - pad, 0)


@dataclass
class Lowered:
    """The fp32 graph and, per tensor, the fx node whose output it holds (for calibration)."""

    graph: QuantizedModel
    node_of_tensor: dict[int, str] = field(default_factory=dict)
    # tensors whose int8 range is fixed by the lowering, not calibrated (hard-sigmoid: [0, 1])
    fixed_ranges: dict[int, tuple[float, float]] = field(default_factory=dict)


class _Builder:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.tensors: list[Tensor] = []
        self.ops: list[Op] = []
        self.env: dict[fx.Node, int] = {}
        self.pads: dict[fx.Node, tuple[int, tuple[int, int, int, int]]] = {}
        self.producer: dict[int, Op] = {}
        self.flat: set[int] = set()  # 4D tensors that PyTorch sees flattened
        self.node_of_tensor: dict[int, str] = {}
        self.fixed_ranges: dict[int, tuple[float, float]] = {}

    def tensor(self, node: fx.Node, shape: tuple[int, ...] | None = None) -> int:
        if shape is None:
            s = tuple(node.meta["tensor_meta"].shape)
            shape = (1, s[2], s[3], s[1]) if len(s) == 4 else (1, *s[1:])
        self.tensors.append(Tensor(node.name, tuple(int(d) for d in shape), 0.0, 0))
        self.node_of_tensor[len(self.tensors) - 1] = node.name
        return len(self.tensors) - 1

    def add_op(self, node: fx.Node, op: Op, out: int | None = None) -> int:
        op.output = self.tensor(node) if out is None else out
        op.name = op.name or str(node.target if node.op == "call_module" else node.name)
        self.ops.append(op)
        self.producer[op.output] = op
        self.env[node] = op.output
        return op.output

    def input_of(self, node: fx.Node, i: int = 0) -> int:
        arg = node.args[i]
        if arg in self.pads:
            raise UsageError(f"{node.name}: pad_same must feed a conv")
        return self.env[arg]

    def shape(self, t: int) -> tuple[int, ...]:
        return self.tensors[t].shape


def _conv(b: _Builder, node: fx.Node, m: nn.Conv2d) -> None:
    if m.dilation != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise UsageError(f"{node.target}: only zero-padded, undilated convs are supported")
    src = node.args[0]
    if src in b.pads:
        t, padding = b.pads[src]
    else:
        t = b.env[src]
        _, h, w, _ = b.shape(t)
        (ph, pw), (kh, kw), (sh, sw) = m.padding, m.kernel_size, m.stride
        padding = _effective(h, kh, sh, ph) + _effective(w, kw, sw, pw)
    _, h, w, c = b.shape(t)
    if padding_kind(padding, (h, w), m.kernel_size, m.stride) is None:
        t = _pad(b, node, t, padding)
        padding = (0, 0, 0, 0)
    weight = m.weight.detach().double().numpy()
    bias = (
        m.bias.detach().double().numpy() if m.bias is not None else np.zeros(m.out_channels)
    ).astype(np.float32)
    if m.groups == 1:
        kind, weights = "conv2d", weight.transpose(0, 2, 3, 1)  # (O, KH, KW, I)
    elif m.groups == m.in_channels:
        kind, weights = "depthwise_conv2d", weight.transpose(1, 2, 3, 0)  # (1, KH, KW, C*dm)
    else:
        raise UsageError(f"{node.target}: grouped convs (groups={m.groups}) are not supported")
    op = Op(kind, (t,), -1, weights=weights.astype(np.float32), bias=bias, stride=m.stride)
    op.padding, op.depth_multiplier = tuple(padding), m.out_channels // m.groups
    b.add_op(node, op)


def _pad(b: _Builder, node: fx.Node, t: int, padding: tuple[int, int, int, int]) -> int:
    _, h, w, c = b.shape(t)
    top, bottom, left, right = padding
    out = len(b.tensors)
    b.tensors.append(Tensor(f"{node.name}_pad", (1, h + top + bottom, w + left + right, c), 0.0, 0))
    op = Op("pad", (t,), out, name=f"{node.target}.pad", padding=tuple(padding))
    b.ops.append(op)
    b.producer[out] = op
    return out


def _pool(b: _Builder, node: fx.Node, m: nn.Module) -> None:
    t = b.input_of(node)
    _, h, w, c = b.shape(t)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,) * 2
        size = tuple(h if s is None else s for s in size)
        if size == (h, w):
            b.env[node] = t  # an identity (VGG16 at 224 px)
            return
        if size != (1, 1):
            raise UsageError(
                f"{node.target}: adaptive average pool from {h}x{w} to {size[0]}x{size[1]} has "
                "no TFLite op; export this model at the resolution where it is an identity "
                "(224 px for VGG16)"
            )
        b.add_op(node, Op("avg_pool2d", (t,), -1, kernel=(h, w)))
        return
    pair = nn.modules.utils._pair
    k, s, p = pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding)
    if getattr(m, "ceil_mode", False) or pair(getattr(m, "dilation", 1)) != (1, 1):
        raise UsageError(f"{node.target}: ceil_mode and dilated pools are not supported")
    padding = _effective(h, k[0], s[0], p[0]) + _effective(w, k[1], s[1], p[1])
    kind = "max_pool2d" if isinstance(m, nn.MaxPool2d) else "avg_pool2d"
    if padding != (0, 0, 0, 0):
        prev = b.producer.get(t)
        if kind == "avg_pool2d" or prev is None or prev.activation not in ("relu", "relu6"):
            raise UsageError(f"{node.target}: a padded pool must be a max pool after a ReLU")
        t = _pad(b, node, t, padding)  # zeros are the minimum of ReLU outputs
    b.add_op(node, Op(kind, (t,), -1, kernel=k, stride=s))


def _fuse_activation(b: _Builder, node: fx.Node, act: str) -> None:
    t = b.input_of(node)
    op = b.producer.get(t)
    fusable = ("conv2d", "depthwise_conv2d", "fully_connected", "add")
    if op is None or op.kind not in fusable or op.activation != "none":
        raise UsageError(f"{node.name}: a {act} must follow a conv, linear layer or add")
    if len(node.args[0].users) != 1:
        raise UsageError(f"{node.name}: the input of a {act} is also used elsewhere")
    op.activation = act
    b.env[node] = t
    b.node_of_tensor[t] = node.name


def _hard_sigmoid(b: _Builder, node: fx.Node) -> None:
    """``relu6(y + 3) / 6`` folded into the conv that computes y: weights / 6, bias (b + 3) / 6,
    and an int8 output range of exactly [0, 1], whose saturation at -128..127 is the clamp."""
    t = b.input_of(node)
    op = b.producer.get(t)
    if op is None or op.kind != "conv2d" or op.activation != "none":
        raise UsageError(f"{node.name}: a hard-sigmoid must follow a convolution")
    if len(node.args[0].users) != 1:
        raise UsageError(f"{node.name}: the input of a hard-sigmoid is also used elsewhere")
    op.weights = (op.weights.astype(np.float64) / 6.0).astype(np.float32)
    op.bias = ((op.bias.astype(np.float64) + 3.0) / 6.0).astype(np.float32)
    b.fixed_ranges[t] = (0.0, 1.0)
    b.env[node] = t
    b.node_of_tensor[t] = node.name


def _hard_swish(b: _Builder, node: fx.Node) -> None:
    """TFLite's HARD_SWISH op (its own tensor: no fused activation computes it)."""
    t = b.input_of(node)
    out = b.add_op(node, Op("hard_swish", (t,), -1), b.tensor(node, b.shape(t)))
    if t in b.flat:
        b.flat.add(out)


def _flatten(b: _Builder, node: fx.Node) -> None:
    """PyTorch's flatten stays a 4D NHWC tensor until a linear layer or the output reads it."""
    t = b.input_of(node)
    if len(b.shape(t)) != 4:
        raise UsageError(f"{node.name}: only (N, C, H, W) tensors can be flattened")
    b.env[node] = t
    b.flat.add(t)


def _linear(b: _Builder, node: fx.Node, m: nn.Linear) -> None:
    """A linear layer on a flattened (1, H, W, C) tensor is a VALID HxW CONV_2D to (1, 1, 1, O).

    TFLite Micro and LiteRT's reference kernels round the requantization of int8
    FULLY_CONNECTED differently (LiteRT once, TFLite Micro twice), but their CONV_2D agree, so
    the classifier is written as a conv, as Keras's MobileNet does. Its (1, 1, 1, O) output is
    the graph's output as it stands: a final RESHAPE to (1, O) would cost TFLite Micro 120 B of
    arena (a node and a tensor) and nothing else. PyTorch flattened C*H*W; the conv's
    (O, H, W, C) weights hold the permuted columns.
    """
    t = b.input_of(node)
    if t not in b.flat:
        raise UsageError(f"{node.target}: a linear layer needs a flattened input")
    _, h, w, c = b.shape(t)
    weight = m.weight.detach().double().numpy().reshape(-1, c, h, w).transpose(0, 2, 3, 1)
    bias = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(m.out_features)
    op = Op("conv2d", (t,), -1, weights=weight.astype(np.float32), bias=bias.astype(np.float32))
    out = b.add_op(node, op, b.tensor(node, (1, 1, 1, m.out_features)))
    b.flat.add(out)


def _module(b: _Builder, node: fx.Node) -> None:
    m = b.modules[node.target]
    if isinstance(m, nn.Conv2d):
        _conv(b, node, m)
    elif type(m) in _ACT_MODULES:
        _fuse_activation(b, node, _ACT_MODULES[type(m)])
    elif isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 6.0):
        _fuse_activation(b, node, "relu6")
    elif isinstance(m, nn.Hardswish):
        _hard_swish(b, node)
    elif isinstance(m, nn.Hardsigmoid):
        _hard_sigmoid(b, node)
    elif isinstance(m, (nn.Identity, nn.Dropout)):
        b.env[node] = b.input_of(node)
    elif isinstance(m, nn.Flatten):
        _flatten(b, node)
    elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.AvgPool2d)):
        _pool(b, node, m)
    elif isinstance(m, nn.Linear):
        _linear(b, node, m)
    elif isinstance(m, nn.BatchNorm2d):
        raise UsageError(f"{node.target}: a BatchNorm that follows no conv cannot be folded")
    else:
        raise UsageError(f"{node.target}: {type(m).__name__} has no int8 TFLite op here")


def _function(b: _Builder, node: fx.Node) -> None:
    from ..models import pad_same

    target = node.target
    if target is pad_same:
        t = b.input_of(node)
        _, h, w, _ = b.shape(t)
        k, s = node.args[1], node.args[2]
        b.pads[node] = (t, same_padding(h, k, s) + same_padding(w, k, s))
    elif target in _ADD or target in ("add", "add_"):
        x, y = (b.env[a] for a in node.args[:2])
        b.add_op(node, Op("add", (x, y), -1))
    elif target in _MUL or target in ("mul", "mul_"):
        x, y = (b.env[a] for a in node.args[:2])
        if b.shape(x)[1:3] == (1, 1) and b.shape(y)[1:3] != (1, 1):
            x, y = y, x  # the broadcast (1, 1, 1, C) operand second, as squeeze-excite's
        b.add_op(node, Op("mul", (x, y), -1), b.tensor(node, b.shape(x)))
    elif target in _ACT_FUNCTIONS or target in ("relu", "relu_"):
        _fuse_activation(b, node, _ACT_FUNCTIONS.get(target, "relu"))
    elif target in (torch.flatten, "flatten", "view", "reshape"):
        _flatten(b, node)
    elif target == "contiguous":
        b.env[node] = b.input_of(node)
    else:
        raise UsageError(f"{node.name}: {getattr(target, '__name__', target)} is not supported")


def lower(model: nn.Module) -> Lowered:
    """The fp32 graph of ``model`` (call on an eval-mode, BN-folded copy)."""
    cfg = model.config
    gm = fx.symbolic_trace(model)
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(1, cfg.in_chans, cfg.resolution, cfg.resolution))
    b = _Builder(gm)
    out = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            b.env[node] = b.tensor(node)
        elif node.op == "call_module":
            _module(b, node)
        elif node.op in ("call_function", "call_method"):
            _function(b, node)
        elif node.op == "output":
            out = b.env[node.args[0]]
        else:
            raise UsageError(f"{node.name}: {node.op} nodes are not supported")
    if out not in b.flat or b.shape(out)[1:3] != (1, 1):
        raise UsageError("the model's output must be (batch, classes) logits")
    graph = QuantizedModel(b.tensors, b.ops, 0, out, config=cfg.to_dict())
    return Lowered(graph, b.node_of_tensor, b.fixed_ranges)
