"""Model-level pieces of a ``.tflite`` file, beside the graph: what phone users expect of it.

- :func:`inspect_tflite`: the I/O of ANY ``.tflite`` file (:class:`TFLiteIO`: shapes, types,
  quantization, layout), refusing in one line what no backend here runs (several subgraphs,
  dynamic shapes, uint8 legacy quantization).
- :func:`read_standard_metadata`: LiteRT's standard model metadata (the ``TFLITE_METADATA``
  buffer, ``metadata_schema.fbs``, and the ``labels.txt`` packed in the zip appended to the
  file): labels and input normalization.
- Writing (hooked into :mod:`mobilenets.micro.tflite`): :func:`standard_entries` (the
  ``TFLITE_METADATA`` and ``min_runtime_version`` buffers), :func:`add_signature` (the
  ``serving_default`` SignatureDef) and :func:`append_labels` (the zip with ``labels.txt``).

The ``TFLITE_METADATA`` flatbuffer is written with the ``flatbuffers`` builder following the
public schema (TensorFlow Lite Support's ``metadata_schema.fbs``, file identifier ``M001``),
as ``tflite-support`` does not install here; the slot numbers below are that schema's fields.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MobilenetsError

METADATA_NAME = "TFLITE_METADATA"
LABELS_FILE = "labels.txt"
SIGNATURE_KEY = "serving_default"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# metadata_schema.fbs: enum values and union type ids used here
IMAGE_PROPERTIES, NORMALIZATION_OPTIONS = 2, 1
RGB, GRAYSCALE = 1, 2
TENSOR_AXIS_LABELS = 2
# TFLite's runtime_version.cc: the first release that runs (builtin code, version)
MIN_RUNTIME = {
    (0, 1): "1.5.0", (0, 2): "1.14.0", (1, 1): "1.5.0", (1, 2): "1.14.0",
    (3, 1): "1.5.0", (3, 3): "1.14.0", (4, 1): "1.5.0", (4, 3): "1.14.0",
    (9, 1): "1.5.0", (9, 4): "1.14.0", (17, 1): "1.5.0", (17, 2): "1.14.0",
    (22, 1): "1.5.0", (34, 1): "1.5.0", (34, 2): "1.14.0", (40, 1): "1.6.0", (40, 2): "1.14.0",
    (6, 1): "1.6.0", (6, 2): "1.14.0", (6, 3): "1.15.0", (114, 1): "1.14.0", (114, 2): "1.14.0",
}  # fmt: skip
TYPE_NAMES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 9: "int8"}


@dataclass(frozen=True)
class TFLiteIO:
    """Input and output of subgraph 0: NHWC (or NCHW) image in, (1, classes) out."""

    shape: tuple[int, ...]  # the input's, batch first
    layout: str  # "NHWC" or "NCHW"
    in_dtype: str  # "int8" or "float32"
    in_scale: float
    in_zero_point: int
    out_dtype: str
    out_scale: float
    out_zero_point: int
    num_classes: int
    has_metadata: bool  # our own (mobilenets) metadata entries
    metadata_names: tuple[str, ...] = ()

    @property
    def in_chans(self) -> int:
        """Input channels."""
        return self.shape[1] if self.layout == "NCHW" else self.shape[3]

    @property
    def hw(self) -> tuple[int, int]:
        """Input (height, width)."""
        return tuple(self.shape[2:4]) if self.layout == "NCHW" else tuple(self.shape[1:3])

    def to_input(self, x: np.ndarray) -> np.ndarray:
        """Normalized float NCHW inputs -> what the file's input tensor takes."""
        x = np.asarray(x, np.float32)
        if self.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        if self.in_dtype == "float32":
            return np.ascontiguousarray(x)
        q = np.round(x.astype(np.float64) / np.float32(self.in_scale)) + self.in_zero_point
        lo, hi = (0, 255) if self.in_dtype == "uint8" else (-128, 127)
        return np.clip(q, lo, hi).astype(self.in_dtype)

    def from_output(self, y: np.ndarray) -> np.ndarray:
        """The file's outputs (N, K) -> float values (dequantized when int8 or uint8)."""
        if self.out_dtype == "float32":
            return np.asarray(y, np.float32)
        return (y.astype(np.float32) - self.out_zero_point) * np.float32(self.out_scale)

    def input_range(self) -> tuple[float, float] | None:
        """The real values an int8/uint8 input can hold (None for float inputs)."""
        if self.in_dtype == "float32":
            return None
        s, z = self.in_scale, self.in_zero_point
        lo, hi = (0, 255) if self.in_dtype == "uint8" else (-128, 127)
        return s * (lo - z), s * (hi - z)


def _model(raw: bytes, path: Any):
    import tflite

    if len(raw) < 8 or raw[4:8] != b"TFL3":
        raise MobilenetsError(f"{path}: not a .tflite file (no TFL3 identifier)")
    return tflite.Model.GetRootAsModel(raw, 0)


def _quant(t) -> tuple[float, int]:
    q = t.Quantization()
    if q is None or q.ScaleIsNone() or q.ScaleLength() == 0:
        return 0.0, 0
    return float(q.Scale(0)), int(q.ZeroPoint(0)) if q.ZeroPointLength() else 0


def _check_tensors(sub, path: Any) -> None:
    """One-line refusals: uint8 (legacy) quantization inside the graph (uint8 input/output
    around QUANTIZE ops is fine), dynamic shapes beyond the batch."""
    io = {int(sub.Inputs(0)), int(sub.Outputs(0))}
    for i in range(sub.TensorsLength()):
        t = sub.Tensors(i)
        name = t.Name().decode(errors="replace")
        if t.Type() == 3 and i not in io:
            raise MobilenetsError(
                f"{path}: tensor {name!r} is uint8: uint8 (legacy) quantization is not "
                "supported (convert with int8 quantization)"
            )
        sig = [] if t.ShapeSignatureIsNone() else list(t.ShapeSignatureAsNumpy())
        shape = [] if t.ShapeIsNone() else list(t.ShapeAsNumpy())
        if any(int(d) < 0 for d in sig[1:]) or any(int(d) < 0 for d in shape):
            raise MobilenetsError(
                f"{path}: tensor {name!r} has a dynamic shape {sig or shape}: dynamic shapes "
                "are not supported (convert with a fixed input size)"
            )


# TFLite's int8 SOFTMAX prepares the multiplier beta * input_scale * 2**26 as one > 1: at or below
# 2**-26 (1.49e-8) TFLite Micro and LiteRT abort (SIGABRT) in its Prepare
SOFTMAX_MIN_SCALE = 2.0**-26


def check_softmax_scale(path: str | Path, raw: bytes) -> None:
    """One line instead of a crash (called before LiteRT or TFLite Micro load a file): an int8 SOFTMAX whose input scale is degenerate (collapsed
    logits of an untrained model: 7.8e-9 in Keras's converter output) aborts the process in
    both TFLite Micro and LiteRT (measured; 1.2e-7 and realistic scales such as 0.0056 run)."""
    model = _model(raw, path)
    sub = model.Subgraphs(0)
    for i in range(sub.OperatorsLength()):
        op = sub.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) != 25:  # SOFTMAX
            continue
        t = sub.Tensors(op.Inputs(0))
        scale, _ = _quant(t)
        if t.Type() == 9 and 0 < scale <= SOFTMAX_MIN_SCALE:
            raise MobilenetsError(
                f"{path}: SOFTMAX input scale {scale:.3g} is degenerate (collapsed logits): "
                "TFLite Micro and LiteRT abort on it; convert a trained model"
            )


def inspect_tflite(path: str | Path, raw: bytes | None = None) -> TFLiteIO:
    """The I/O of any ``.tflite`` file; MobilenetsError in one line for what is not run here."""
    path = Path(path)
    raw = path.read_bytes() if raw is None else raw
    model = _model(raw, path)
    try:
        return _inspect(model, path)
    except MobilenetsError:
        raise
    except Exception as e:  # a damaged flatbuffer
        raise MobilenetsError(f"{path}: unreadable .tflite ({type(e).__name__}: {e})") from None


def _inspect(model, path: Path) -> TFLiteIO:
    n = model.SubgraphsLength()
    if n != 1:
        raise MobilenetsError(f"{path}: {n} subgraphs: only files with one subgraph are supported")
    sub = model.Subgraphs(0)
    if sub.InputsLength() != 1 or sub.OutputsLength() != 1:
        raise MobilenetsError(
            f"{path}: {sub.InputsLength()} inputs and {sub.OutputsLength()} outputs: "
            "a classifier with one image input and one output is expected"
        )
    _check_tensors(sub, path)
    ti, to = sub.Tensors(sub.Inputs(0)), sub.Tensors(sub.Outputs(0))
    shape = tuple(int(d) for d in ti.ShapeAsNumpy())
    for t, what in ((ti, "input"), (to, "output")):
        if t.Type() not in (0, 3, 9):
            got = TYPE_NAMES.get(t.Type(), str(t.Type()))
            raise MobilenetsError(
                f"{path}: the {what} is {got}: int8, uint8 or float32 is supported"
            )
    if len(shape) != 4 or shape[0] != 1:
        raise MobilenetsError(
            f"{path}: input shape {list(shape)}: a (1, H, W, C) image is expected"
        )
    layout = "NCHW" if shape[1] in (1, 3) and shape[3] not in (1, 3) else "NHWC"
    out_shape = [int(d) for d in to.ShapeAsNumpy()]
    (s_in, z_in), (s_out, z_out) = _quant(ti), _quant(to)
    names = tuple(
        model.Metadata(i).Name().decode(errors="replace") for i in range(model.MetadataLength())
    )
    return TFLiteIO(
        shape, layout, TYPE_NAMES[ti.Type()], s_in, z_in, TYPE_NAMES[to.Type()], s_out, z_out,
        int(np.prod(out_shape)), "mobilenets" in names, names,
    )  # fmt: skip


def has_mobilenets_metadata(raw: bytes) -> bool:
    """Whether the file has our ``mobilenets`` metadata entry (True when it is unreadable:
    :func:`mobilenets.micro.tflite.read_tflite` then says what is wrong)."""
    try:
        model = _model(raw, "")
        names = [model.Metadata(i).Name() for i in range(model.MetadataLength())]
    except Exception:
        return True
    return b"mobilenets" in names


# ---------------------------------------------------------------- standard metadata: reading


def _table(buf: bytes, pos: int):
    from flatbuffers.table import Table

    return Table(bytearray(buf), pos)


def _field(tab, slot: int) -> int:
    return tab.Offset(4 + 2 * slot)


def _string(tab, slot: int) -> str | None:
    o = _field(tab, slot)
    return tab.String(o + tab.Pos).decode(errors="replace") if o else None


def _tables(tab, slot: int) -> list[Any]:
    o = _field(tab, slot)
    if not o:
        return []
    start, n = tab.Vector(o), tab.VectorLen(o)
    return [_table(tab.Bytes, tab.Indirect(start + 4 * i)) for i in range(n)]


def _floats(tab, slot: int) -> list[float]:
    o = _field(tab, slot)
    if not o:
        return []
    start, n = tab.Vector(o), tab.VectorLen(o)
    return np.frombuffer(bytes(tab.Bytes[start : start + 4 * n]), "<f4").tolist()


def read_standard_metadata(path: str | Path, raw: bytes | None = None) -> dict[str, Any]:
    """``labels`` (list or None), ``mean``/``std`` (fractions of 255, or None) from LiteRT's
    standard metadata; ``{}`` when the file has none. MobilenetsError when it is damaged."""
    path = Path(path)
    raw = path.read_bytes() if raw is None else raw
    model = _model(raw, path)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode(errors="replace") == METADATA_NAME:
            data = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
            try:
                return _parse_model_metadata(data, raw)
            except Exception as e:
                raise MobilenetsError(
                    f"{path}: damaged {METADATA_NAME} ({type(e).__name__}: {e})"
                ) from None
    return {}


def _parse_model_metadata(data: bytes, raw: bytes) -> dict[str, Any]:
    from flatbuffers.number_types import Uint8Flags
    from flatbuffers.util import GetBufferIdentifier

    if bytes(GetBufferIdentifier(data, 0)) != b"M001":
        raise ValueError("no M001 identifier")
    root = _table(data, int.from_bytes(data[:4], "little"))
    out: dict[str, Any] = {"labels": None, "mean": None, "std": None}
    for sg in _tables(root, 3)[:1]:
        for tm in _tables(sg, 2)[:1]:  # input tensor: its NormalizationOptions
            for pu in _tables(tm, 4):
                o_type = _field(pu, 0)
                if o_type and pu.Get(Uint8Flags, o_type + pu.Pos) == NORMALIZATION_OPTIONS:
                    opts = _table(pu.Bytes, pu.Indirect(_field(pu, 1) + pu.Pos))
                    out["mean"] = [v / 255 for v in _floats(opts, 0)]
                    out["std"] = [v / 255 for v in _floats(opts, 1)]
        for tm in _tables(sg, 3)[:1]:  # output tensor: its TENSOR_AXIS_LABELS file
            for af in _tables(tm, 6):
                name = _string(af, 0)
                if name:
                    out["labels"] = _zip_labels(raw, name)
    return out


def _zip_labels(raw: bytes, name: str) -> list[str] | None:
    """The lines of ``name`` in the zip appended to the model (None when absent)."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            text = z.read(name).decode()
    except (zipfile.BadZipFile, KeyError):
        return None
    return [line for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------- standard metadata: writing


def _fb_string_vector(b, values: Sequence[int]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependUOffsetTRelative(v)
    return b.EndVector()


def _fb_floats(b, values: Sequence[float]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(float(v))
    return b.EndVector()


def _input_metadata(b, in_chans: int, mean: Sequence[float], std: Sequence[float]) -> int:
    """TensorMetadata of the image input: ImageProperties and NormalizationOptions (in pixel
    units, as the standard expects: ``(pixel - mean) / std``)."""
    mean_v = _fb_floats(b, [255 * m for m in mean])
    std_v = _fb_floats(b, [255 * s for s in std])
    b.StartObject(2)  # NormalizationOptions {mean, std}
    b.PrependUOffsetTRelativeSlot(0, mean_v, 0)
    b.PrependUOffsetTRelativeSlot(1, std_v, 0)
    norm = b.EndObject()
    b.StartObject(2)  # ProcessUnit {options_type, options}
    b.PrependUint8Slot(0, NORMALIZATION_OPTIONS, 0)
    b.PrependUOffsetTRelativeSlot(1, norm, 0)
    units = _fb_string_vector(b, [b.EndObject()])
    b.StartObject(2)  # ImageProperties {color_space, default_size}
    b.PrependInt8Slot(0, GRAYSCALE if in_chans == 1 else RGB, 0)
    props = b.EndObject()
    b.StartObject(3)  # Content {content_properties_type, content_properties, range}
    b.PrependUint8Slot(0, IMAGE_PROPERTIES, 0)
    b.PrependUOffsetTRelativeSlot(1, props, 0)
    content = b.EndObject()
    name = b.CreateString("image")
    b.StartObject(7)  # TensorMetadata
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(3, content, 0)
    b.PrependUOffsetTRelativeSlot(4, units, 0)
    return b.EndObject()


def _output_metadata(b) -> int:
    """TensorMetadata of the logits: the labels file (TENSOR_AXIS_LABELS)."""
    fname, fdesc = b.CreateString(LABELS_FILE), b.CreateString("class names, one per line")
    b.StartObject(5)  # AssociatedFile {name, description, type, locale, version}
    b.PrependUOffsetTRelativeSlot(0, fname, 0)
    b.PrependUOffsetTRelativeSlot(1, fdesc, 0)
    b.PrependInt8Slot(2, TENSOR_AXIS_LABELS, 0)
    files = _fb_string_vector(b, [b.EndObject()])
    name, desc = b.CreateString(OUTPUT_NAME), b.CreateString("class logits")
    b.StartObject(7)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(1, desc, 0)
    b.PrependUOffsetTRelativeSlot(6, files, 0)
    return b.EndObject()


def model_metadata(
    name: str, in_chans: int, mean: Sequence[float], std: Sequence[float], version: str
) -> bytes:
    """The ``TFLITE_METADATA`` flatbuffer (``ModelMetadata``, identifier ``M001``)."""
    import flatbuffers

    b = flatbuffers.Builder(1024)
    inputs = _fb_string_vector(b, [_input_metadata(b, in_chans, mean, std)])
    outputs = _fb_string_vector(b, [_output_metadata(b)])
    b.StartObject(10)  # SubGraphMetadata
    b.PrependUOffsetTRelativeSlot(2, inputs, 0)
    b.PrependUOffsetTRelativeSlot(3, outputs, 0)
    subgraphs = _fb_string_vector(b, [b.EndObject()])
    strings = [b.CreateString(s) for s in (name, "image classifier", version, "1.0.0")]
    b.StartObject(8)  # ModelMetadata
    b.PrependUOffsetTRelativeSlot(0, strings[0], 0)
    b.PrependUOffsetTRelativeSlot(1, strings[1], 0)
    b.PrependUOffsetTRelativeSlot(2, strings[2], 0)
    b.PrependUOffsetTRelativeSlot(3, subgraphs, 0)
    b.PrependUOffsetTRelativeSlot(7, strings[3], 0)
    b.Finish(b.EndObject(), file_identifier=b"M001")
    return bytes(b.Output())


def min_runtime_version(ops: Sequence[tuple[int, int]]) -> str:
    """The first TFLite release that runs every (builtin code, version) in ``ops``."""
    found = [MIN_RUNTIME.get(op, "1.14.0") for op in ops] or ["1.5.0"]
    return max(found, key=lambda v: tuple(int(p) for p in v.split(".")))


def standard_entries(graph: Any, opcodes: Sequence[tuple[int, int]]) -> dict[str, bytes]:
    """``TFLITE_METADATA`` and ``min_runtime_version`` (16 bytes, NUL-padded, as TensorFlow's
    converter writes it) for a graph with ``preprocess`` and the written (code, version)s."""
    from .._version import __version__

    prep = graph.preprocess or {}
    in_chans = graph.input_tensor.shape[3]
    mean = prep.get("mean") or [0.0] * in_chans
    std = prep.get("std") or [1.0] * in_chans
    name = f"mobilenets {graph.config.get('name', '')}".strip()
    return {
        METADATA_NAME: model_metadata(name, in_chans, mean, std, __version__),
        "min_runtime_version": min_runtime_version(opcodes).encode().ljust(16, b"\0"),
    }


def add_signature(w: Any) -> int:
    """The ``serving_default`` SignatureDef vector of a :class:`tflite._Writer` (one input
    ``input``, one output ``logits``), built before the Model table starts."""
    t, b = w.tfl, w.b
    maps = []
    for name, index in ((INPUT_NAME, w.graph.input), (OUTPUT_NAME, w.graph.output)):
        s = b.CreateString(name)
        t.TensorMapStart(b)
        t.TensorMapAddName(b, s)
        t.TensorMapAddTensorIndex(b, index)
        maps.append(t.TensorMapEnd(b))
    ins, outs = (w._vector(t.SignatureDefStartInputsVector, [maps[0]]),
                 w._vector(t.SignatureDefStartOutputsVector, [maps[1]]))  # fmt: skip
    key = b.CreateString(SIGNATURE_KEY)
    t.SignatureDefStart(b)
    t.SignatureDefAddInputs(b, ins)
    t.SignatureDefAddOutputs(b, outs)
    t.SignatureDefAddSignatureKey(b, key)
    t.SignatureDefAddSubgraphIndex(b, 0)
    return w._vector(t.ModelStartSignatureDefsVector, [t.SignatureDefEnd(b)])


def append_labels(payload: bytes, class_names: Sequence[str]) -> bytes:
    """``payload`` with a zip holding ``labels.txt`` appended (how LiteRT's metadata tools
    pack associated files; interpreters ignore the bytes after the flatbuffer)."""
    buf = io.BytesIO(payload)
    with zipfile.ZipFile(buf, "a", zipfile.ZIP_STORED) as z:
        z.writestr(LABELS_FILE, "".join(f"{c}\n" for c in class_names))
    return buf.getvalue()


# ---------------------------------------------------------------- I/O wrappers

IO_CHOICES = ("int8", "uint8", "float")
UINT8_NAMES = ("input_uint8", "logits_uint8")  # the writer gives these tensors type UINT8


def with_uint8_io(graph: Any) -> Any:
    """``graph`` (int8) with a uint8 input and output, each QUANTIZE (a requantization: the
    same scale, zero point + 128) at the boundary: what camera pipelines hand over."""
    import dataclasses

    from .graph import Op, Tensor

    if graph.is_float:
        raise MobilenetsError("uint8 I/O wraps an int8 graph (export with --int8)")
    t_in, t_out = graph.input_tensor, graph.output_tensor
    tensors = list(graph.tensors)
    tensors.append(Tensor(UINT8_NAMES[0], t_in.shape, t_in.scale, t_in.zero_point + 128))
    tensors.append(Tensor(UINT8_NAMES[1], t_out.shape, t_out.scale, t_out.zero_point + 128))
    i_in, i_out = len(tensors) - 2, len(tensors) - 1
    ops = [
        Op("quantize", (i_in,), graph.input, name="input_requantize"),
        *graph.ops,
        Op("quantize", (graph.output,), i_out, name="logits_requantize"),
    ]
    return dataclasses.replace(graph, tensors=tensors, ops=ops, input=i_in, output=i_out)


def with_float_io(graph: Any) -> Any:
    """``graph`` (int8) with a float32 input QUANTIZEd into it and its int8 output DEQUANTIZEd:
    what phone apps feed (normalized floats) and read (float logits). The int8 graph inside is
    unchanged (:meth:`QuantizedModel.int8_core` gives it back)."""
    import dataclasses

    from .graph import Op, Tensor

    if graph.is_float or graph.input_tensor.scale == 0.0:
        raise MobilenetsError("float I/O wraps an int8 graph (export with --int8)")
    tensors = list(graph.tensors)
    tensors.append(Tensor("input_float", graph.input_tensor.shape, 0.0, 0))
    tensors.append(Tensor("logits_float", graph.output_tensor.shape, 0.0, 0))
    i_in, i_out = len(tensors) - 2, len(tensors) - 1
    ops = [
        Op("quantize", (i_in,), graph.input, name="input_quantize"),
        *graph.ops,
        Op("dequantize", (graph.output,), i_out, name="logits_dequantize"),
    ]
    return dataclasses.replace(graph, tensors=tensors, ops=ops, input=i_in, output=i_out)


def quantize_like_tflite(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """TFLite's QUANTIZE float32 -> int8 (float32 division, half away from zero, clamped)."""
    from .arith import quantize_f32

    return quantize_f32(x, scale, zero_point)


def dequantize_like_tflite(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """TFLite's DEQUANTIZE int8 -> float32 (the scale in double)."""
    return (float(np.float32(scale)) * (q.astype(np.int64) - zero_point)).astype(np.float32)


# ---------------------------------------------------------------- fp16 weights

FLOAT16, FLOAT32_TYPE, UINT8 = 1, 0, 3


def is_fp16_weight(dtype: int, data: np.ndarray | None) -> bool:
    """A float32 constant of 2 or more dimensions (a conv/FC weight; biases stay float32)."""
    return dtype == FLOAT32_TYPE and data is not None and np.ndim(data) >= 2


def fp16_weight(w: Any, name: str, shape: Sequence[int], data: np.ndarray) -> int:
    """A weight stored as FLOAT16 and DEQUANTIZEd to float32 before the op that reads it (how
    TensorFlow's converter writes fp16 files): the float32 tensor's index."""
    half = w.tensor(f"{name}.fp16", shape, FLOAT16, np.asarray(data, "<f2"))
    full = w.tensor(name, shape, FLOAT32_TYPE)
    w.operator("dequantize", [half], [full], 0, None)
    return full
