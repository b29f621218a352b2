"""Float islands (``DEQUANTIZE -> float ADD ... -> QUANTIZE``, litert-torch's PT2E residual ADDs)
run as one ``float_add`` op (:mod:`mobilenets.micro.float_islands`): written back as the float
ops, read again, and equal to the ``tflite-micro`` interpreter (the peer, run here) in the NumPy
reference and the generated host C; int8 ADDs over the quantized running sum would not be. Islands that are not a plain
chain of float ADDs are refused in one line naming the op."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from test_ops import _G

from mobilenets.cli import main
from mobilenets.micro import ops
from mobilenets.micro.arith import quantize_f32, round_half_away_f32
from mobilenets.micro.codegen import generate_c
from mobilenets.micro.reference import run_int8
from mobilenets.micro.runtimes import have_tflm, tflm_outputs
from mobilenets.micro.tflite import read_graph, write_tflite

N_INPUTS = 20
STRICT_C = "-std=c99 -Wall -Wextra -Werror -Wpedantic -Wconversion -Wshadow -Wcast-align".split()


def residual_chain():
    """x -> a (1x1 conv) -> b (1x1 conv); s1 = float a + b, quantized; c = conv(s1);
    s2 = (a + b) + c in float (the running sum, as litert-torch keeps it), quantized; the output
    requantizes s2 through float (one leaf). Output scales chosen near the sums' ranges."""
    g = _G(5, (1, 6, 6, 8))
    a = g.weighted("conv2d", g.x, (1, 6, 6, 8), (8, 1, 1, 8))
    b = g.weighted("conv2d", a, (1, 6, 6, 8), (8, 1, 1, 8))
    s1 = g.op("float_add", [a, b], (1, 6, 6, 8), scale=0.11, zp=3)
    c = g.weighted("conv2d", s1, (1, 6, 6, 8), (8, 1, 1, 8))
    s2 = g.op("float_add", [a, b, c], (1, 6, 6, 8), scale=0.17, zp=-5)
    return g.model(g.op("float_add", [s2], (1, 6, 6, 8), scale=0.13, zp=1))


def test_round_half_away_is_exact():
    """Against Python's exact decimal rounding (ROUND_HALF_UP: half away from zero) of the
    float32 values themselves; 0.49999997 is where ``floor(|v| + 0.5)`` in float32 fails."""
    rng = np.random.default_rng(0)
    edge = [0.49999997, 0.5, -0.5, 1.5, 2.5, -2.5, 0.0, -0.0, 127.5, -128.5, 8388607.5]
    v = np.concatenate([np.array(edge, np.float32), rng.uniform(-300, 300, 2000),
                        np.round(rng.uniform(-300, 300, 500)) + 0.5]).astype(np.float32)  # fmt: skip
    want = [float(Decimal(float(x)).quantize(Decimal(1), ROUND_HALF_UP)) for x in v]
    assert np.array_equal(round_half_away_f32(v), np.array(want, np.float32))
    assert quantize_f32(np.float32(0.49999997), 1.0, 0) == 0


@pytest.mark.skipif(not have_tflm(), reason="tflite-micro is not installed")
def test_float_add_equals_tflite_micro(tmp_path):
    """Written as DEQUANTIZE/ADD/QUANTIZE ops, read back as the same float_add ops; reference,
    read-back reference and host C equal TFLite Micro on 20 inputs; an int8 ADD of the quantized
    running sum gives other values (the chain keeps its sum in float32)."""
    qm = residual_chain()
    path = write_tflite(qm, tmp_path / "islands.tflite")
    back = read_graph(path)
    assert [(op.kind, len(op.inputs)) for op in back.ops if op.kind == "float_add"] == [
        ("float_add", 2), ("float_add", 3), ("float_add", 1)]  # fmt: skip
    x = np.random.default_rng(1).integers(-128, 128, (N_INPUTS, 6, 6, 8)).astype(np.int8)
    theirs = tflm_outputs(path, x).reshape(N_INPUTS, -1)
    assert np.array_equal(run_int8(qm, x).reshape(N_INPUTS, -1), theirs)
    assert np.array_equal(run_int8(back, x).reshape(N_INPUTS, -1), theirs)
    upto_s2 = dataclasses.replace(qm, ops=qm.ops[:5], output=qm.ops[4].output)
    s1, c = qm.ops[2].output, qm.ops[3].output
    as_int8 = dataclasses.replace(upto_s2, ops=[*qm.ops[:4], _int8_add(qm.ops[4], (s1, c))])
    assert not np.array_equal(run_int8(as_int8, x), run_int8(upto_s2, x))
    if shutil.which("cc"):
        generate_c(back, tmp_path / "c")
        c = tmp_path / "c"
        srcs = [str(c / f) for f in ("model.c", "main_host.c", "mn_inputs.c", "mn_engine.c")]
        subprocess.run(["cc", "-O2", *STRICT_C, *srcs, "-o", str(c / "h")], check=True)
        res = subprocess.run([str(c / "h")], input=x.tobytes(), capture_output=True, check=True)
        assert np.array_equal(np.frombuffer(res.stdout, np.int8).reshape(N_INPUTS, -1), theirs)


def _int8_add(op, inputs):
    """``op`` as an int8 ADD of ``inputs`` (what folding ``(a + b) + c`` into int8 ADDs of the
    quantized ``s1 = a + b`` would compute)."""
    return dataclasses.replace(op, kind="add", inputs=inputs)


def _writer(float_op: str, activation: int = 0, tree: bool = False):
    """A float_add writer that writes another island: ``float_op`` (ADD or MUL) with the fused
    ``activation``, or (``tree``) ``(d0 + d1) + (d2 + d3)``, which is not a chain."""

    def write(w, op):
        t, b = w.tfl, w.b
        shape = w.graph.tensors[op.output].shape
        fs = []
        for i, x in enumerate(op.inputs):
            fs.append(w.tensor(f"d{i}", shape, 0))
            w.operator("dequantize", [x], [fs[-1]], 0, None)

        def binary(x, y, name):
            out = w.tensor(name, shape, 0)
            if float_op == "mul":
                t.MulOptionsStart(b)
                opts, kind = t.MulOptionsEnd(b), t.BuiltinOptions.MulOptions
            else:
                t.AddOptionsStart(b)
                t.AddOptionsAddFusedActivationFunction(b, activation)
                opts, kind = t.AddOptionsEnd(b), t.BuiltinOptions.AddOptions
            w.operator(float_op, [x, y], [out], kind, opts)
            return out

        if tree:
            acc = binary(binary(fs[0], fs[1], "s01"), binary(fs[2], fs[3], "s23"), "s")
        else:
            acc = binary(fs[0], fs[1], "s")
        w.operator("quantize", [acc], [op.output], 0, None)

    return write


@pytest.mark.parametrize(
    "float_op, activation, tree, message",
    [
        ("add", 1, False, "op 3 (ADD) computes in float32 with a fused RELU: only plain "
         "float ADDs between DEQUANTIZE and QUANTIZE are run; the file is not integer-only"),
        ("mul", 0, False, "op 3 (MUL) computes in float32: the file is not integer-only"),
        ("add", 0, True, "op 5 (ADD) computes in float32: the file is not integer-only"),
    ],
)  # fmt: skip
def test_other_float_islands_are_refused_in_one_line(
    float_op, activation, tree, message, tmp_path, capsys, monkeypatch
):
    g = _G(6, (1, 4, 4, 8))
    a = g.weighted("conv2d", g.x, (1, 4, 4, 8), (8, 1, 1, 8))
    leaves = [g.x, a, g.x, a] if tree else [g.x, a]
    qm = g.model(g.op("float_add", leaves, (1, 4, 4, 8), scale=0.1, zp=0))
    spec = dataclasses.replace(ops.OPS["float_add"], write=_writer(float_op, activation, tree))
    monkeypatch.setitem(ops.OPS, "float_add", spec)
    path = write_tflite(qm, tmp_path / "island.tflite")
    monkeypatch.undo()
    path.write_bytes(path.read_bytes().replace(b"mobilenets", b"mobilenetz"))  # a foreign file
    assert main(["codegen", str(path), "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and str(path) in err, err
