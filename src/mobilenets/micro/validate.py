"""Checks on a :class:`QuantizedModel` before anything is planned, allocated or generated.

A graph read from a file (``.tflite``) is untrusted: its ops may read tensors that no earlier op
wrote (a cycle makes a demand-driven planner loop forever), its indices may point outside the
tensor table, its shapes may ask for gigabytes, and its quantization parameters may be NaN,
infinite, negative or out of the int8 range. Every check raises :class:`GraphError` in one line
that names the tensor or op.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import MobilenetsError
from .graph import QuantizedModel

MAX_DIM = 65_535  # the generated C keeps heights, widths and channels in int32, rows in int16
MAX_RANK = 4
MAX_TENSOR_BYTES = 1 << 28  # 256 MiB: far above any microcontroller, far below host RAM


class GraphError(MobilenetsError, ValueError):
    """A malformed or out-of-range model graph (CLI exit code 1)."""


def check_model(qm: QuantizedModel, where: str) -> None:
    """All checks: graph structure and shapes, then (int8 graphs) quantization, class names."""
    check_graph(qm, where)
    if not qm.is_float:
        check_quantization(qm, where)
    if qm.class_names is not None:
        check_class_names(qm.class_names, where)


def _tensor_label(qm: QuantizedModel, t: int) -> str:
    name = qm.tensors[t].name if 0 <= t < len(qm.tensors) else ""
    return f"tensor {t} ({name})" if name else f"tensor {t}"


def check_shapes(qm: QuantizedModel, where: str) -> None:
    """Every tensor the graph computes has 1 to 4 dimensions, each 1..MAX_DIM, and at most
    MAX_TENSOR_BYTES (a file's other tensors, e.g. scalar constants, are not activations)."""
    used = {int(qm.input), int(qm.output)}
    used.update(int(t) for op in qm.ops for t in (*op.inputs, op.output))
    for i, t in enumerate(qm.tensors):
        if i not in used:
            continue
        shape = tuple(t.shape)
        label = _tensor_label(qm, i)
        if not 1 <= len(shape) <= MAX_RANK:
            raise GraphError(f"{where}: {label} has {len(shape)} dimensions, expected 1 to 4")
        if any(not isinstance(d, int | np.integer) or not 1 <= int(d) <= MAX_DIM for d in shape):
            dims = "x".join(map(str, shape))
            raise GraphError(f"{where}: {label} has shape {dims}; each size must be 1..{MAX_DIM}")
        size = math.prod(int(d) for d in shape)
        if size > MAX_TENSOR_BYTES:
            dims = "x".join(map(str, shape))
            raise GraphError(
                f"{where}: {label} of shape {dims} holds {size:,} values, more than the "
                f"{MAX_TENSOR_BYTES:,} supported"
            )


def check_graph(qm: QuantizedModel, where: str) -> None:
    """Indices in range, ops in topological order (each reads only tensors already written),
    each tensor written once, the output written, and bounded shapes."""
    n = len(qm.tensors)
    for role, t in (("input", qm.input), ("output", qm.output)):
        if not isinstance(t, int | np.integer) or not 0 <= int(t) < n:
            raise GraphError(f"{where}: the graph {role} is tensor {t}, outside 0..{n - 1}")
    for i, op in enumerate(qm.ops):
        for t in (*op.inputs, op.output):
            if not isinstance(t, int | np.integer) or not 0 <= int(t) < n:
                raise GraphError(f"{where}: op {i} ({op.kind}) uses tensor {t}, outside 0..{n - 1}")
    check_shapes(qm, where)
    written = {int(qm.input)}
    for i, op in enumerate(qm.ops):
        for t in op.inputs:
            if int(t) not in written:
                raise GraphError(
                    f"{where}: op {i} ({op.kind}) reads {_tensor_label(qm, t)} before any op "
                    "writes it: the ops are not in topological order or form a cycle"
                )
        if int(op.output) in written:
            raise GraphError(
                f"{where}: op {i} ({op.kind}) writes {_tensor_label(qm, op.output)}, "
                "already written"
            )
        written.add(int(op.output))
    if int(qm.output) not in written:
        raise GraphError(f"{where}: no op writes the graph output {_tensor_label(qm, qm.output)}")


def _bad_scale(scale: Any) -> bool:
    try:
        s = float(np.float32(scale))
    except (TypeError, ValueError):
        return True
    return not (math.isfinite(s) and s > 0.0)


def _activation_tensors(qm: QuantizedModel) -> list[int]:
    """The int8 activation tensors: all but QUANTIZE's float input and DEQUANTIZE's output."""
    used = {int(qm.input), int(qm.output)}
    floats = set()
    for op in qm.ops:
        used.update(int(t) for t in (*op.inputs, op.output))
        if op.kind == "quantize":
            floats.add(int(op.inputs[0]))
        elif op.kind == "dequantize":
            floats.add(int(op.output))
    return sorted(used - floats)


def check_quantization(qm: QuantizedModel, where: str) -> None:
    """int8 graphs: activation scales finite and > 0, zero points in -128..127, weight scales
    finite and > 0 (one per output channel), weights int8, biases int32."""
    for t in _activation_tensors(qm):
        tensor, label = qm.tensors[t], _tensor_label(qm, t)
        if _bad_scale(tensor.scale):
            raise GraphError(f"{where}: {label} has scale {tensor.scale}; needs a finite scale > 0")
        zp = tensor.zero_point
        if not isinstance(zp, int | np.integer) or not -128 <= int(zp) <= 127:
            raise GraphError(f"{where}: {label} has zero point {zp}; int8 needs -128..127")
    for i, op in enumerate(qm.ops):
        if op.weights is None:
            continue
        label = f"op {i} ({op.kind}, output {_tensor_label(qm, op.output)})"
        constant = op.kind in ("add", "mul")  # a constant operand: centred int16 values
        if np.asarray(op.weights).dtype != (np.int16 if constant else np.int8):
            raise GraphError(
                f"{where}: {label} has {np.asarray(op.weights).dtype} weights, not int8"
            )
        scales = np.asarray(
            op.weight_scales if op.weight_scales is not None else [], np.float64
        ).reshape(-1)
        bad = [s for s in scales if _bad_scale(s)]
        if scales.size == 0 or bad:
            what = f"weight scale {bad[0]}" if bad else "no weight scales"
            raise GraphError(f"{where}: {label} has {what}; needs finite scales > 0")
        if op.bias is not None and np.asarray(op.bias).dtype != np.int32:
            raise GraphError(f"{where}: {label} has {np.asarray(op.bias).dtype} biases, not int32")


def check_class_names(names: Any, where: str) -> None:
    """A list of strings, none holding NUL, each encodable as UTF-8 (no lone surrogates)."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise GraphError(
            f"{where}: class names must be a list of strings, got {type(names).__name__}"
        )
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise GraphError(f"{where}: class name {i} is a {type(name).__name__}, not a string")
        if "\0" in name:
            raise GraphError(f"{where}: class name {i} contains a NUL character")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise GraphError(
                f"{where}: class name {i} is not valid Unicode (a lone surrogate)"
            ) from None
