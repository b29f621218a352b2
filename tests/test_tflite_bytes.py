"""The op registry refactor (issue 16) keeps what the ``.tflite`` writer writes for today's models:
V1 and V2, symmetric and SAME padding, fp32 and int8.

The whole files were byte-identical before and after the refactor (compared by a script at each
step). Since then the files also carry a SignatureDef and LiteRT's standard metadata (issue 16
item 5), so this test pins the graph part, hashed from the files written before the refactor:
operator codes and versions, every tensor (name, shape, type, quantization, constant data) and
every operator (inputs, outputs, options table bytes). The int8 values depend on PyTorch's float
arithmetic (BN folding, calibration): recorded with torch 2.14.1 on x86-64, skipped elsewhere."""

from __future__ import annotations

import hashlib
import platform

import flatbuffers
import pytest
import tflite
import torch

from mobilenets import create_model
from mobilenets.fold import fold_bn
from mobilenets.micro.lower import lower
from mobilenets.micro.quantizer import quantize_int8
from mobilenets.micro.tflite import tflite_bytes
from mobilenets.testing import randomize_bn

BEFORE = {
    "mobilenet_v1-same-fp32": "1c7dd59ef9f16be78277403dd5dc353214dafde7b10b2c341164708fb8fdf01c",
    "mobilenet_v1-same-int8": "e5fd619c7eab9530993b298a4c4c85d83860d0bb60b58b0adddf2f9c03ce93b6",
    "mobilenet_v1-symmetric-fp32": "387d718867904b14e0328fb61f1a05bbae6f952ecd961b32cb7e4a3e0bdb9a09",
    "mobilenet_v1-symmetric-int8": "ec5080477e1b34ee2cbf5d5c3531e8ea51877324a1fa971cf5f365673b9dbb55",
    "mobilenet_v2-same-fp32": "6fa85e3c0106dbfe51eeb1deda4d81578f08c522e887bd3b6c5eb9f2e872d3a9",
    "mobilenet_v2-same-int8": "55a10d84cf87362fa5af084b21df8b9697937624d0074f46b8eaf3fece593f1d",
    "mobilenet_v2-symmetric-fp32": "6c79ea09aa13c49729166f0ed235a5da9712eeaab167cfa934f70f9d63c83e1f",
    "mobilenet_v2-symmetric-int8": "0c724a6bac466f1d6c8547e3fcbc2f10cc2012e6b4f6067bcc2675009a3ad35c",
}


def _table_bytes(table) -> bytes:
    """The inline bytes of a flatbuffer table (its vtable gives the object size)."""
    buf, pos = table.Bytes, table.Pos
    vtable = pos - flatbuffers.encode.Get(flatbuffers.packer.soffset, buf, pos)
    size = flatbuffers.encode.Get(flatbuffers.packer.voffset, buf, vtable + 2)
    return bytes(buf[pos : pos + size])


def graph_digest(raw: bytes) -> str:
    """sha256 over the graph part of a ``.tflite`` file (subgraph 0 and its opcodes)."""
    m = tflite.Model.GetRootAsModel(raw, 0)
    h = hashlib.sha256()
    for i in range(m.OperatorCodesLength()):
        c = m.OperatorCodes(i)
        h.update(repr((c.BuiltinCode(), c.DeprecatedBuiltinCode(), c.Version())).encode())
    sub = m.Subgraphs(0)
    h.update(repr((sub.InputsAsNumpy().tolist(), sub.OutputsAsNumpy().tolist())).encode())
    for i in range(sub.TensorsLength()):
        t, qv = sub.Tensors(i), None
        q = t.Quantization()
        if q is not None and not q.ScaleIsNone():
            qv = (
                q.ScaleAsNumpy().tobytes(),
                q.ZeroPointAsNumpy().tobytes(),
                q.QuantizedDimension(),
            )
        b = m.Buffers(t.Buffer())
        data = b"" if b.DataIsNone() else b.DataAsNumpy().tobytes()
        h.update(repr((t.Name(), t.ShapeAsNumpy().tolist(), t.Type(), qv, data)).encode())
    for i in range(sub.OperatorsLength()):
        op = sub.Operators(i)
        opts = op.BuiltinOptions()
        ins, outs = op.InputsAsNumpy().tolist(), op.OutputsAsNumpy().tolist()
        raw_opts = b"" if opts is None else _table_bytes(opts)
        h.update(repr((op.OpcodeIndex(), ins, outs, op.BuiltinOptionsType(), raw_opts)).encode())
    return h.hexdigest()


@pytest.mark.skipif(
    not torch.__version__.startswith("2.14.1") or platform.machine() != "x86_64",
    reason="digests recorded with torch 2.14.1 on x86-64",
)
@pytest.mark.parametrize("arch", ["mobilenet_v1", "mobilenet_v2"])
@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_written_graph_is_unchanged(arch, padding):
    torch.manual_seed(0)
    alpha = 0.25 if arch == "mobilenet_v1" else 0.35
    model = create_model(arch, alpha, 32, num_classes=10, padding=padding)
    model = randomize_bn(model, linear_std=0.1)
    calib = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # the digests were recorded with 2 intra-op threads (calibration's float sums depend on
    # how they are split); pytest-xdist workers run with 1
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        graphs = {"fp32": lower(fold_bn(model.eval())).graph, "int8": quantize_int8(model, calib)}
    finally:
        torch.set_num_threads(threads)
    for kind, graph in graphs.items():
        digest = graph_digest(tflite_bytes(graph))
        assert digest == BEFORE[f"{arch}-{padding}-{kind}"], f"{arch} {padding} {kind}"
