"""What converters write around the supported ops, folded away when a file is read.

- Keras's MobileNet (V1) head computes its RESHAPE's target shape at run time:
  ``SHAPE -> STRIDED_SLICE -> PACK``. Shapes here are static, so these ops are evaluated at load
  (:func:`fold`) and dropped; the RESHAPE then checks the folded shape against its output's.
- litert-torch writes a layout TRANSPOSE (NCHW -> NHWC) on the model's input. Dropped, exactly
  (a TRANSPOSE moves int8 values and changes none): the graph then takes NHWC input, as the
  generated C and ``run_int8`` always do, so a caller of the generated C passes the image as
  H x W x C bytes, not in the file's NCHW order.
- Float islands (``DEQUANTIZE -> float ADD -> QUANTIZE``, litert-torch's residual ADDs) become
  one ``float_add`` op that runs TFLite Micro's float32 arithmetic (:mod:`.float_islands`).
  Other float ops, and float models, are not folded (a float op rounds differently from any
  int8 kernel): :func:`check_integer_only` refuses them in one line that names the first one.

Works on :class:`RawOp` (operators as stored: builtin code, input and output tensor indices)
before the registry (:mod:`.ops`) reads them; imports no graph class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MobilenetsError

SHAPE, STRIDED_SLICE, PACK, TRANSPOSE = 77, 45, 83, 39
QUANTIZE, DEQUANTIZE = 114, 6
FOLDED_NAMES = {SHAPE: "SHAPE", STRIDED_SLICE: "STRIDED_SLICE", PACK: "PACK"}
FLOAT32, UINT8 = 0, 3
NHWC_FROM_NCHW = (0, 2, 3, 1)


@dataclass
class RawOp:
    """One operator as stored: its position, builtin code, tensor indices (-1: absent) and the
    schema's Operator table (for its options)."""

    index: int
    code: int
    inputs: list[int]
    outputs: list[int]
    table: Any


def _shape(ctx: Any, args: list[np.ndarray], op: RawOp) -> np.ndarray:
    return np.array(ctx.shape(op.inputs[0]), np.int32)


def _strided_slice(ctx: Any, args: list[np.ndarray], op: RawOp) -> np.ndarray:
    """STRIDED_SLICE of a 1-D constant (begin/end masks, shrink of that axis)."""
    x, begin, end, strides = (np.asarray(a).reshape(-1) for a in args[:4])
    o = ctx.options_of(op.table, ctx.tfl.StridedSliceOptions)
    if args[0].ndim != 1 or o.EllipsisMask() or o.NewAxisMask():
        raise MobilenetsError(
            f"{ctx.path}: op {op.index} (STRIDED_SLICE) of a shape is not 1-D: cannot fold it"
        )
    b = None if o.BeginMask() & 1 else int(begin[0])
    e = None if o.EndMask() & 1 else int(end[0])
    if o.ShrinkAxisMask() & 1:
        return np.array(x[int(begin[0])], np.int32)
    return np.array(x[b : e : int(strides[0])], np.int32)


def _pack(ctx: Any, args: list[np.ndarray], op: RawOp) -> np.ndarray:
    axis = ctx.options_of(op.table, ctx.tfl.PackOptions).Axis()
    return np.stack([np.asarray(a) for a in args], axis=axis)


FOLDERS: dict[int, Callable[[Any, list[np.ndarray], RawOp], np.ndarray]] = {
    SHAPE: _shape,
    STRIDED_SLICE: _strided_slice,
    PACK: _pack,
}


def fold(ctx: Any, ops: list[RawOp], graph_input: int) -> tuple[list[RawOp], int]:
    """Evaluate the shape arithmetic (into ``ctx.folded``) and drop an input layout TRANSPOSE.

    Returns the ops left and the graph input (the TRANSPOSE's output when one was dropped).
    """
    kept: list[RawOp] = []
    for op in ops:
        if op.code in FOLDERS:
            args = [] if op.code == SHAPE else [ctx.const(i) for i in op.inputs]
            ctx.folded[op.outputs[0]] = FOLDERS[op.code](ctx, args, op)
        elif op.code == TRANSPOSE and op.inputs[0] == graph_input and not kept:
            perm = tuple(int(v) for v in np.asarray(ctx.const(op.inputs[1])).reshape(-1))
            if perm != NHWC_FROM_NCHW:
                raise MobilenetsError(
                    f"{ctx.path}: op {op.index} is TRANSPOSE {perm} of the input, not supported "
                    "(only NCHW -> NHWC at the input)"
                )
            graph_input = op.outputs[0]  # the caller gives NHWC: the transpose is the layout
        else:
            kept.append(op)
    return kept, graph_input


def check_integer_only(ctx: Any, ops: list[RawOp], name: Callable[[int], str]) -> None:
    """Refuse, in one line naming the first one, ops that compute in float32 or uint8
    (QUANTIZE's input and DEQUANTIZE's output at the boundary may be either)."""
    for op in ops:
        if op.code in (QUANTIZE, DEQUANTIZE):
            continue
        types = {ctx.dtype(i) for i in op.inputs[:1] + op.outputs if i >= 0}
        if FLOAT32 in types:
            raise MobilenetsError(
                f"{ctx.path}: op {op.index} ({name(op.code)}) computes in float32: the file is "
                "not integer-only (convert it with full int8 quantization)"
            )
        if UINT8 in types:
            raise MobilenetsError(
                f"{ctx.path}: op {op.index} ({name(op.code)}) computes in uint8: uint8 (legacy) "
                "quantization is not supported (convert with int8 quantization)"
            )
