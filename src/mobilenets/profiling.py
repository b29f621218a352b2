"""Exact cost model: params, multiply-adds and activation memory from a list of ops.

The model is traced with torch.fx into ops; each op reads and writes *buffers* whose
lifetimes (first writer, last reader) are recorded, so a static memory planner can reuse them.
BN, activations, dropout, flatten and the residual add run in place: their output aliases
their (first) input buffer. Only conv, linear and pooling ops allocate a new buffer.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

# Layer kinds that the papers count: multiply-adds of convolutions and fully connected layers.
WEIGHT_KINDS = ("conv", "depthwise", "pointwise", "linear")
_ALIAS_MODULES = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.Identity,
    nn.Dropout,
    nn.Flatten,
    nn.Hardswish,
    nn.SiLU,
)
_POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)
_ALIAS_FUNCTIONS = {
    operator.add,
    operator.iadd,
    torch.add,
    torch.flatten,
    torch.relu,
    torch.nn.functional.relu,
    torch.nn.functional.relu6,
    torch.reshape,
}
_ALIAS_METHODS = {"flatten", "view", "reshape", "relu", "relu_", "add", "add_", "contiguous"}


@dataclass
class Buffer:
    """An activation tensor in memory: written by op ``first``, last read by op ``last``."""

    id: int
    shape: tuple[int, ...]
    elems: int
    first: int
    last: int


@dataclass
class Op:
    """One traced op. ``output`` is the buffer it writes (its input's buffer when in place)."""

    name: str
    kind: str
    inputs: list[int]
    output: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: int = 0
    weight_params: int = 0
    macs: int = 0
    inplace: bool = False

    @property
    def out_elems(self) -> int:
        n = 1
        for d in self.out_shape:
            n *= d
        return n


@dataclass
class Report:
    """The result of :func:`profile`. Shapes are per image, without the batch dimension."""

    model: str
    resolution: int
    in_chans: int
    bytes_per_elem: int
    params: int
    macs: int
    ops: list[Op]
    buffers: list[Buffer]
    by_kind: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def layers(self) -> list[dict[str, Any]]:
        """Per-layer rows: name, kind, input/output shape, params, MACs, output elements."""
        return [
            {
                "name": op.name,
                "kind": op.kind,
                "in_shape": list(op.in_shape),
                "out_shape": list(op.out_shape),
                "params": op.params,
                "macs": op.macs,
                "out_elems": op.out_elems,
            }
            for op in self.ops
            if op.kind not in ("identity",)
        ]

    @property
    def largest_tensor_elems(self) -> int:
        return max(b.elems for b in self.buffers)

    def live_elems(self, i: int) -> int:
        """Elements of all buffers alive while op ``i`` runs."""
        return sum(b.elems for b in self.buffers if b.first <= i <= b.last)

    @property
    def peak_activation_elems(self) -> int:
        """Largest sum of live buffers over the ops that allocate (conv, linear, pool)."""
        return max(self.live_elems(i) for i, op in enumerate(self.ops) if not op.inplace)

    @property
    def peak_activation_bytes(self) -> int:
        return self.peak_activation_elems * self.bytes_per_elem

    @property
    def weight_bytes(self) -> int:
        return self.params * 4

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "resolution": self.resolution,
            "in_chans": self.in_chans,
            "params": self.params,
            "macs": self.macs,
            "largest_tensor_elems": self.largest_tensor_elems,
            "peak_activation_elems": self.peak_activation_elems,
            "peak_activation_bytes": self.peak_activation_bytes,
            "bytes_per_elem": self.bytes_per_elem,
            "by_kind": self.by_kind,
            "layers": self.layers,
            "buffers": [asdict(b) for b in self.buffers],
        }


def _conv_kind(m: nn.Conv2d) -> str:
    if m.groups > 1 and m.groups == m.in_channels:
        return "depthwise"
    if m.kernel_size == (1, 1) and m.groups == 1:
        return "pointwise"
    return "conv"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _shapes(model: nn.Module, in_chans: int, res: int) -> fx.GraphModule:
    """A traced copy of ``model`` whose nodes carry their output shapes.

    The copy lives on the ``meta`` device (its weights and activations have shapes but no
    memory, so a 10000 px input costs nothing) and runs in eval mode: the caller's model is
    never moved, run or switched between train and eval (fx tracing alone shares its modules).
    """
    import copy
    import itertools

    gm = fx.symbolic_trace(model)
    memo: dict[int, Any] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    shadow = copy.deepcopy(gm, memo).eval()
    with torch.no_grad():
        ShapeProp(shadow).propagate(torch.zeros(1, in_chans, res, res, device="meta"))
    return shadow


def _module_cost(m: nn.Module, out_shape: tuple[int, ...]) -> tuple[str, int, int, int, bool]:
    """(kind, params, weight params, MACs, aliases its input) of one called module."""
    params = sum(p.numel() for p in m.parameters(recurse=False))
    if isinstance(m, nn.Conv2d):
        k = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        return _conv_kind(m), params, m.weight.numel(), _numel(out_shape) * k, False
    if isinstance(m, nn.Linear):
        return "linear", params, m.weight.numel(), _numel(out_shape) * m.in_features, False
    if isinstance(m, _ALIAS_MODULES):
        kind = {
            nn.BatchNorm2d: "bn",
            nn.Identity: "identity",
            nn.Dropout: "identity",
            nn.Flatten: "flatten",
        }.get(type(m), "act")
        return kind, params, 0, 0, True
    if isinstance(m, _POOL_MODULES):
        return "pool", params, 0, 0, False
    return type(m).__name__.lower(), params, 0, 0, False


def _function_kind(node: fx.Node) -> tuple[str, bool]:
    """(kind, aliases its input) of a called function or method."""
    target = node.target
    if target in _ALIAS_FUNCTIONS or (node.op == "call_method" and target in _ALIAS_METHODS):
        adds = (operator.add, operator.iadd, torch.add, "add", "add_")
        return ("add" if target in adds else "reshape"), True
    return getattr(target, "__name__", str(target)), False


def _node_shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape[1:]) if meta is not None and hasattr(meta, "shape") else ()


def _trace_ops(gm: fx.GraphModule) -> tuple[list[Op], list[Buffer]]:
    """The ops of a shape-propagated graph, with each buffer's first writer and last reader."""
    modules = dict(gm.named_modules())
    ops: list[Op] = []
    buffers: list[Buffer] = []
    buf_of: dict[fx.Node, int] = {}

    def new_buffer(node: fx.Node, op_index: int) -> int:
        s = _node_shape(node)
        buffers.append(Buffer(len(buffers), s, _numel(s), op_index, op_index))
        return len(buffers) - 1

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            buf_of[node] = new_buffer(node, -1)
            continue
        if node.op in ("get_attr", "output"):
            for inp in node.all_input_nodes:
                if inp in buf_of and node.op == "output":
                    buffers[buf_of[inp]].last = len(ops)
            continue
        tensor_inputs = [n for n in node.all_input_nodes if n in buf_of]
        out_shape = _node_shape(node)
        if not tensor_inputs or not out_shape:
            continue  # size() calls and the like
        i = len(ops)
        if node.op == "call_module":
            name = str(node.target)
            kind, params, wparams, macs, inplace = _module_cost(modules[node.target], out_shape)
        else:
            name, (kind, inplace), params, wparams, macs = node.name, _function_kind(node), 0, 0, 0
        for inp in tensor_inputs:
            buffers[buf_of[inp]].last = i
        out = buf_of[tensor_inputs[0]] if inplace else new_buffer(node, i)
        buf_of[node] = out
        in_bufs = [buf_of[n] for n in tensor_inputs]
        in_shape = _node_shape(tensor_inputs[0])
        ops.append(
            Op(name, kind, in_bufs, out, in_shape, out_shape, params, wparams, macs, inplace)
        )
    return ops, buffers


def _shares_by_kind(ops: list[Op]) -> dict[str, dict[str, float]]:
    """MACs and weight params per weight-layer kind, with their shares of the totals."""
    total_w = sum(op.weight_params for op in ops) or 1
    total_m = sum(op.macs for op in ops) or 1
    by_kind: dict[str, dict[str, float]] = {}
    for op in ops:
        if op.kind in WEIGHT_KINDS:
            k = by_kind.setdefault(op.kind, {"macs": 0, "weight_params": 0})
            k["macs"] += op.macs
            k["weight_params"] += op.weight_params
    for k in by_kind.values():
        k["macs_share"] = k["macs"] / total_m
        k["params_share"] = k["weight_params"] / total_w
    return by_kind


def profile(
    model: nn.Module, resolution: int | None = None, dtype: torch.dtype = torch.float32
) -> Report:
    """Trace ``model`` on one image and count params, MACs and activation memory.

    Shapes are computed with fake tensors: no activation memory is allocated, and ``model``
    (its weights, device and train/eval mode) is left exactly as it was.

    Args:
        resolution: input size; defaults to ``model.config.resolution`` (else 224).
        dtype: element type used for byte figures (activations are counted in elements too).
    """
    from .config import min_resolution
    from .errors import UsageError

    cfg = getattr(model, "config", None)
    res = resolution if resolution is not None else (cfg.resolution if cfg else 224)
    in_chans = cfg.in_chans if cfg else 3
    lo = min_resolution(bool(cfg and cfg.small_input))
    if isinstance(res, bool) or not isinstance(res, int) or res < lo:
        raise UsageError(f"resolution must be an integer >= {lo}, got {res!r}")
    ops, buffers = _trace_ops(_shapes(model, in_chans, res))
    return Report(
        model=cfg.name if cfg else type(model).__name__,
        resolution=res,
        in_chans=in_chans,
        bytes_per_elem=torch.empty((), dtype=dtype).element_size(),
        params=sum(p.numel() for p in model.parameters()),
        macs=sum(op.macs for op in ops),
        ops=ops,
        buffers=buffers,
        by_kind=_shares_by_kind(ops),
    )
