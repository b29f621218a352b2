"""What phone users expect of the .tflite files we write (issue 16 item 5), measured against
Keras's converter output: a ``serving_default`` SignatureDef, LiteRT's standard metadata
(labels and normalization) beside ours, and ``min_runtime_version``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_tflite import NAMES, small_model

from mobilenets.micro import runtimes
from mobilenets.micro.quantizer import quantize_int8
from mobilenets.micro.reference import run_int8
from mobilenets.micro.tflite import read_tflite, write_tflite
from mobilenets.micro.tflite_model import (
    METADATA_NAME,
    inspect_tflite,
    min_runtime_version,
    model_metadata,
    read_standard_metadata,
)
from mobilenets.preprocess import Preprocess

KERAS = Path(__file__).parent / "data/foreign/keras_mobilenet_a025_32_gray_softmax.tflite"
needs_peers = pytest.mark.skipif(
    not (runtimes.have_litert() and runtimes.have_tflm()), reason="LiteRT/TFLite Micro missing"
)


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """A small int8 V2 written with class names and a normalization."""
    q = quantize_int8(small_model(), torch.randn(16, 1, 28, 28))
    q.class_names = NAMES
    q.preprocess = Preprocess(28, 1, (0.286,), (0.353,)).to_dict()
    return q, write_tflite(q, tmp_path_factory.mktemp("tm") / "m.tflite")


def _metadata_names(path: Path) -> set[str]:
    return set(inspect_tflite(path).metadata_names)


@needs_peers
def test_signature_runner_works_and_is_bit_exact(ours):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    q, path = ours
    for f in (KERAS, path):  # Keras's file has one; so must ours
        it = Interpreter(str(f), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        assert list(it.get_signature_list()) == ["serving_default"]
    runner = it.get_signature_runner()  # raised before (no SignatureDef)
    x = np.random.default_rng(0).integers(-128, 128, (6, 28, 28, 1)).astype(np.int8)
    got = np.stack([runner(input=row[None])["logits"].reshape(-1) for row in x])
    assert np.array_equal(got, run_int8(q, x))  # our reference
    assert np.array_equal(got, runtimes.tflm_outputs(path, x))  # TFLite Micro


def test_standard_metadata_round_trips_beside_ours(ours):
    q, path = ours
    assert {"min_runtime_version"} <= _metadata_names(KERAS)
    names = _metadata_names(path)
    assert {"mobilenets", "config", "class_names", METADATA_NAME, "min_runtime_version"} <= names
    std = read_standard_metadata(path)
    assert std["labels"] == NAMES
    assert std["mean"] == pytest.approx([0.286]) and std["std"] == pytest.approx([0.353])
    _, meta = read_tflite(path)  # our own entries still read (the binary ones are skipped)
    assert meta["class_names"] == NAMES
    assert read_standard_metadata(KERAS) == {}  # Keras writes no TFLITE_METADATA


def test_metadata_flatbuffer_and_min_runtime_version(ours):
    _, path = ours
    raw = path.read_bytes()
    assert min_runtime_version([(3, 3), (22, 1)]) == "1.14.0"
    assert min_runtime_version([(3, 1), (6, 3)]) == "1.15.0"
    buf = model_metadata("m", 3, [0.5] * 3, [0.25] * 3, "1")
    assert buf[4:8] == b"M001"
    import tflite

    m = tflite.Model.GetRootAsModel(raw, 0)
    entries = {
        m.Metadata(i).Name().decode(): m.Metadata(i).Buffer() for i in range(m.MetadataLength())
    }
    version = m.Buffers(entries["min_runtime_version"]).DataAsNumpy().tobytes()
    assert version == b"1.14.0".ljust(16, b"\0")  # int8 CONV_2D v3 etc.: TFLite 1.14
    assert m.SignatureDefsLength() == 1
    assert m.SignatureDefs(0).SignatureKey() == b"serving_default"


@needs_peers
def test_float_io_wraps_the_same_int8_graph(tmp_path):
    """``io="float"``: QUANTIZE in, DEQUANTIZE out, the int8 graph inside unchanged; TFLite
    Micro, LiteRT BUILTIN_REF and our reference agree bit for bit (export's own check and
    here, through every backend, against the int8 file)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from mobilenets.micro.export import export_tflite
    from mobilenets.predict import Predictor

    prep, calib = Preprocess(28, 1, (0.286,), (0.353,)), torch.randn(16, 1, 28, 28)
    files = {}
    for io in ("int8", "float"):
        files[io] = tmp_path / f"{io}.tflite"
        r = export_tflite(
            small_model(), files[io], int8=True, calib_data=calib, preprocess=prep,
            class_names=NAMES, arena=False, io=io,
        )  # fmt: skip
        assert (r["max_abs_diff_lsb"], r["litert_max_abs_diff_lsb"]) == (0, 0)
    assert r["ops"]["QUANTIZE"] == 1 and r["ops"]["DEQUANTIZE"] == 1
    inner, plain = read_tflite(files["float"])[0].int8_core(), read_tflite(files["int8"])[0]
    assert [op.kind for op in inner.ops] == [op.kind for op in plain.ops]
    for a, b in zip(inner.ops, plain.ops, strict=True):
        assert a.weights is None or np.array_equal(a.weights, b.weights)
    it = Interpreter(str(files["float"]), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    x = torch.randn(6, 1, 28, 28)
    y = it.get_signature_runner()(input=x[:1].numpy().transpose(0, 2, 3, 1))["logits"]
    assert y.dtype == np.float32
    want = Predictor(files["int8"]).logits(x)
    for runtime in ("litert", "tflite-micro", "reference"):
        assert np.array_equal(Predictor(files["float"], runtime=runtime).logits(x), want)
    assert np.array_equal(y.reshape(-1), want[0])


def test_io_flag_is_checked(tmp_path, capsys):
    from mobilenets.cli import main

    out = str(tmp_path / "m.tflite")
    assert main(["export", "nowhere", "--format", "tflite", "--io", "float", "--out", out]) == 2
    assert "--io float wraps an int8 graph: add --int8" in capsys.readouterr().err
    assert main(["export", "nowhere", "--io", "float", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--io and --fp16 apply to --format tflite only" in capsys.readouterr().err
    argv = ["export", "nowhere", "--format", "tflite", "--fp16", "--int8", "--calib-data"]
    assert main([*argv, "random", "--out", out]) == 2
    assert "--fp16 stores float weights: it is for fp32 files" in capsys.readouterr().err


@pytest.mark.skipif(not runtimes.have_litert(), reason="ai-edge-litert is missing")
def test_fp16_weights_run_in_litert(tmp_path):
    """``fp16=True``: FLOAT16 weights DEQUANTIZEd at load (Keras's fp16 layout), about half
    the bytes, checked in LiteRT against PyTorch by the export and here; ``predict`` runs it."""
    import tflite

    from mobilenets.micro.export import export_tflite
    from mobilenets.predict import Predictor

    sizes = {}
    for fp16 in (False, True):
        path = tmp_path / f"{fp16}.tflite"
        r = export_tflite(small_model(), path, fp16=fp16, class_names=NAMES)
        sizes[fp16] = r["bytes"]
    assert r["format"] == "tflite-fp16" and 0 < r["max_abs_diff"] <= 2e-2
    assert 0.45 < sizes[True] / sizes[False] < 0.6
    m = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    sub = m.Subgraphs(0)
    types = [sub.Tensors(i).Type() for i in range(sub.TensorsLength())]
    codes = [
        m.OperatorCodes(sub.Operators(i).OpcodeIndex()).BuiltinCode()
        for i in range(sub.OperatorsLength())
    ]  # noqa: E501
    assert types.count(1) == codes.count(6) > 50  # one FLOAT16 weight per DEQUANTIZE (code 6)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        want = small_model()(x).numpy()
    got = Predictor(path).logits(x)
    assert np.abs(got - want).max() <= 2e-2 and np.array_equal(got.argmax(1), want.argmax(1))


@needs_peers
def test_uint8_io_wraps_the_same_int8_graph(tmp_path):
    """``io="uint8"``: uint8 input and logits (zero points + 128, a QUANTIZE at each end), 0 LSB
    in TFLite Micro and LiteRT BUILTIN_REF (export's check), and through both backends the
    same logits as the int8 file."""
    from mobilenets.micro.export import export_tflite
    from mobilenets.micro.tflite_model import inspect_tflite
    from mobilenets.predict import Predictor

    calib = torch.randn(16, 1, 28, 28)
    files = {io: tmp_path / f"{io}.tflite" for io in ("int8", "uint8")}
    for io, path in files.items():
        r = export_tflite(small_model(), path, int8=True, calib_data=calib, arena=False, io=io)
        assert (r["max_abs_diff_lsb"], r["litert_max_abs_diff_lsb"]) == (0, 0)
    assert r["ops"]["QUANTIZE"] == 2
    a, b = inspect_tflite(files["int8"]), inspect_tflite(files["uint8"])
    assert (b.in_dtype, b.out_dtype) == ("uint8", "uint8")
    assert (b.in_zero_point, b.out_zero_point) == (a.in_zero_point + 128, a.out_zero_point + 128)
    x = torch.randn(6, 1, 28, 28)
    want = Predictor(files["int8"]).logits(x)
    for runtime in ("litert", "tflite-micro"):
        assert np.array_equal(Predictor(files["uint8"], runtime=runtime).logits(x), want)
    with pytest.raises(Exception, match="the NumPy reference cannot read this file yet"):
        Predictor(files["uint8"], runtime="reference")
