"""The Helium (MVE) kernels of the generated C (issue 18 item 3): on a Cortex-M55 build
(``-mcpu=cortex-m55`` defines ``__ARM_FEATURE_MVE``) the pointwise, depthwise and add kernels
take their MVE paths, and their outputs must equal the NumPy reference bit for bit, run under
QEMU ``mps3-an547``. The models' batch-norm statistics are measured on their calibration batch so that the
logits spread over many int8 values (random MobileNets give near-constant logits otherwise)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from mobilenets import create_model, generate_c
from mobilenets.micro.quantizer import quantize_int8
from mobilenets.micro.reference import run_int8

TOOLS = ("arm-none-eabi-gcc", "qemu-system-arm", "make")
MISSING = [t for t in TOOLS if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)}")


def _spread_model(arch: str, width: float, classes: int, seed: int, res: int = 32):
    torch.manual_seed(seed)
    model = create_model(arch, width, res, num_classes=classes, padding="same").eval()
    calib = torch.randn(16, 3, res, res)
    with torch.no_grad():  # batch-norm statistics of real activations keep every layer alive
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        model.train()(calib)
        model.eval()
    qm = quantize_int8(model, calib)
    x = np.random.default_rng(seed).integers(-128, 128, (3, res, res, 3)).astype(np.int8)
    return qm, x


def _qemu_outputs(out, core: str = "cortex-m55") -> np.ndarray:
    subprocess.run(["make", "-s", "-C", str(out), core], check=True, capture_output=True)
    res = subprocess.run(
        ["make", "-s", "-C", str(out), f"run-{core}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = re.findall(r"^out \d+:(.*)$", res.stdout, re.M)
    return np.array([[int(v) for v in r.split()] for r in rows], np.int64)


@pytest.mark.parametrize(
    ("arch", "width", "classes"), [("mobilenet_v2", 0.35, 10), ("mobilenet_v1", 0.25, 13)]
)
def test_helium_kernels_equal_the_reference_on_mps3_an547(tmp_path, arch, width, classes):
    qm, x = _spread_model(arch, width, classes, 0)
    ref = run_int8(qm, x).astype(np.int64)
    assert len(np.unique(ref)) > 5, "degenerate logits: the check would mean nothing"
    generate_c(qm, tmp_path / "lib", target="cortex-m55", test_inputs=x)
    assert np.array_equal(_qemu_outputs(tmp_path / "lib"), ref)


def test_helium_paths_are_compiled_for_the_m55_only(tmp_path):
    """The MVE kernels exist in the M55 object and not in the M7 one."""
    qm, x = _spread_model("mobilenet_v2", 0.35, 10, 1)
    generate_c(qm, tmp_path / "lib", target="cortex-m55", test_inputs=x[:1])
    src = tmp_path / "lib" / "mn_engine.c"
    flags = {
        "cortex-m55": ["-mcpu=cortex-m55", "-mfloat-abi=hard"],
        "cortex-m7": ["-mcpu=cortex-m7", "-mfpu=fpv5-d16", "-mfloat-abi=hard"],
    }
    for core, cpu in flags.items():
        cmd = ["arm-none-eabi-gcc", *cpu, "-mthumb", "-O2", "-S", str(src), "-o", "-"]
        asm = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        assert ("vmladava" in asm) == (core == "cortex-m55"), core


CLANG_M7 = "clang --target=arm-none-eabi -mcpu=cortex-m7 -mthumb -mfloat-abi=hard -mfpu=fpv5-d16"
GCC_M7 = "arm-none-eabi-gcc -mcpu=cortex-m7 -mthumb -mfloat-abi=hard -mfpu=fpv5-d16"


def _clang_m7_outputs(out) -> np.ndarray:
    """The library built by clang (as benchmarks/cmsis_peer.py does), linked by gcc, on QEMU."""
    clang = [*CLANG_M7.split(), "-O2", "-isystem", "/usr/lib/arm-none-eabi/include"]
    for src in ("model.c", "mn_engine.c"):
        subprocess.run([*clang, "-c", src, "-o", f"{src}.clang.o"], cwd=out, check=True)
    link = [*GCC_M7.split(), "-O2", "-nostartfiles", "--specs=rdimon.specs", "-T", "mps2-an500.ld"]
    objs = ["model.c.clang.o", "mn_engine.c.clang.o", "main_mcu.c", "mn_inputs.c", "startup.c"]
    subprocess.run([*link, *objs, "-o", "clang.elf"], cwd=out, check=True, capture_output=True)
    qemu = ["qemu-system-arm", "-machine", "mps2-an500", "-cpu", "cortex-m7", "-nographic"]
    qemu += ["-monitor", "none", "-serial", "none", "-semihosting-config"]
    qemu += ["enable=on,target=native", "-kernel", "clang.elf"]
    res = subprocess.run(qemu, cwd=out, capture_output=True, text=True, timeout=120)
    rows = re.findall(r"^out \d+:(.*)$", res.stdout, re.M)
    return np.array([[int(v) for v in r.split()] for r in rows], np.int64)


def test_odd_shapes_take_every_tail_bit_exact_on_m7_and_m55(tmp_path):
    """V1 alpha 0.3 at 40 px: 9, 19, 38, 76 and 153 channels and rows of 5 pixels reach every
    remainder path beside the fast kernels (odd cout and k % 4 != 0 on the M7's SIMD32 path,
    cout % 8 == 4 and cout % 4 != 0 in the Helium depthwise and pointwise, an odd last pixel);
    Cortex-M7 (gcc, and clang when installed) and M55 outputs equal the NumPy reference."""
    qm, x = _spread_model("mobilenet_v1", 0.3, 7, 2, res=40)
    ref = run_int8(qm, x).astype(np.int64)
    assert len(np.unique(ref)) > 5, "degenerate logits: the check would mean nothing"
    out = tmp_path / "lib"
    generate_c(qm, out, target="cortex-m7", test_inputs=x)
    for core in ("cortex-m55", "cortex-m7"):
        assert np.array_equal(_qemu_outputs(out, core), ref), core
    if shutil.which("clang"):
        assert np.array_equal(_clang_m7_outputs(out), ref), "clang"
