"""A damaged or crafted ``.tflite`` is refused in one line, naming the tensor or op, before any
planning or allocation: cycles, indices out of range, huge shapes, bad quantization parameters
and class names that are not strings (issue 20, items 1, 2 and 6)."""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pytest
import torch

from mobilenets import create_model, generate_c
from mobilenets.cli import main
from mobilenets.errors import MobilenetsError
from mobilenets.micro.graph import QuantizedModel
from mobilenets.micro.quantizer import quantize_int8
from mobilenets.micro.tflite import _tfl, read_tflite, write_tflite
from mobilenets.micro.validate import GraphError, check_model
from mobilenets.preprocess import Preprocess


@pytest.fixture(scope="module")
def tiny() -> QuantizedModel:
    torch.manual_seed(0)
    model = create_model("mobilenet_v1", 0.25, 32, num_classes=3, in_chans=1)
    qm = quantize_int8(model, torch.randn(8, 1, 32, 32))
    qm.class_names = ["a", "b", "c"]
    qm.preprocess = Preprocess(in_chans=1, resolution=32, mean=(0.5,), std=(0.5,)).to_dict()
    return qm


def _refused(qm: QuantizedModel, tmp_path, *needles: str) -> str:
    """Written to a file, read back: one-line MobilenetsError holding every needle, fast."""
    path = write_tflite(qm, tmp_path / "bad.tflite")
    t0 = time.perf_counter()
    with pytest.raises(MobilenetsError) as info:
        read_tflite(path)
    assert time.perf_counter() - t0 < 10
    msg = str(info.value)
    assert "\n" not in msg and "bad.tflite" in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_tflite_roundtrip_passes_validation(tiny, tmp_path):
    qm, _ = read_tflite(write_tflite(tiny, tmp_path / "ok.tflite"))
    check_model(qm, "ok")
    assert qm.class_names == ["a", "b", "c"]


def test_op_reading_a_later_ops_output_is_refused_not_looped(tiny, tmp_path, capsys):
    qm = copy.deepcopy(tiny)
    qm.ops[1].inputs = (qm.ops[3].output, *qm.ops[1].inputs[1:])
    _refused(qm, tmp_path, "op 1", "topological order or form a cycle")
    with pytest.raises(GraphError, match="cycle"):  # the Python API checks the same
        generate_c(qm, tmp_path / "lib")
    assert not (tmp_path / "lib").exists()
    rc = main(["codegen", str(tmp_path / "bad.tflite"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0 and "cycle" in err


def test_tensor_index_out_of_range_is_refused(tiny, tmp_path):
    path = write_tflite(tiny, tmp_path / "ok.tflite")
    raw = bytearray(path.read_bytes())  # the flatbuffer's vectors become writable views
    sub = _tfl()[1].Model.GetRootAsModel(raw, 0).Subgraphs(0)
    i = next(
        i for i, op in enumerate(tiny.ops) if op.weights is not None and op.weights.shape[1] == 1
    )
    sub.Operators(i).InputsAsNumpy()[0] = 9999
    (tmp_path / "bad.tflite").write_bytes(bytes(raw))
    with pytest.raises(MobilenetsError) as info:
        read_tflite(tmp_path / "bad.tflite")
    assert f"op {i}" in str(info.value) and "tensor 9999, outside" in str(info.value)


def test_huge_shape_is_refused_before_allocating(tiny, tmp_path):
    qm = copy.deepcopy(tiny)
    qm.tensors[qm.input].shape = (1, 100000, 100000, 1)
    _refused(qm, tmp_path, "100000")
    with pytest.raises(GraphError, match="100000"):
        generate_c(qm, tmp_path / "lib")


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("scale", math.nan, "scale nan"),
        ("scale", math.inf, "scale inf"),
        ("scale", -0.5, "scale -0.5"),
        ("zero_point", 200, "zero point 200"),
        ("weight_scale", 0.0, "weight scale 0.0"),
    ],
)
def test_bad_quantization_parameters_are_refused_naming_the_tensor(
    tiny, tmp_path, field, value, needle
):
    qm = copy.deepcopy(tiny)
    conv = qm.ops[2]  # a pointwise conv, one weight scale per output channel
    if field == "weight_scale":
        conv.weight_scales = np.array(conv.weight_scales, np.float32).reshape(-1)
        conv.weight_scales[1] = value
        label = "op 2"
    else:
        setattr(qm.tensors[conv.output], field, value)
        label = f"tensor {conv.output}"
    with pytest.raises(GraphError, match="needs") as info:
        generate_c(qm, tmp_path / "lib")
    assert label in str(info.value) and needle in str(info.value)
    if field != "scale" or math.isfinite(value):  # NaN/inf survive the file too
        _refused(qm, tmp_path, label, needle)
    else:
        _refused(qm, tmp_path, label)


@pytest.mark.parametrize(
    "names, needle",
    [
        ([1, "b", "c"], "class name 0 is a int"),
        (["a", {"x": 1}, "c"], "class name 1 is a dict"),
        (["a", "b\0", "c"], "class name 1 contains a NUL"),
    ],
)
def test_class_names_must_be_strings_on_read(tiny, tmp_path, names, needle):
    qm = copy.deepcopy(tiny)
    qm.class_names = names
    _refused(qm, tmp_path, "class")  # the metadata parser or the graph checks
    with pytest.raises(GraphError, match=needle):
        generate_c(qm, tmp_path / "lib")
