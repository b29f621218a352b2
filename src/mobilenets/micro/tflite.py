"""Write and read ``.tflite`` flatbuffers directly from :class:`QuantizedModel` graphs.

The writer is a plain translation with the ``flatbuffers`` runtime and the ``tflite`` schema
package (its generated builder functions): no TensorFlow. Tensors are NHWC with batch 1.
The file's metadata holds the mobilenets entries (``mobilenets``, ``config``, ``class_names``,
``preprocess``, ``quantization``) as UTF-8 JSON buffers, so :func:`read_tflite` can rebuild the
graph and everything ``predict``/``eval`` need.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import ArtifactMeta
from ..atomic import write_bytes
from ..errors import MobilenetsError
from . import tflite_model, tflite_ops
from .float_islands import fold_islands
from .fold_constants import FOLDED_NAMES, RawOp, check_integer_only, fold
from .graph import Op, QuantizedModel, Tensor
from .ops import BY_CODE, TFLITE_NAMES, spec, supported_tflite_ops
from .validate import check_model

FORMAT_VERSION = 1
SCHEMA_VERSION = 3
# op codes, versions, writers and readers: the registry (.ops)
ACTIVATIONS, PADDING = tflite_ops.ACTIVATIONS, tflite_ops.PADDING
FLOAT32, INT32, INT8 = tflite_ops.FLOAT32, tflite_ops.INT32, tflite_ops.INT8


def _tfl():
    try:
        import flatbuffers
        import tflite
    except ImportError as e:  # core dependencies, but be clear if they are missing
        raise MobilenetsError(f"writing .tflite needs the {e.name!r} package") from None
    return flatbuffers, tflite


class _Writer:
    """Accumulates buffers, tensors and operators, then finishes the Model table."""

    def __init__(self, graph: QuantizedModel) -> None:
        flatbuffers, self.tfl = _tfl()
        self.b = flatbuffers.Builder(1 << 20)
        self.graph = graph
        self.buffers: list[bytes] = [b""]  # buffer 0: empty, by convention
        self.tensors: list[int] = []  # offsets
        self.opcodes: list[str] = []
        self.ops: list[int] = []
        self.fp16 = False  # fp32 weights stored as FLOAT16 + DEQUANTIZE (tflite_model.fp16_weight)
        self.uint8_io = False  # tflite_model.UINT8_NAMES tensors are written as UINT8

    # -- vectors
    def ints(self, start, values) -> int:
        start(self.b, len(values))
        for v in reversed(values):
            self.b.PrependInt32(int(v))
        return self.b.EndVector()

    def data(self, payload: bytes) -> int:
        self.b.StartVector(1, len(payload), 16)  # 16-byte aligned tensor data
        self.b.head -= len(payload)
        self.b.Bytes[self.b.head : self.b.head + len(payload)] = payload
        return self.b.EndVector()

    def quant(self, scales, zero_points, dim: int = 0) -> int:
        t = self.tfl
        t.QuantizationParametersStartScaleVector(self.b, len(scales))
        for s in reversed(scales):
            self.b.PrependFloat32(float(s))
        sv = self.b.EndVector()
        t.QuantizationParametersStartZeroPointVector(self.b, len(zero_points))
        for z in reversed(zero_points):
            self.b.PrependInt64(int(z))
        zv = self.b.EndVector()
        t.QuantizationParametersStart(self.b)
        t.QuantizationParametersAddScale(self.b, sv)
        t.QuantizationParametersAddZeroPoint(self.b, zv)
        t.QuantizationParametersAddQuantizedDimension(self.b, dim)
        return t.QuantizationParametersEnd(self.b)

    def tensor(self, name, shape, dtype, data: np.ndarray | None = None, q=None) -> int:
        """Add a tensor (with constant ``data``, and quantization (scales, zero_points, dim))."""
        if self.fp16 and tflite_model.is_fp16_weight(dtype, data):
            return tflite_model.fp16_weight(self, name, shape, data)
        if self.uint8_io and name in tflite_model.UINT8_NAMES:
            dtype = tflite_model.UINT8
        t = self.tfl
        buf = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data).tobytes())
            buf = len(self.buffers) - 1
        name_off = self.b.CreateString(name)
        shape_off = self.ints(t.TensorStartShapeVector, shape)
        q_off = self.quant(*q) if q is not None else None
        t.TensorStart(self.b)
        t.TensorAddShape(self.b, shape_off)
        t.TensorAddType(self.b, dtype)
        t.TensorAddBuffer(self.b, buf)
        t.TensorAddName(self.b, name_off)
        if q_off is not None:
            t.TensorAddQuantization(self.b, q_off)
        self.tensors.append(t.TensorEnd(self.b))
        return len(self.tensors) - 1

    def operator(self, kind: str, inputs, outputs, options_type: int, options: int | None):
        t = self.tfl
        if kind not in self.opcodes:
            self.opcodes.append(kind)
        ins = self.ints(t.OperatorStartInputsVector, inputs)
        outs = self.ints(t.OperatorStartOutputsVector, outputs)
        t.OperatorStart(self.b)
        t.OperatorAddOpcodeIndex(self.b, self.opcodes.index(kind))
        t.OperatorAddInputs(self.b, ins)
        t.OperatorAddOutputs(self.b, outs)
        if options is not None:
            t.OperatorAddBuiltinOptionsType(self.b, options_type)
            t.OperatorAddBuiltinOptions(self.b, options)
        self.ops.append(t.OperatorEnd(self.b))

    def finish(self, metadata: dict[str, str | bytes], description: str) -> bytes:
        t, b = self.tfl, self.b
        tensors = self._vector(t.SubGraphStartTensorsVector, self.tensors)
        inputs = self.ints(t.SubGraphStartInputsVector, [self.graph.input])
        outputs = self.ints(t.SubGraphStartOutputsVector, [self.graph.output])
        ops = self._vector(t.SubGraphStartOperatorsVector, self.ops)
        name = b.CreateString("main")
        t.SubGraphStart(b)
        t.SubGraphAddTensors(b, tensors)
        t.SubGraphAddInputs(b, inputs)
        t.SubGraphAddOutputs(b, outputs)
        t.SubGraphAddOperators(b, ops)
        t.SubGraphAddName(b, name)
        subgraphs = self._vector(t.ModelStartSubgraphsVector, [t.SubGraphEnd(b)])
        meta_offsets = []
        for key, value in metadata.items():
            self.buffers.append(value if isinstance(value, bytes) else value.encode())
            key_off = b.CreateString(key)
            t.MetadataStart(b)
            t.MetadataAddName(b, key_off)
            t.MetadataAddBuffer(b, len(self.buffers) - 1)
            meta_offsets.append(t.MetadataEnd(b))
        buffer_offsets = []
        for payload in self.buffers:
            data = self.data(payload) if payload else None
            t.BufferStart(b)
            if data is not None:
                t.BufferAddData(b, data)
            buffer_offsets.append(t.BufferEnd(b))
        buffers = self._vector(t.ModelStartBuffersVector, buffer_offsets)
        codes = [self._opcode(k) for k in self.opcodes]
        codes_vec = self._vector(t.ModelStartOperatorCodesVector, codes)
        meta_vec = self._vector(t.ModelStartMetadataVector, meta_offsets)
        signatures = tflite_model.add_signature(self)
        desc = b.CreateString(description)
        t.ModelStart(b)
        t.ModelAddVersion(b, SCHEMA_VERSION)
        t.ModelAddOperatorCodes(b, codes_vec)
        t.ModelAddSubgraphs(b, subgraphs)
        t.ModelAddDescription(b, desc)
        t.ModelAddBuffers(b, buffers)
        t.ModelAddMetadata(b, meta_vec)
        t.ModelAddSignatureDefs(b, signatures)
        b.Finish(t.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    def _vector(self, start, offsets) -> int:
        start(self.b, len(offsets))
        for off in reversed(offsets):
            self.b.PrependUOffsetTRelative(off)
        return self.b.EndVector()

    def written_opcodes(self) -> list[tuple[int, int]]:
        """(builtin code, version) of each operator code written (for min_runtime_version)."""
        pick = 0 if self.graph.is_float else 1
        return [(spec(k).code, spec(k).versions[pick]) for k in self.opcodes]

    def _opcode(self, kind: str) -> int:
        t = self.tfl
        entry = spec(kind)
        code, (v_float, v_int8) = entry.code, entry.versions
        t.OperatorCodeStart(self.b)
        t.OperatorCodeAddDeprecatedBuiltinCode(self.b, min(code, 127))
        t.OperatorCodeAddBuiltinCode(self.b, code)
        t.OperatorCodeAddVersion(self.b, v_float if self.graph.is_float else v_int8)
        return t.OperatorCodeEnd(self.b)


# ---------------------------------------------------------------- writer


def _act_q(t: Tensor):
    return None if t.scale == 0.0 else ([t.scale], [t.zero_point], 0)


def _emit(w: _Writer, op: Op) -> None:
    spec(op.kind).write(w, op)


def tflite_bytes(graph: QuantizedModel, metadata: dict[str, Any] | None = None) -> bytes:
    """The ``.tflite`` flatbuffer of ``graph`` (int8, or fp32 when ``graph.is_float``).

    ``metadata``: extra JSON-serialisable entries; ``config``, ``class_names`` and
    ``preprocess`` default to the graph's own fields.
    """
    w = _Writer(graph)
    w.fp16 = (metadata or {}).get("weights") == "fp16"
    w.uint8_io = (metadata or {}).get("io") == "uint8"
    for t in graph.tensors:  # activation tensors keep their graph indices
        w.tensor(t.name, t.shape, FLOAT32 if t.scale == 0.0 else INT8, None, _act_q(t))
    for op in graph.ops:
        _emit(w, op)
    meta = {
        "mobilenets": {"format_version": FORMAT_VERSION},
        "config": graph.config,
        "class_names": graph.class_names,
        "preprocess": graph.preprocess,
        **(metadata or {}),
    }
    encoded: dict[str, str | bytes] = {k: json.dumps(v, sort_keys=True) for k, v in meta.items()}
    encoded.update(tflite_model.standard_entries(graph, w.written_opcodes()))
    kind = "fp32" if graph.is_float else "int8"
    payload = w.finish(encoded, f"mobilenets {graph.config.get('name', '')} {kind}")
    return tflite_model.append_labels(payload, graph.class_names or [])


def write_tflite(
    graph: QuantizedModel, path: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``graph`` as a ``.tflite`` file, atomically (temporary sibling + ``os.replace``)."""
    path = Path(path)
    payload = tflite_bytes(graph, metadata)
    return write_bytes(path, payload)


# ---------------------------------------------------------------- reader


def _np(table, name: str, dtype) -> np.ndarray:
    if getattr(table, f"{name}IsNone")():
        return np.zeros(0, dtype)
    return np.asarray(getattr(table, f"{name}AsNumpy")(), dtype)


def _metadata(model, path) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        raw = _np(model.Buffers(entry.Buffer()), "Data", np.uint8).tobytes()
        try:
            meta[entry.Name().decode()] = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue  # someone else's metadata (e.g. min_runtime_version)
    if "mobilenets" not in meta or "config" not in meta:
        raise MobilenetsError(f"{path}: not a mobilenets .tflite (no mobilenets metadata)")
    if meta.get("preprocess") == {}:  # what the writer stores for a graph without one
        meta["preprocess"] = None
    art = ArtifactMeta.parse(meta, str(path))  # the checks of checkpoints and ONNX files
    io = _io_shapes(model)
    if io is not None:
        (_, h, w, c), (*_, outputs) = io
        art.check_io(c, (h, w), outputs, str(path))
    return {**meta, **art.to_fields(), "artifact": art}


def _io_shapes(model) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(input shape, output shape) of subgraph 0 when they are readable NHWC / (N, K) shapes;
    None otherwise (the graph reader then names what is wrong)."""
    if model.SubgraphsLength() < 1:
        return None
    sub = model.Subgraphs(0)
    n = sub.TensorsLength()
    if sub.InputsLength() < 1 or sub.OutputsLength() < 1:
        return None
    i, o = int(sub.Inputs(0)), int(sub.Outputs(0))
    if not (0 <= i < n and 0 <= o < n):
        return None
    shapes = tuple(tuple(int(v) for v in _np(sub.Tensors(t), "Shape", np.int64)) for t in (i, o))
    if len(shapes[0]) != 4 or len(shapes[1]) < 1:
        return None
    return shapes


def _const(model, sub, i: int) -> np.ndarray:
    tensor = sub.Tensors(i)
    dtype = {FLOAT32: "<f4", INT32: "<i4", INT8: "i1"}[tensor.Type()]
    raw = _np(model.Buffers(tensor.Buffer()), "Data", np.uint8).tobytes()
    return np.frombuffer(raw, dtype).reshape(tuple(_np(tensor, "Shape", np.int64)))


class _ReadCtx:
    """What a per-op reader (:mod:`.tflite_ops`) needs: constants, shapes, options tables."""

    def __init__(self, model, sub, path) -> None:
        self.model, self.sub, self.path, self.tfl = model, sub, path, _tfl()[1]
        self.op_t = None
        self.folded = {}

    folded: dict[int, np.ndarray]

    def const(self, i: int) -> np.ndarray:
        """A constant tensor's values (or those :mod:`.fold_constants` computed at load)."""
        if i in self.folded:
            return self.folded[i]
        if not 0 <= i < self.sub.TensorsLength() or self.sub.Tensors(i).Buffer() == 0:
            raise MobilenetsError(f"{self.path}: tensor {i} is not a constant")
        return _const(self.model, self.sub, i)

    def is_const(self, i: int) -> bool:
        """Whether tensor ``i`` holds data in the file (or was folded at load)."""
        if i in self.folded:
            return True
        if not 0 <= i < self.sub.TensorsLength():
            return False  # the graph check names the bad index
        buf = self.sub.Tensors(i).Buffer()
        return buf > 0 and self.model.Buffers(buf).DataLength() > 0

    def dtype(self, i: int) -> int:
        """Tensor ``i``'s TFLite type (-1 for an index outside the table: checked later)."""
        if not 0 <= i < self.sub.TensorsLength():
            return -1
        return int(self.sub.Tensors(i).Type())

    def options_of(self, op_t, cls):
        """The options table ``cls`` of operator ``op_t``."""
        self.op_t = op_t
        return self.options(cls)

    def shape(self, i: int) -> tuple[int, ...]:
        return tuple(int(v) for v in _np(self.sub.Tensors(i), "Shape", np.int64))

    def options(self, cls):
        o = cls()
        table = self.op_t.BuiltinOptions()
        if table is None:
            raise MobilenetsError(f"{self.path}: an operator has no options table")
        o.Init(table.Bytes, table.Pos)
        return o


def _read_op(ctx: _ReadCtx, raw: RawOp) -> Op:
    """One operator: its registry entry reads the options and constants onto the op."""
    if raw.code not in BY_CODE:
        raise MobilenetsError(
            f"{ctx.path}: op {raw.index} is {_op_name(raw.code)}, not supported "
            f"(supported: {supported_tflite_ops()})"
        )
    entry = BY_CODE[raw.code]
    op = Op(entry.kind, (raw.inputs[0],), raw.outputs[0])
    ctx.op_t = raw.table
    entry.read(ctx, raw.inputs, op)
    return op


def _op_name(code: int) -> str:
    return TFLITE_NAMES.get(code) or FOLDED_NAMES.get(code) or _builtin_name(code)


def _builtin_name(code: int) -> str:
    names = {v: k for k, v in vars(_tfl()[1].BuiltinOperator).items() if not k.startswith("_")}
    return names.get(code, f"builtin code {code}")


def _parse(model, path, allow_float: bool = False) -> QuantizedModel:
    """Subgraph 0 of a parsed flatbuffer as a graph (no metadata, not yet checked); a float
    graph only with ``allow_float`` (the fp32 files we write), else integer-only ops."""
    if model.SubgraphsLength() != 1:
        n = model.SubgraphsLength()
        raise MobilenetsError(f"{path}: {n} subgraphs: only files with one subgraph are supported")
    sub = model.Subgraphs(0)
    tflite_model._check_tensors(sub, path)  # uint8 (legacy) quantization, dynamic shapes
    codes = [
        max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
        for i in range(model.OperatorCodesLength())
    ]
    tensors = []
    for i in range(sub.TensorsLength()):
        t = sub.Tensors(i)
        q = t.Quantization()
        scale = zp = 0
        if q is not None and not q.ScaleIsNone():
            scale, zp = float(_np(q, "Scale", np.float32)[0]), int(q.ZeroPoint(0))
        tensors.append(Tensor(t.Name().decode(), tuple(_np(t, "Shape", np.int64)), scale, zp))
    ctx = _ReadCtx(model, sub, path)
    raw_ops = [_raw_op(sub.Operators(i), codes, i) for i in range(sub.OperatorsLength())]
    raw_ops, graph_input = fold(ctx, raw_ops, int(sub.Inputs(0)))
    if not (allow_float and all(t.scale == 0.0 for t in tensors)):  # our fp32 files
        raw_ops = fold_islands(ctx, raw_ops, int(sub.Outputs(0)))
        check_integer_only(ctx, raw_ops, _op_name)
    ops = [_read_op(ctx, raw) for raw in raw_ops]
    return QuantizedModel(tensors, ops, graph_input, int(sub.Outputs(0)))


def _raw_op(op_t, codes: list[int], index: int) -> RawOp:
    ins = [int(i) for i in _np(op_t, "Inputs", np.int64)]
    outs = [int(i) for i in _np(op_t, "Outputs", np.int64)]
    return RawOp(index, codes[op_t.OpcodeIndex()], ins, outs, op_t)


def _load(path: Path, with_meta: bool) -> tuple[QuantizedModel, dict[str, Any]]:
    from .quantizer import activation_range

    raw = path.read_bytes()
    if len(raw) < 8 or raw[4:8] != b"TFL3":
        raise MobilenetsError(f"{path}: not a .tflite file (no TFL3 identifier)")
    try:
        model = _tfl()[1].Model.GetRootAsModel(raw, 0)
        ours = with_meta and tflite_model.has_mobilenets_metadata(raw)
        meta = _metadata(model, path) if ours else {}
        graph = _parse(model, path, allow_float=ours)
    except MobilenetsError:
        raise
    except Exception as e:  # a damaged flatbuffer
        raise MobilenetsError(f"{path}: unreadable .tflite ({type(e).__name__}: {e})") from None
    graph.config = meta.get("config") or {}
    graph.class_names, graph.preprocess = meta.get("class_names"), meta.get("preprocess") or {}
    check_model(graph, str(path))  # indices, topological order, shapes, quantization, names
    if not graph.is_float:
        for op in graph.ops:
            t_out = graph.tensors[op.output]
            op.act_min, op.act_max = activation_range(op.activation, t_out.scale, t_out.zero_point)
    return graph, meta


def read_graph(path: str | Path) -> QuantizedModel:
    """The op graph of a ``.tflite`` file, its metadata ignored (ops the registry supports;
    MobilenetsError in one line naming the file and the first other op)."""
    return _load(Path(path), with_meta=False)[0]


def read_tflite(path: str | Path) -> tuple[QuantizedModel, dict[str, Any]]:
    """Rebuild the graph and the metadata of a ``.tflite`` written by :func:`write_tflite`.

    Another converter's file (no mobilenets metadata) gives its graph (:func:`read_graph`) and
    empty metadata. Raises MobilenetsError naming the file for an unsupported op or file.
    """
    return _load(Path(path), with_meta=True)
