"""MobileNetV3 to integer-only int8 and C: hard-swish as HARD_SWISH, squeeze-excite as a global
average pool, two 1x1 convs (the hard-sigmoid folded into the second, whose int8 range is
exactly [0, 1]) and a broadcast MUL; the reference equals TFLite Micro and LiteRT's reference
kernels bit for bit, and the generated C equals the reference on the host and on Cortex-M7."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from test_codegen import build_host, run_host, run_qemu

import mobilenets
from mobilenets.errors import UsageError
from mobilenets.micro.codegen import generate_c
from mobilenets.micro.export import quantize_input
from mobilenets.micro.quantizer import quantize_int8
from mobilenets.micro.reference import run_int8
from mobilenets.micro.runtimes import have_litert, have_tflm, litert_outputs, tflm_outputs
from mobilenets.micro.tflite import write_tflite
from mobilenets.testing import randomize_bn

pytestmark = pytest.mark.usefixtures("one_thread")


def v3(name: str, width: float, res: int, minimal: bool, classes: int = 1000):
    """A V3 with seeded random weights and BN statistics, quantized on 16 random images."""
    torch.manual_seed(0)
    model = mobilenets.create_model(
        name, width, res, minimal=minimal, num_classes=classes, padding="same"
    )
    model = randomize_bn(model, linear_std=0.05)
    g = torch.Generator().manual_seed(0)
    return model, quantize_int8(model, torch.randn(16, 3, res, res, generator=g))


def test_v3_lowers_to_hard_swish_squeeze_excite_and_a_fixed_gate_range():
    _, qm = v3("mobilenet_v3_small", 1.0, 64, False)
    counts = qm.op_counts()
    assert counts["hard_swish"] > 0 and counts["mul"] == 9  # 9 squeeze-excite blocks in Small
    gates = [qm.tensors[op.inputs[1]] for op in qm.ops if op.kind == "mul"]
    # the folded hard-sigmoid: int8 -128..127 is exactly [0, 1]
    assert all((t.zero_point, t.scale) == (-128, np.float32(1 / 255)) for t in gates)
    _, minimal = v3("mobilenet_v3_small", 1.0, 64, True)
    assert {"hard_swish", "mul"}.isdisjoint(minimal.op_counts())


@pytest.mark.skipif(not (have_tflm() and have_litert()), reason="needs tflite-micro and LiteRT")
@pytest.mark.parametrize(
    "name, width, res, minimal",
    [
        ("mobilenet_v3_small", 0.75, 96, True),
        ("mobilenet_v3_small", 1.0, 128, True),
        ("mobilenet_v3_small", 1.0, 96, False),
        ("mobilenet_v3_large", 1.0, 64, False),
    ],
)
def test_v3_int8_equals_tflite_micro_and_litert(name, width, res, minimal, tmp_path):
    _, qm = v3(name, width, res, minimal)
    path = write_tflite(qm, tmp_path / "m.tflite")
    x = np.random.default_rng(0).integers(-128, 128, (20, res, res, 3)).astype(np.int8)
    ours = run_int8(qm, x).reshape(20, -1)
    assert len(np.unique(ours)) > 50  # logits that tell the classes apart
    for peer in (tflm_outputs(path, x), litert_outputs(path, x)):
        assert np.array_equal(ours, peer.reshape(ours.shape))


def test_v3_fp32_tflite_is_refused_naming_int8(tmp_path):
    model, _ = v3("mobilenet_v3_small", 1.0, 64, False)
    with pytest.raises(UsageError, match="int8"):
        mobilenets.export_tflite(model, tmp_path / "m.tflite")


@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None, reason="no cc")
def test_v3_generated_c_equals_the_reference_on_host_and_cortex_m7(tmp_path):
    model, qm = v3("mobilenet_v3_small", 1.0, 64, False, classes=10)
    x = quantize_input(torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2)), qm)
    out = tmp_path / "lib"
    generate_c(qm, out, target="cortex-m7", test_inputs=x)
    host = run_host(build_host(out), qm, x)
    assert np.array_equal(host, run_int8(qm, x).reshape(host.shape))
    if shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm"):
        got, _ = run_qemu(out, "cortex-m7")
        assert np.array_equal(got, host)
