"""The op registry: one :class:`OpSpec` per int8 op, read by every part of ``micro``.

An op's graph kind, TFLite builtin code and versions, ``.tflite`` writer and reader
(:mod:`.tflite_ops`), NumPy reference kernel (:mod:`.kernels`), quantization rule
(:mod:`.quantizer`), planner stage and row rule (:mod:`.planner`) and C kernel id (the generated
``mn_engine.h`` enum, :mod:`.codegen`) live here and nowhere else. Adding an op is one entry
here plus its kernel, codec and C kernel.

Constants shared by Python and the generated C (:data:`C_CONSTANTS`) are written into
``mn_engine.h`` and ``model.h`` by the generator, never kept in sync by comments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import kernels, tflite_ops
from .float_islands import FLOAT_ADD

# planner stage kinds, in C kernel id order (the ``MN_*`` enum of the generated mn_engine.h)
STAGE_KINDS = (
    *("conv", "dw", "add", "pool", "fc", "mul", "hswish", "logistic", "softmax", "pool2d", "pad"),
    "const",  # ADD or MUL by a constant operand (the planner picks it: :func:`.planner._stage`)
    "fadd",  # a float island's ADD chain (:mod:`.float_islands`), TFLite Micro's float32 math
)
MAX_KERNEL = 7  # the largest conv/pool window the C engine takes (its row-pointer array)
PATCH_MAX = 64  # the longest im2col patch (kh * kw * cin) the C engine gathers
FIXED_QUANT = (1.0 / 256.0, -128)  # (scale, zero point) of a ``fixed`` int8 output
C_CONSTANTS = {"MAX_KERNEL": MAX_KERNEL, "PATCH_MAX": PATCH_MAX}


@dataclass(frozen=True)
class OpSpec:
    """Everything about one op.

    - ``kind``: the graph kind (:class:`.graph.Op`); ``code``/``versions``: the TFLite builtin
      operator and the op version written for fp32 and int8 graphs.
    - ``write``/``read``: the ``.tflite`` codec; ``kernel``: the NumPy reference.
    - ``quant``: the output's quantization: ``calibrated`` (its own range) or ``input`` (the
      input's scale and zero point, as TFLite's kernels for it do not rescale) or ``fixed``
      (:data:`FIXED_QUANT`: LOGISTIC and SOFTMAX outputs are Q0.8 probabilities).
    - ``stage``: the planner/C stage kind (:data:`STAGE_KINDS`), ``fold`` (merged into the
      convolution it feeds), ``alias`` (no code: the output is the input's bytes) or
      ``boundary`` (float32 <-> int8 at the model's input or output, left to the caller: the
      C API takes and returns int8).
    - ``n_inputs``: activation inputs (0: any number, ``float_add``'s int8 leaves).
    - ``code`` -1 (``float_add``): no TFLite builtin; made at load from a float island
      (:mod:`.float_islands`) and written back as DEQUANTIZE -> float ADD -> QUANTIZE.
    - ``rows``: the planner's row rule: ``window`` (a kernel's rows around ``r * stride``),
      ``same`` (row ``r`` of every input, row 0 of a one-row broadcast input; MEAN
      accumulates its input row by row), ``shift`` (row ``r - top``: PAD) or ``all`` (every
      input row: the fully connected layer). The planner runs a
      global AVERAGE_POOL_2D as ``pool`` and a PAD it cannot fold as ``pad``.
    """

    kind: str
    code: int
    versions: tuple[int, int]
    write: Callable[[Any, Any], None]
    read: Callable[[Any, list[int], Any], None]
    kernel: Callable[..., Any]
    quant: str = "calibrated"
    stage: str = "alias"
    rows: str = "same"
    n_inputs: int = 1

    @property
    def c_kind(self) -> int:
        """The C kernel id (``MN_CONV``...), -1 for folded or aliased ops."""
        return STAGE_KINDS.index(self.stage) if self.stage in STAGE_KINDS else -1


_T = tflite_ops
_K = kernels
OPS: dict[str, OpSpec] = {
    s.kind: s
    for s in (
        OpSpec("conv2d", 3, (1, 3), _T.write_conv, _T.read_conv, _K.conv2d, stage="conv",
               rows="window"),
        OpSpec("depthwise_conv2d", 4, (1, 3), _T.write_conv, _T.read_conv, _K.depthwise_conv2d,
               stage="dw", rows="window"),
        OpSpec("fully_connected", 9, (1, 4), _T.write_fully_connected, _T.read_conv,
               _K.fully_connected, stage="fc", rows="all"),
        OpSpec("add", 0, (1, 2), _T.write_add, _T.read_binary, _K.add, stage="add", n_inputs=2),
        OpSpec("mul", 18, (1, 2), _T.write_mul, _T.read_binary, _K.mul, stage="mul", n_inputs=2),
        OpSpec("avg_pool2d", 1, (1, 2), _T.write_pool, _T.read_pool, _K.avg_pool2d,
               quant="input", stage="pool2d", rows="window"),
        OpSpec("mean", 40, (1, 2), _T.write_mean, _T.read_mean, _K.mean, stage="pool"),
        OpSpec("max_pool2d", 17, (1, 2), _T.write_pool, _T.read_pool, _K.max_pool2d,
               quant="input", stage="pool2d", rows="window"),
        OpSpec("hard_swish", 117, (1, 1), _T.write_plain, _T.read_none, _K.hard_swish,
               stage="hswish"),
        OpSpec("logistic", 14, (1, 2), _T.write_plain, _T.read_none, _K.logistic,
               quant="fixed", stage="logistic"),
        OpSpec("softmax", 25, (1, 2), _T.write_softmax, _T.read_softmax, _K.softmax,
               quant="fixed", stage="softmax"),
        OpSpec("pad", 34, (1, 2), _T.write_pad, _T.read_pad, _K.pad, quant="input",
               stage="fold", rows="shift"),
        OpSpec("padv2", 60, (1, 2), _T.write_padv2, _T.read_padv2, _K.pad, quant="input",
               stage="pad", rows="shift"),
        OpSpec("squeeze", 43, (1, 1), _T.write_squeeze, _T.read_none, _K.reshape,
               quant="input", stage="alias"),
        OpSpec("quantize", 114, (1, 1), _T.write_plain, _T.read_none, _K.quantize,
               stage="boundary"),
        OpSpec("dequantize", 6, (1, 2), _T.write_plain, _T.read_none, _K.dequantize,
               stage="boundary"),
        OpSpec("reshape", 22, (1, 1), _T.write_reshape, _T.read_reshape, _K.reshape,
               quant="input", stage="alias"),
        OpSpec("float_add", FLOAT_ADD, (1, 1), _T.write_float_add, _T.read_float_add,
               _K.float_add, stage="fadd", n_inputs=0),
    )
}  # fmt: skip
OP_KINDS = tuple(OPS)
BY_CODE = {s.code: s for s in OPS.values()}  # FLOAT_ADD: the island op made at load
TFLITE_NAMES = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE",
    9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL", 22: "RESHAPE",
    25: "SOFTMAX", 34: "PAD", 40: "MEAN", 43: "SQUEEZE", 60: "PADV2", 114: "QUANTIZE",
    117: "HARD_SWISH",
}  # fmt: skip


def spec(kind: str) -> OpSpec:
    """The registry entry of graph kind ``kind`` (ValueError naming the supported kinds)."""
    if kind not in OPS:
        raise ValueError(f"unknown op kind {kind!r}; one of {', '.join(OP_KINDS)}")
    return OPS[kind]


def supported_tflite_ops() -> str:
    """The TFLite builtin ops a file may use, comma-separated (for one-line refusals)."""
    codes = {s.code for s in OPS.values() if s.code >= 0}
    return ", ".join(sorted(TFLITE_NAMES.get(c, f"builtin {c}") for c in codes))


def c_enum() -> str:
    """The C enum of kernel ids and the shared constants, for the generated headers."""
    ids = ", ".join(f"MN_{k.upper()} = {i}" for i, k in enumerate(STAGE_KINDS))
    consts = "\n".join(f"#define MN_{k} {v}" for k, v in C_CONSTANTS.items())
    return f"enum {{ {ids} }};\n{consts}"
