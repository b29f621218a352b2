"""Float islands of an int8 file, run exactly as TFLite Micro runs them.

litert-torch's PT2E int8 MobileNetV2 computes 9 of its 10 residual ADDs in float32: each int8
operand is DEQUANTIZEd, the float ADD's output is QUANTIZEd for the next convolution, and a
stage's chain of residual ADDs keeps its running sum in float32 (``x2 = x1 + f(x1)`` reads the
float ``x1``, not the int8 one the convolution read). An int8 ADD does not compute that (it
rescales with integer multipliers and rounds at other points), and no exact integer form is
known, so each QUANTIZE of such a chain becomes one op, ``float_add``, over the chain's int8
*leaves* (the DEQUANTIZE inputs, in summation order): TFLite Micro's own float arithmetic
(:func:`.kernels.float_add`), so the running float sums are recomputed from int8 tensors that
the planner keeps alive instead of being stored.

Supported: a left-to-right chain of plain float ADDs (no fused activation, same shapes), each
ADD reading DEQUANTIZE outputs or the chain's previous sum, whose float tensors feed only the
chain's ADDs and QUANTIZEs (one leaf alone, ``QUANTIZE(DEQUANTIZE(x))``, is a chain too).
Anything else stays as it is and :func:`.fold_constants.check_integer_only` refuses the file
in one line naming the first float op; :func:`fold_islands` itself refuses, naming the op, a
float ADD with a fused activation or a broadcast.

Works on :class:`.fold_constants.RawOp` lists, before the registry reads the ops.
"""

from __future__ import annotations

from typing import Any

from ..errors import MobilenetsError
from .fold_constants import DEQUANTIZE, FLOAT32, QUANTIZE, RawOp
from .tflite_ops import ACTIVATIONS

ADD = 0
INT8 = 9
FLOAT_ADD = -1  # the pseudo builtin code of an island's op (no TFLite builtin has it)


def _leaves(ctx: Any, ops: list[RawOp], graph_output: int) -> dict[int, list[int]]:
    """float tensor -> its int8 leaves in summation order, for every DEQUANTIZE output (one
    leaf) and every float ADD that extends a chain (left-deep: at most one input a sum)."""
    chains: dict[int, list[int]] = {}
    for op in ops:
        out = op.outputs[0]
        if out == graph_output:
            continue  # the boundary DEQUANTIZE of a float-out file
        if op.code == DEQUANTIZE and ctx.dtype(op.inputs[0]) == INT8:
            chains[out] = [op.inputs[0]]
        elif op.code == ADD and ctx.dtype(out) == FLOAT32:
            a, b = op.inputs[:2]
            if a in chains and b in chains and (len(chains[a]) == 1 or len(chains[b]) == 1):
                first, second = (a, b) if len(chains[b]) == 1 else (b, a)  # float + commutes
                _check_add(ctx, op, (a, b))
                chains[out] = [*chains[first], *chains[second]]
    return chains


def _check_add(ctx: Any, op: RawOp, ins: tuple[int, int]) -> None:
    """A float ADD of an island: no fused activation, no broadcast (one line naming it)."""
    has_options = op.table is not None and op.table.BuiltinOptions() is not None
    act = (
        ctx.options_of(op.table, ctx.tfl.AddOptions).FusedActivationFunction() if has_options else 0
    )
    if act != 0:
        name = {v: k.upper() for k, v in ACTIVATIONS.items()}.get(act, f"code {act}")
        raise MobilenetsError(
            f"{ctx.path}: op {op.index} (ADD) computes in float32 with a fused {name}: only "
            "plain float ADDs between DEQUANTIZE and QUANTIZE are run; the file is not "
            "integer-only"
        )
    shapes = {ctx.shape(i) for i in (*ins, op.outputs[0])}
    if len(shapes) != 1:
        raise MobilenetsError(
            f"{ctx.path}: op {op.index} (ADD) computes in float32 with a broadcast "
            f"({sorted(shapes)}): only same-shape float ADDs are run; the file is not integer-only"
        )


def fold_islands(ctx: Any, ops: list[RawOp], graph_output: int) -> list[RawOp]:
    """``ops`` with each island QUANTIZE replaced by a ``FLOAT_ADD`` op over its leaves and the
    island's DEQUANTIZE and float ADD ops dropped. Islands whose float tensors reach any other
    op (or the graph output) are left whole, for :func:`check_integer_only` to refuse."""
    chains = _leaves(ctx, ops, graph_output)
    island = {op.index for op in ops if op.outputs[0] in chains}
    quantizes = {
        op.index
        for op in ops
        if op.code == QUANTIZE and op.inputs[0] in chains and ctx.dtype(op.outputs[0]) == INT8
    }
    for op in ops:  # every reader of an island's float tensor must be in it
        if op.index in island or op.index in quantizes:
            continue
        if any(i in chains for i in op.inputs):
            return ops
    kept = []
    for op in ops:
        if op.index in quantizes:
            leaves = chains[op.inputs[0]]
            kept.append(RawOp(op.index, FLOAT_ADD, list(leaves), list(op.outputs), None))
        elif op.index not in island:
            kept.append(op)
    return kept
