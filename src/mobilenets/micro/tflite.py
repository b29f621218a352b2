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
from .graph import Op, QuantizedModel, Tensor
from .validate import check_model

FORMAT_VERSION = 1
SCHEMA_VERSION = 3
# TFLite builtin operator codes and the op versions written (int8 versions: per-channel conv).
OPCODES = {
    "add": (0, 1, 2),  # code, fp32 version, int8 version
    "avg_pool2d": (1, 1, 2),
    "conv2d": (3, 1, 3),
    "depthwise_conv2d": (4, 1, 3),
    "fully_connected": (9, 1, 4),
    "max_pool2d": (17, 1, 2),
    "reshape": (22, 1, 1),
    "pad": (34, 1, 2),
}
KIND_OF_CODE = {code: kind for kind, (code, _, _) in OPCODES.items()}
ACTIVATIONS = {"none": 0, "relu": 1, "relu6": 3}
PADDING = {"SAME": 0, "VALID": 1}
FLOAT32, INT32, INT8 = 0, 2, 9


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

    def finish(self, metadata: dict[str, str], description: str) -> bytes:
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
            self.buffers.append(value.encode())
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
        desc = b.CreateString(description)
        t.ModelStart(b)
        t.ModelAddVersion(b, SCHEMA_VERSION)
        t.ModelAddOperatorCodes(b, codes_vec)
        t.ModelAddSubgraphs(b, subgraphs)
        t.ModelAddDescription(b, desc)
        t.ModelAddBuffers(b, buffers)
        t.ModelAddMetadata(b, meta_vec)
        b.Finish(t.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    def _vector(self, start, offsets) -> int:
        start(self.b, len(offsets))
        for off in reversed(offsets):
            self.b.PrependUOffsetTRelative(off)
        return self.b.EndVector()

    def _opcode(self, kind: str) -> int:
        t = self.tfl
        code, v_float, v_int8 = OPCODES[kind]
        t.OperatorCodeStart(self.b)
        t.OperatorCodeAddDeprecatedBuiltinCode(self.b, min(code, 127))
        t.OperatorCodeAddBuiltinCode(self.b, code)
        t.OperatorCodeAddVersion(self.b, v_float if self.graph.is_float else v_int8)
        return t.OperatorCodeEnd(self.b)


# ---------------------------------------------------------------- writer


def _act_q(t: Tensor):
    return None if t.scale == 0.0 else ([t.scale], [t.zero_point], 0)


def _weights(w: _Writer, op: Op, dim: int) -> tuple[int, int]:
    """(weights, bias) tensors of a conv/FC op."""
    g = w.graph
    s_in = np.float32(g.tensors[op.inputs[0]].scale)
    n = op.bias.shape[0]
    if g.is_float:
        wt = w.tensor(f"{op.name}.weight", op.weights.shape, FLOAT32, op.weights.astype("<f4"))
        bt = w.tensor(f"{op.name}.bias", (n,), FLOAT32, op.bias.astype("<f4"))
        return wt, bt
    scales = op.weight_scales.astype(np.float32)
    zeros = [0] * n
    if np.all(scales == scales[0]):
        w_q = ([scales[0]], [0], 0)  # one scale for the whole tensor (the classifier)
    else:
        w_q = (scales, zeros, dim)
    wt = w.tensor(f"{op.name}.weight", op.weights.shape, INT8, op.weights, w_q)
    bias_scales = (s_in * scales).astype(np.float32)
    b_q = ([bias_scales[0]], [0], 0) if len(w_q[0]) == 1 else (bias_scales, zeros, 0)
    bt = w.tensor(f"{op.name}.bias", (n,), INT32, op.bias.astype("<i4"), b_q)
    return wt, bt


def _emit_conv(w: _Writer, op: Op) -> None:
    """CONV_2D or DEPTHWISE_CONV_2D, its padding SAME or VALID (PAD ops carry any other)."""
    from .lower import padding_kind

    t, b, x, act = w.tfl, w.b, op.inputs[0], ACTIVATIONS[op.activation]
    wt, bt = _weights(w, op, 0 if op.kind == "conv2d" else 3)
    kh, kw = op.weights.shape[1:3]
    kind = padding_kind(op.padding, w.graph.tensors[x].shape[1:3], (kh, kw), op.stride)
    if kind is None:
        raise MobilenetsError(f"op {op.name}: padding {op.padding} is neither SAME nor VALID")
    if op.kind == "conv2d":
        t.Conv2DOptionsStart(b)
        t.Conv2DOptionsAddPadding(b, PADDING[kind])
        t.Conv2DOptionsAddStrideH(b, op.stride[0])
        t.Conv2DOptionsAddStrideW(b, op.stride[1])
        t.Conv2DOptionsAddFusedActivationFunction(b, act)
        t.Conv2DOptionsAddDilationHFactor(b, 1)
        t.Conv2DOptionsAddDilationWFactor(b, 1)
        opts, otype = t.Conv2DOptionsEnd(b), t.BuiltinOptions.Conv2DOptions
    else:
        t.DepthwiseConv2DOptionsStart(b)
        t.DepthwiseConv2DOptionsAddPadding(b, PADDING[kind])
        t.DepthwiseConv2DOptionsAddStrideH(b, op.stride[0])
        t.DepthwiseConv2DOptionsAddStrideW(b, op.stride[1])
        t.DepthwiseConv2DOptionsAddDepthMultiplier(b, op.depth_multiplier)
        t.DepthwiseConv2DOptionsAddFusedActivationFunction(b, act)
        t.DepthwiseConv2DOptionsAddDilationHFactor(b, 1)
        t.DepthwiseConv2DOptionsAddDilationWFactor(b, 1)
        opts, otype = t.DepthwiseConv2DOptionsEnd(b), t.BuiltinOptions.DepthwiseConv2DOptions
    w.operator(op.kind, [x, wt, bt], [op.output], otype, opts)


def _emit_fully_connected(w: _Writer, op: Op) -> None:
    t, b = w.tfl, w.b
    wt, bt = _weights(w, op, 0)
    t.FullyConnectedOptionsStart(b)
    t.FullyConnectedOptionsAddFusedActivationFunction(b, ACTIVATIONS[op.activation])
    opts = t.FullyConnectedOptionsEnd(b)
    inputs = [op.inputs[0], wt, bt]
    w.operator(op.kind, inputs, [op.output], t.BuiltinOptions.FullyConnectedOptions, opts)


def _emit_add(w: _Writer, op: Op) -> None:
    t, b = w.tfl, w.b
    t.AddOptionsStart(b)
    t.AddOptionsAddFusedActivationFunction(b, ACTIVATIONS[op.activation])
    opts = t.AddOptionsEnd(b)
    w.operator(op.kind, list(op.inputs), [op.output], t.BuiltinOptions.AddOptions, opts)


def _emit_pool(w: _Writer, op: Op) -> None:
    """AVERAGE_POOL_2D or MAX_POOL_2D (VALID padding)."""
    t, b = w.tfl, w.b
    t.Pool2DOptionsStart(b)
    t.Pool2DOptionsAddPadding(b, PADDING["VALID"])
    t.Pool2DOptionsAddStrideH(b, op.stride[0])
    t.Pool2DOptionsAddStrideW(b, op.stride[1])
    t.Pool2DOptionsAddFilterHeight(b, op.kernel[0])
    t.Pool2DOptionsAddFilterWidth(b, op.kernel[1])
    t.Pool2DOptionsAddFusedActivationFunction(b, ACTIVATIONS[op.activation])
    opts = t.Pool2DOptionsEnd(b)
    w.operator(op.kind, [op.inputs[0]], [op.output], t.BuiltinOptions.Pool2DOptions, opts)


def _emit_pad(w: _Writer, op: Op) -> None:
    """PAD with its (4, 2) int32 paddings tensor (NHWC: H and W only)."""
    t, b = w.tfl, w.b
    top, bottom, left, right = op.padding
    table = np.array([[0, 0], [top, bottom], [left, right], [0, 0]], "<i4")
    pt = w.tensor(f"{op.name}.paddings", (4, 2), INT32, table)
    t.PadOptionsStart(b)
    opts = t.PadOptionsEnd(b)
    w.operator(op.kind, [op.inputs[0], pt], [op.output], t.BuiltinOptions.PadOptions, opts)


def _emit_reshape(w: _Writer, op: Op) -> None:
    t, b = w.tfl, w.b
    shape = w.graph.tensors[op.output].shape  # in the options only: no shape tensor to store
    new_shape = w.ints(t.ReshapeOptionsStartNewShapeVector, shape)
    t.ReshapeOptionsStart(b)
    t.ReshapeOptionsAddNewShape(b, new_shape)
    opts = t.ReshapeOptionsEnd(b)
    w.operator(op.kind, [op.inputs[0]], [op.output], t.BuiltinOptions.ReshapeOptions, opts)


# One writer per op kind: its options table, extra constant tensors and the operator.
_EMITTERS = {
    "conv2d": _emit_conv,
    "depthwise_conv2d": _emit_conv,
    "fully_connected": _emit_fully_connected,
    "add": _emit_add,
    "avg_pool2d": _emit_pool,
    "max_pool2d": _emit_pool,
    "pad": _emit_pad,
    "reshape": _emit_reshape,
}


def _emit(w: _Writer, op: Op) -> None:
    emit = _EMITTERS.get(op.kind)
    if emit is None:
        raise MobilenetsError(f"op {op.name}: {op.kind} has no .tflite writer")
    emit(w, op)


def tflite_bytes(graph: QuantizedModel, metadata: dict[str, Any] | None = None) -> bytes:
    """The ``.tflite`` flatbuffer of ``graph`` (int8, or fp32 when ``graph.is_float``).

    ``metadata``: extra JSON-serialisable entries; ``config``, ``class_names`` and
    ``preprocess`` default to the graph's own fields.
    """
    w = _Writer(graph)
    for t in graph.tensors:  # activation tensors keep their graph indices
        w.tensor(t.name, t.shape, FLOAT32 if graph.is_float else INT8, None, _act_q(t))
    for op in graph.ops:
        _emit(w, op)
    meta = {
        "mobilenets": {"format_version": FORMAT_VERSION},
        "config": graph.config,
        "class_names": graph.class_names,
        "preprocess": graph.preprocess,
        **(metadata or {}),
    }
    encoded = {k: json.dumps(v, sort_keys=True) for k, v in meta.items()}
    kind = "fp32" if graph.is_float else "int8"
    return w.finish(encoded, f"mobilenets {graph.config.get('name', '')} {kind}")


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


def _read_op(model, sub, op_t, kind: str, path) -> Op:
    tfl = _tfl()[1]
    ins = list(_np(op_t, "Inputs", np.int64))
    op = Op(kind, (int(ins[0]),), int(_np(op_t, "Outputs", np.int64)[0]))
    table = op_t.BuiltinOptions()
    act = 0
    if kind in ("conv2d", "depthwise_conv2d", "fully_connected"):
        wt = sub.Tensors(int(ins[1]))
        op.weights, op.bias = _const(model, sub, int(ins[1])), _const(model, sub, int(ins[2]))
        q = wt.Quantization()
        if q is not None and not q.ScaleIsNone():
            scales = _np(q, "Scale", np.float32)
            op.weight_scales = np.broadcast_to(scales, op.bias.shape).copy()
        cls = {
            "conv2d": tfl.Conv2DOptions,
            "depthwise_conv2d": tfl.DepthwiseConv2DOptions,
            "fully_connected": tfl.FullyConnectedOptions,
        }[kind]
        o = cls()
        o.Init(table.Bytes, table.Pos)
        act = o.FusedActivationFunction()
        if kind != "fully_connected":
            op.stride = (o.StrideH(), o.StrideW())
            if kind == "depthwise_conv2d":
                op.depth_multiplier = o.DepthMultiplier() or 1
            op.padding = _conv_padding(sub, op, o.Padding())
    elif kind == "add":
        op.inputs = (int(ins[0]), int(ins[1]))
        o = tfl.AddOptions()
        o.Init(table.Bytes, table.Pos)
        act = o.FusedActivationFunction()
    elif kind in ("avg_pool2d", "max_pool2d"):
        o = tfl.Pool2DOptions()
        o.Init(table.Bytes, table.Pos)
        if o.Padding() != PADDING["VALID"]:
            raise MobilenetsError(f"{path}: pools with SAME padding are not supported")
        op.stride, op.kernel = (o.StrideH(), o.StrideW()), (o.FilterHeight(), o.FilterWidth())
        act = o.FusedActivationFunction()
    elif kind == "pad":
        table_ = _const(model, sub, int(ins[1]))
        op.padding = (*map(int, table_[1]), *map(int, table_[2]))
    names = {v: k for k, v in ACTIVATIONS.items()}
    if act not in names:
        raise MobilenetsError(f"{path}: fused activation {act} is not supported")
    op.activation = names[act]
    return op


def _conv_padding(sub, op: Op, kind: int) -> tuple[int, int, int, int]:
    from .lower import same_padding

    if kind == PADDING["VALID"]:
        return (0, 0, 0, 0)
    _, h, w, _ = _np(sub.Tensors(op.inputs[0]), "Shape", np.int64)
    kh, kw = op.weights.shape[1:3]
    return same_padding(int(h), kh, op.stride[0]) + same_padding(int(w), kw, op.stride[1])


def read_tflite(path: str | Path) -> tuple[QuantizedModel, dict[str, Any]]:
    """Rebuild the graph and the metadata of a ``.tflite`` written by :func:`write_tflite`.

    Raises MobilenetsError naming the file when it is not ours or has an unsupported op.
    """
    from .quantizer import activation_range

    tfl = _tfl()[1]
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 8 or raw[4:8] != b"TFL3":
        raise MobilenetsError(f"{path}: not a .tflite file (no TFL3 identifier)")
    try:
        model = tfl.Model.GetRootAsModel(raw, 0)
        meta = _metadata(model, path)
        sub = model.Subgraphs(0)
        codes = [
            max(
                model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode()
            )
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
        ops = []
        for i in range(sub.OperatorsLength()):
            op_t = sub.Operators(i)
            code = codes[op_t.OpcodeIndex()]
            if code not in KIND_OF_CODE:
                raise MobilenetsError(f"{path}: op {i} has builtin code {code}, not supported")
            ops.append(_read_op(model, sub, op_t, KIND_OF_CODE[code], path))
    except MobilenetsError:
        raise
    except Exception as e:  # a damaged flatbuffer
        raise MobilenetsError(f"{path}: unreadable .tflite ({type(e).__name__}: {e})") from None
    inp, out = int(sub.Inputs(0)), int(sub.Outputs(0))
    graph = QuantizedModel(tensors, ops, inp, out, config=meta["config"])
    graph.class_names, graph.preprocess = meta.get("class_names"), meta.get("preprocess") or {}
    check_model(graph, str(path))  # indices, topological order, shapes, quantization, names
    if not graph.is_float:
        for op in ops:
            t_out = tensors[op.output]
            op.act_min, op.act_max = activation_range(op.activation, t_out.scale, t_out.zero_point)
    return graph, meta
