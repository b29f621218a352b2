"""Converter-made ``.tflite`` files run end to end (issue 16): the committed fixtures of
``tests/data/foreign`` are read (shape arithmetic folded, constant operands taken in), and our
NumPy reference and the generated host C equal the ``tflite-micro`` interpreter bit for bit on
20 inputs each (Fashion-MNIST test images where the input has one channel, random ones
elsewhere); the Cortex-M7 build under QEMU equals the host on 3 inputs.

Not compared with TFLite Micro: ``keras_mobilenet_a025_32_gray_softmax`` and ``..._float_io``
(both end in int8 SOFTMAX of collapsed logits): TFLite Micro and LiteRT BUILTIN_REF abort the
process (SIGABRT) on them; there the reference equals the host C, and the logits before the
SOFTMAX equal TFLite Micro through our own writer. The litert-torch fixture (PT2E int8) takes an
NCHW input through a TRANSPOSE that the reader drops (the graph, the reference and the C take
NHWC; TFLite Micro is given the same images transposed) and computes two of its three residual
ADDs in float32 (``float_add``, :mod:`mobilenets.micro.float_islands`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import build_host_program, dynamic_width, two_subgraphs, uint8_inside

from mobilenets.cli import main
from mobilenets.micro.codegen import generate_c
from mobilenets.micro.graph import QuantizedModel
from mobilenets.micro.reference import run_graph, run_int8
from mobilenets.micro.runtimes import have_tflm, tflm_outputs
from mobilenets.micro.tflite import read_graph, write_tflite

FOREIGN = Path(__file__).parent / "data/foreign"
ABORTS = ("keras_mobilenet_a025_32_gray_softmax", "keras_mobilenet_a025_32_gray_float_io")
LITERT = "litert_torch_mobilenet_v2_a035_48_b7"
INTEGER = sorted(p.stem for p in FOREIGN.glob("*.tflite"))
COMPARED = [n for n in INTEGER if n not in ABORTS]
M7 = ["keras_mobilenet_a025_32_gray", "keras_mobilenet_v2_a035_48_b6",
      "keras_mobilenet_v3_small_48_b5", LITERT]  # fmt: skip
N_INPUTS = 20
HAVE_CC = shutil.which("cc") is not None
WARN = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-Wpedantic", "-Wconversion", "-Wshadow",
        "-Wcast-align"]  # fmt: skip
needs_tflm = pytest.mark.skipif(not have_tflm(), reason="tflite-micro is not installed")
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler (cc)")


def _images(shape: tuple[int, ...], n: int) -> np.ndarray:
    """float32 NHWC in [-1, 1] (Keras MobileNet's preprocessing): Fashion-MNIST test images
    resized (bilinear) for one channel, uniform noise otherwise."""
    _, h, w, c = shape
    if c != 1:
        return np.random.default_rng(0).uniform(-1, 1, (n, h, w, c)).astype(np.float32)
    from mobilenets.data import load_dataset

    ims = load_dataset("fashion-mnist").split("test").images[:n].numpy()[:, 0]
    resized = [np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR)) for im in ims]
    return (np.stack(resized)[..., None] / 127.5 - 1.0).astype(np.float32)


def _quantized(qm: QuantizedModel, x: np.ndarray) -> np.ndarray:
    """What the int8 core takes: ``x`` quantized with the input's (or QUANTIZE's) parameters."""
    t = qm.int8_core().input_tensor
    q = np.round(x.astype(np.float64) / np.float32(t.scale)) + t.zero_point
    return np.clip(q, -128, 127).astype(np.int8)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each integer fixture: its graph, 20 int8 inputs and (with a C compiler) its host binary,
    the engine compiled once."""
    root = tmp_path_factory.mktemp("foreign")
    out, engine = {}, None
    for name in INTEGER:
        qm = read_graph(FOREIGN / f"{name}.tflite")
        x = _quantized(qm, _images(qm.int8_core().input_tensor.shape, N_INPUTS))
        exe = None
        if HAVE_CC:
            exe, engine = build_host_program(qm, root / name, engine)
        out[name] = (qm, x, exe)
    return out


def _host(exe: Path, x: np.ndarray) -> np.ndarray:
    res = subprocess.run([str(exe)], input=x.tobytes(), capture_output=True, check=True)
    return np.frombuffer(res.stdout, np.int8).reshape(len(x), -1)


def test_fixtures_read_as_integer_graphs():
    """The shape arithmetic is folded, Keras's hard sigmoid MUL takes its constant."""
    v1 = read_graph(FOREIGN / "keras_mobilenet_a025_32_gray.tflite").op_counts()
    assert v1 == {"conv2d": 15, "depthwise_conv2d": 13, "reshape": 1}
    v3 = read_graph(FOREIGN / "keras_mobilenet_v3_small_48_b5.tflite")
    consts = [op for op in v3.ops if op.kind == "mul" and len(op.inputs) == 1]
    assert len(consts) == 4 and all(op.weights.size == 1 for op in consts)
    boundary = read_graph(FOREIGN / "keras_mobilenet_a025_32_gray_float_io.tflite")
    assert boundary.ops[0].kind == "quantize" and boundary.ops[-1].kind == "dequantize"


def test_litert_torch_fixture_reads_with_its_float_islands():
    """The input TRANSPOSE is dropped (NHWC in); the float residual chain of the 32-channel
    stage (2 ADDs) becomes 2 ``float_add`` ops over 2 and 3 int8 leaves, the first (int8) ADD
    stays an ADD; no float tensor is left in the graph."""
    g = read_graph(FOREIGN / f"{LITERT}.tflite")
    assert g.input_tensor.shape == (1, 48, 48, 3)
    assert g.op_counts() == {"pad": 4, "conv2d": 14, "depthwise_conv2d": 7, "add": 1,
                             "float_add": 2, "mean": 1, "fully_connected": 1}  # fmt: skip
    islands = [op for op in g.ops if op.kind == "float_add"]
    assert [len(op.inputs) for op in islands] == [2, 3]
    assert islands[1].inputs[:2] == islands[0].inputs  # the running float sum, recomputed
    assert all(g.tensors[t].scale > 0 for op in g.ops for t in (*op.inputs, op.output))


@needs_tflm
@pytest.mark.parametrize("name", COMPARED)
def test_reference_and_host_c_equal_tflite_micro(built, name):
    qm, x, exe = built[name]
    theirs = tflm_outputs(FOREIGN / f"{name}.tflite", x).reshape(len(x), -1)
    ours = run_int8(qm, x).reshape(len(x), -1)
    assert np.array_equal(ours, theirs), f"reference: {np.abs(ours - theirs.astype(int)).max()}"
    if exe is not None:
        assert np.array_equal(_host(exe, x), theirs)


@needs_tflm
@pytest.mark.parametrize("name", ABORTS)
def test_softmax_fixtures_where_tflite_micro_aborts(built, name, tmp_path):
    """Reference = host C on 20 inputs; the logits (the graph without its SOFTMAX and
    DEQUANTIZE, written by our writer) equal TFLite Micro."""
    qm, x, exe = built[name]
    ours = run_int8(qm, x).reshape(len(x), -1)
    if exe is not None:
        assert np.array_equal(_host(exe, x), ours)
    core = qm.int8_core()
    assert core.ops[-1].kind == "softmax"
    logits = QuantizedModel(core.tensors, core.ops[:-1], core.input, core.ops[-1].inputs[0])
    path = write_tflite(logits, tmp_path / "logits.tflite")
    theirs = tflm_outputs(path, x).reshape(len(x), -1)
    assert np.array_equal(run_int8(logits, x).reshape(len(x), -1), theirs)


def test_float_io_fixture_runs_its_boundary(built):
    """QUANTIZE in, DEQUANTIZE out: the whole graph on float inputs = the int8 core between."""
    qm, _, _ = built["keras_mobilenet_a025_32_gray_float_io"]
    xf = _images(qm.input_tensor.shape, 4)
    whole = run_graph(qm, xf).reshape(4, -1)
    out = qm.tensors[qm.output]
    core_out = run_int8(qm, _quantized(qm, xf)).astype(np.float32)
    t = qm.int8_core().output_tensor
    assert out.scale == 0.0 and np.array_equal(
        whole, (core_out - t.zero_point) * np.float32(t.scale)
    )


@needs_tflm
@pytest.mark.skipif(
    not (HAVE_CC and shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")),
    reason="needs cc, gcc-arm-none-eabi and qemu-system-arm",
)
@pytest.mark.parametrize("name", M7)
def test_cortex_m7_equals_host(built, name, tmp_path):
    qm, x, exe = built[name]
    want = run_int8(qm, x[:3]).reshape(3, -1)
    generate_c(qm, tmp_path / "c", target="cortex-m7", test_inputs=x[:3])
    make = ["make", "-s", "-C", str(tmp_path / "c")]
    subprocess.run([*make, "cortex-m7"], check=True, capture_output=True)
    res = subprocess.run([*make, "run-cortex-m7"], capture_output=True, text=True, timeout=120)
    rows = [line.split(":")[1].split() for line in res.stdout.splitlines() if line[:4] == "out "]
    assert res.returncode == 0 and np.array_equal(np.array(rows, np.int8), want)
    if exe is not None:
        assert np.array_equal(_host(exe, x[:3]), want)


def test_codegen_cli_on_a_foreign_file(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["codegen", str(FOREIGN / "keras_mobilenet_v3_small_48_b5.tflite"), "--out",
                 str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    source = (out / "model.c").read_text()
    assert '"class_0"' in source and '"class_9"' in source


def _edit(tmp_path: Path, fn) -> Path:
    """A copy of the V1 fixture with ``fn(raw, model)`` applied to its bytes in place."""
    import tflite

    raw = bytearray((FOREIGN / "keras_mobilenet_a025_32_gray.tflite").read_bytes())
    fn(raw, tflite.Model.GetRootAsModel(raw, 0))
    out = tmp_path / f"{fn.__name__}.tflite"
    out.write_bytes(bytes(raw))
    return out


def uint8_input(raw, m):
    t = m.Subgraphs(0).Tensors(m.Subgraphs(0).Inputs(0))
    raw[t._tab.Pos + t._tab.Offset(6)] = 3  # Tensor.type: UINT8 (read by CONV_2D, no QUANTIZE)


@pytest.mark.parametrize(
    "edit, message",
    [
        (uint8_input, "op 0 (CONV_2D) computes in uint8: uint8 (legacy) quantization is not"),
        (uint8_inside, "uint8 (legacy) quantization is not supported"),
        (dynamic_width, "dynamic shapes are not supported"),
        (two_subgraphs, "2 subgraphs: only files with one subgraph are supported"),
    ],
)
def test_codegen_refuses_in_one_line(edit, message, tmp_path, capsys):
    path = _edit(tmp_path, edit)
    assert main(["codegen", str(path), "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and str(path) in err, err


def constant_operands() -> QuantizedModel:
    """conv -> ADD of one constant per channel (relu6) -> MUL by a scalar (Keras's 1/6) ->
    ADD of a scalar -> MUL by one value per channel."""
    from test_ops import _G

    g = _G(21, (1, 6, 6, 3))
    y = g.weighted("conv2d", g.x, (1, 6, 6, 8), (8, 3, 3, 3), padding=(1, 1, 1, 1))
    rng = np.random.default_rng(3)
    for kind, n, act in (("add", 8, "relu6"), ("mul", 1, "none"), ("add", 1, "none"),
                         ("mul", 8, "relu")):  # fmt: skip
        y = g.op(kind, [y], (1, 6, 6, 8), act)
        g.ops[-1].weights = rng.integers(-128, 128, n).astype(np.int16) - np.int16(-100)
        g.ops[-1].weight_scales = np.array([rng.uniform(0.001, 0.05)], np.float32)
    return g.model(y)


@needs_tflm
@needs_cc
def test_constant_operands_equal_tflite_micro(tmp_path):
    """ADD/MUL by a scalar or per-channel constant: written, read back, reference and host C
    equal TFLite Micro on 20 inputs."""
    qm = constant_operands()
    path = write_tflite(qm, tmp_path / "k.tflite")
    back = read_graph(path)
    assert [len(op.inputs) for op in back.ops] == [1, 1, 1, 1, 1]
    x = np.random.default_rng(4).integers(-128, 128, (N_INPUTS, 6, 6, 3)).astype(np.int8)
    theirs = tflm_outputs(path, x).reshape(len(x), -1)
    assert np.array_equal(run_int8(qm, x).reshape(len(x), -1), theirs)
    assert np.array_equal(run_int8(back, x).reshape(len(x), -1), theirs)
    generate_c(back, tmp_path / "c")
    srcs = [str(tmp_path / "c" / f) for f in ("model.c", "main_host.c", "mn_inputs.c")]
    exe = tmp_path / "mn_host"
    subprocess.run(["cc", "-O1", *WARN, *srcs, str(tmp_path / "c" / "mn_engine.c"), "-o", str(exe)],
                   check=True)  # fmt: skip
    assert np.array_equal(_host(exe, x), theirs)
