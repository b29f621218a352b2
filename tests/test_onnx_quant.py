"""onnx_quant.shrink: onnx_ir's DeduplicateInitializersPass / RemoveUnusedOpsetsPass replace the
hand-written passes (issue 15 item 5); the int8 graph they leave must be the one the old passes
left: same nodes, same initializers byte for byte, same opsets, same outputs bit for bit."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from mobilenets import create_model, onnx_quant
from mobilenets.export import export_onnx, ort_session, run_ort


def _old_dedupe_initializers(proto) -> None:
    """The hand-written pass shrink used before onnx_ir (verbatim), the reference."""
    keep: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    graph_io = {v.name for v in (*proto.graph.input, *proto.graph.output)}
    for init in proto.graph.initializer:
        if init.name in graph_io or np.prod(init.dims, dtype=np.int64) > 1024:
            continue
        arr = numpy_helper.to_array(init)
        key = (init.data_type, tuple(init.dims), arr.tobytes())
        if key in keep:
            rename[init.name] = keep[key]
        else:
            keep[key] = init.name
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    kept = [i for i in proto.graph.initializer if i.name not in rename]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)


def _old_drop_unused_domains(proto) -> None:
    used = {n.domain or "" for n in proto.graph.node} | {f.domain for f in proto.functions}
    for f in proto.functions:
        used |= {n.domain or "" for n in f.node}
    used.add("")
    kept = [o for o in proto.opset_import if (o.domain or "") in used or o.domain == "ai.onnx"]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)


@pytest.fixture(scope="module")
def raw_int8(tmp_path_factory):
    """An int8 QDQ file as onnxruntime's quantizer writes it, before shrink."""
    root = tmp_path_factory.mktemp("q")
    torch.manual_seed(0)
    model = create_model("mobilenet_v1", 0.25, 32, num_classes=4, in_chans=1).eval()
    export_onnx(model, root / "f.onnx")
    mp = pytest.MonkeyPatch()
    mp.setattr(onnx_quant, "shrink", lambda proto: None)
    try:
        onnx_quant.quantize_onnx(root / "f.onnx", root / "raw.onnx", torch.randn(8, 1, 32, 32))
    finally:
        mp.undo()
    return onnx.load(str(root / "raw.onnx")), root


def _with_unused_domain(proto):
    proto = copy.deepcopy(proto)
    proto.opset_import.append(helper.make_opsetid("com.example.unused", 1))
    return proto


def test_library_passes_leave_the_graph_the_hand_written_passes_left(raw_int8):
    raw, root = raw_int8
    raw = _with_unused_domain(raw)
    old, new = copy.deepcopy(raw), copy.deepcopy(raw)
    _old_dedupe_initializers(old)
    _old_drop_unused_domains(old)
    onnx_quant.shrink(new)
    assert len(new.graph.initializer) < len(raw.graph.initializer)  # something was shared
    assert [n.SerializeToString() for n in new.graph.node] == [
        n.SerializeToString() for n in old.graph.node
    ]
    init = {i.name: i.SerializeToString() for i in new.graph.initializer}
    assert init == {i.name: i.SerializeToString() for i in old.graph.initializer}
    assert [(o.domain, o.version) for o in new.opset_import] == [
        (o.domain, o.version) for o in old.opset_import
    ]
    assert "com.example.unused" not in {o.domain for o in new.opset_import}
    props = {p.key: p.value for p in new.metadata_props}  # onnx_ir may reorder them
    assert props == {p.key: p.value for p in old.metadata_props}
    assert [v.SerializeToString() for v in (*new.graph.input, *new.graph.output)] == [
        v.SerializeToString() for v in (*old.graph.input, *old.graph.output)
    ]
    onnx.save(old, str(root / "old.onnx"))
    onnx.save(new, str(root / "new.onnx"))
    x = np.random.default_rng(0).standard_normal((6, 1, 32, 32)).astype(np.float32)
    a = run_ort(ort_session(root / "old.onnx"), x)
    b = run_ort(ort_session(root / "new.onnx"), x)
    assert np.array_equal(a, b)
