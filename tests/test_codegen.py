"""C code generation: the generated library is bit-exact (0 LSB) with the NumPy int8 reference
(``run_int8``) on the host, and Cortex-M4/M7 builds under QEMU print the same outputs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from support import fit_tiny

from mobilenets import create_model, generate_c
from mobilenets.checkpoint import save_checkpoint
from mobilenets.cli import main
from mobilenets.errors import MobilenetsError
from mobilenets.micro.export import quantize_input
from mobilenets.micro.graph import Op, QuantizedModel, Tensor
from mobilenets.micro.planner import plan_memory
from mobilenets.micro.quantizer import quantize_int8
from mobilenets.micro.reference import run_int8
from mobilenets.micro.runtimes import have_tflm, tflm_outputs
from mobilenets.micro.tflite import write_tflite
from mobilenets.testing import randomize_bn
from mobilenets.transforms import to_model_input

FMNIST = Path("/usr/share/datasets/fashion-mnist")
HAVE_FMNIST = (FMNIST / "train-images-idx3-ubyte.gz").is_file()
HAVE_GCC = shutil.which("cc") is not None and shutil.which("make") is not None
HAVE_ARM = shutil.which("arm-none-eabi-gcc") is not None
HAVE_QEMU = shutil.which("qemu-system-arm") is not None
MEAN, STD = [0.286], [0.353]
RES = 32

needs_gcc = pytest.mark.skipif(not HAVE_GCC, reason="no host C compiler (cc) or make")
needs_arm = pytest.mark.skipif(
    not (HAVE_ARM and HAVE_QEMU and HAVE_GCC),
    reason="needs gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm "
    "(scripts/setup.sh installs them as root)",
)


def fashion_mnist(n_train: int, n_test: int):
    if not HAVE_FMNIST:
        pytest.skip("Fashion-MNIST not installed (Debian package dataset-fashion-mnist)")
    from mobilenets.data import load_fashion_mnist

    ds = load_fashion_mnist(FMNIST)
    tr, te = ds.splits["train"], ds.splits["test"]
    return tr.images[:n_train], tr.labels[:n_train], te.images[:n_test], te.labels[:n_test]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """MobileNetV2 alpha 0.35 at 32 px trained 120 steps on real Fashion-MNIST, quantized on 256
    training images; with 64 real int8 test images. (The demo's V1 small-input checkpoint is
    in benchmarks/mcu.py: training it here would cost minutes.)"""
    torch.manual_seed(0)
    xtr, ytr, xte, yte = fashion_mnist(8000, 64)
    model = create_model("mobilenet_v2", 0.35, RES, num_classes=10, in_chans=1, drop_rate=0.0)
    fit_tiny(model, xtr, ytr, 120, MEAN, STD)
    qm = quantize_int8(model, to_model_input(xtr[:256], RES, MEAN, STD))
    x = quantize_input(to_model_input(xte, RES, MEAN, STD), qm)
    names = [f"class {i}" for i in range(10)]
    ckpt = save_checkpoint(tmp_path_factory.mktemp("ck") / "ckpt", model, names, MEAN, STD)
    return qm, x, yte, ckpt


def build_host(out: Path) -> Path:
    subprocess.run(["make", "-s", "-C", str(out), "host"], check=True, capture_output=True)
    return out / "mn_host"


def run_host(exe: Path, qm: QuantizedModel, x: np.ndarray) -> np.ndarray:
    res = subprocess.run([str(exe)], input=x.tobytes(), capture_output=True, check=True)
    return np.frombuffer(res.stdout, np.int8).reshape(len(x), -1)


def run_qemu(out: Path, cpu: str) -> tuple[np.ndarray, dict[str, int]]:
    subprocess.run(["make", "-s", "-C", str(out), cpu], check=True, capture_output=True)
    res = subprocess.run(
        ["make", "-s", "-C", str(out), f"run-{cpu}"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = [
        [int(v) for v in line.split(":")[1].split()]
        for line in res.stdout.splitlines()
        if line.startswith("out ")
    ]
    figures = dict(re.findall(r"^(ticks|stack) (\d+)$", res.stdout, re.M))
    return np.array(rows, np.int8), {k: int(v) for k, v in figures.items()}


@needs_gcc
@pytest.mark.parametrize("streaming", [True, False], ids=["row-bands", "layer-by-layer"])
def test_host_bit_exact_on_fashion_mnist(trained, tmp_path, streaming):
    qm, x, y, _ = trained
    out = tmp_path / "lib"
    rep = generate_c(qm, out, streaming=streaming, test_inputs=x[:5])
    got = run_host(build_host(out), qm, x)
    ref = run_int8(qm, x)
    assert got.shape == ref.shape == (len(x), 10)
    assert np.abs(got.astype(int) - ref).max() == 0
    assert len(np.unique(ref)) > 20  # real, varied logits
    acc = float((ref.argmax(1) == y.numpy()).mean())
    assert acc > 0.5, acc  # a trained model, not noise
    if streaming:
        assert rep["arena_bytes"] < rep["layer_by_layer_bytes"]
    else:  # the figure is the layer-by-layer arena itself
        assert rep["arena_bytes"] == rep["layer_by_layer_bytes"]
    if streaming:  # the peer runtime: TFLite Micro's interpreter on the same graph
        if not have_tflm():
            pytest.skip("tflite-micro not installed (pip install '.[micro]')")
        path = write_tflite(qm, tmp_path / "model.tflite")
        assert np.array_equal(tflm_outputs(path, x), got)
    text = (out / "model.h").read_text()
    assert f"#define MN_ARENA_BYTES {rep['arena_bytes']}" in text
    assert (out / "plan.png").stat().st_size > 1000
    assert "Memory report" in (out / "README.md").read_text()


@needs_gcc
def test_host_bit_exact_1000_classes_random_inputs(tmp_path):
    """A 1000-class V2 (alpha 0.35, 64 px, PyTorch padding: PAD ops folded into the convs)."""
    torch.manual_seed(1)
    model = randomize_bn(
        create_model("mobilenet_v2", 0.35, 64, num_classes=1000), mean_std=0.2, beta_std=0.5
    )
    model.classifier.weight.data.normal_(0, 0.1)
    qm = quantize_int8(model, torch.randn(16, 3, 64, 64))
    assert qm.op_counts().get("pad", 0) > 0
    x = quantize_input(torch.randn(4, 3, 64, 64), qm)
    out = tmp_path / "lib"
    generate_c(qm, out)
    got = run_host(build_host(out), qm, x)
    ref = run_int8(qm, x)
    assert got.shape == (4, 1000)
    assert np.abs(got.astype(int) - ref).max() == 0
    assert len(np.unique(ref)) > 50


@needs_gcc
@pytest.mark.parametrize("option", [("conv_type", "full"), ("expansion_activation", "linear")])
def test_host_bit_exact_on_v2_ablations(tmp_path, option):
    """The generated C runs the V2 ablation blocks (a standard 3x3 over the expanded channels;
    no activation after the expansion) bit-exactly with the reference, rows streamed."""
    torch.manual_seed(1)
    model = create_model("mobilenet_v2", 0.35, 32, num_classes=100, **dict([option]))
    qm = quantize_int8(randomize_bn(model, linear_std=0.1), torch.randn(16, 3, 32, 32))
    x = np.random.default_rng(0).integers(-128, 128, (4, 32, 32, 3)).astype(np.int8)
    generate_c(qm, tmp_path / "lib")
    got = run_host(build_host(tmp_path / "lib"), qm, x)
    ref = run_int8(qm, x)
    assert np.abs(got.astype(int) - ref).max() == 0 and len(np.unique(ref)) > 50


@needs_arm
def test_cortex_m4_m7_under_qemu_equal_host(trained, tmp_path):
    """SIMD32 path (__smlad/__sxtb16) on M4 and M7 vs the plain C path on the host."""
    qm, x, _, _ = trained
    out = tmp_path / "lib"
    rep = generate_c(qm, out, target="cortex-m7", test_inputs=x[:5])
    host = run_host(build_host(out), qm, x[:5])
    for cpu in ("cortex-m4", "cortex-m7"):
        got, figures = run_qemu(out, cpu)
        assert got.shape == (5, 10)
        assert np.array_equal(got, host), cpu
        assert 0 < figures["stack"] <= 4096
        assert figures["ticks"] > 0
    size = subprocess.run(
        ["make", "-s", "-C", str(out), "size-cortex-m7"], capture_output=True, text=True
    ).stdout
    model_o = [line.split() for line in size.splitlines() if "model.o" in line][0]
    text, data, bss = map(int, model_o[:3])
    assert abs((data + bss) - rep["arena_bytes"]) <= 64  # SRAM is the arena


def test_plan_bands_keep_expanded_tensor_partial():
    """V2 alpha 0.35 at 144 px: the 72x72x48 expanded tensor is held as a few rows only."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", 0.35, 144, num_classes=1000, padding="same").eval()
    qm = quantize_int8(model, torch.randn(2, 3, 144, 144))
    plan = plan_memory(qm)
    expanded = [t for t in plan.tensors.values() if (t.h, t.w, t.c) == (72, 72, 48)]
    assert expanded and all(t.ring <= 3 for t in expanded)
    assert plan.arena_bytes <= 128_000  # the goal; TFLM needs 311,040 B
    lbl = plan_memory(qm, streaming=False)  # layer by layer: about the naive peak (+ scratch)
    assert plan.arena_bytes < lbl.arena_bytes <= lbl.layer_by_layer_bytes + 4096


def _tiny(kind: str) -> QuantizedModel:
    t = [Tensor("x", (1, 9, 9, 4), 0.05, 0), Tensor("y", (1, 2, 2, 4), 0.05, 0)]
    return QuantizedModel(t, [Op(kind, (0,), 1, "pool1", kernel=(8, 8), stride=(1, 1))], 0, 1)


def test_unsupported_op_is_refused(tmp_path):
    with pytest.raises(MobilenetsError, match="op pool1: kernels larger than 7x7 are not supp"):
        generate_c(_tiny("max_pool2d"), tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_cli_codegen_and_bad_inputs(trained, tmp_path, capsys):
    _, _, _, ckpt = trained
    out = tmp_path / "lib"
    args = ["codegen", str(ckpt), "--out", str(out), "--calib-samples", "64"]
    assert main([*args, "--calib-data", "fashion-mnist", "--sample-images", "2"]) == 0
    assert "MN_ARENA_BYTES" in capsys.readouterr().out
    assert (out / "model.c").is_file()
    # regenerating into our own folder is fine; into someone else's is not
    assert main([*args, "--calib-data", "random", "--target", "cortex-m4"]) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["codegen", str(ckpt), "--out", str(other), "--calib-data", "random"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not written by mobilenets codegen" in err
    assert (other / "notes.txt").read_text() == "mine"
    # the arena does not fit: the peak and the op that sets it, one line, exit 1
    rc = main([*args, "--calib-data", "random", "--max-sram", "1000"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0
    assert re.search(r"arena needs [\d,]+ B > --max-sram 1,000 B; the peak .* at op \S+", err)
    # no calibration data for a checkpoint
    assert main(["codegen", str(ckpt), "--out", str(tmp_path / "n")]) == 2
    assert "--calib-data" in capsys.readouterr().err


def test_cli_codegen_from_tflite(trained, tmp_path, capsys):
    """MODEL may be one of our int8 .tflite files; a file that is not a .tflite is refused."""
    qm, x, _, _ = trained
    path = write_tflite(qm, tmp_path / "m.tflite")
    out = tmp_path / "lib"
    assert main(["codegen", str(path), "--out", str(out)]) == 0
    if HAVE_GCC:
        assert np.array_equal(run_host(build_host(out), qm, x[:8]), run_int8(qm, x[:8]))
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    capsys.readouterr()
    assert main(["codegen", str(bad), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.tflite" in err


def test_cli_unsupported_model(trained, tmp_path, capsys):
    """A checkpoint whose config names a baseline (ResNet-50) is refused before its weights load."""
    ckpt = tmp_path / "resnet"
    shutil.copytree(trained[3], ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model"]["name"] = "resnet50"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    rc = main(["codegen", str(ckpt), "--out", str(tmp_path / "o"), "--calib-data", "random"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "resnet50 is not supported" in err


def test_summary_has_planned_int8_column(capsys):
    from mobilenets.micro.planner import plan_model

    assert main(["summary", "mobilenet_v2", "--width", "0.35", "--resolution", "96"]) == 0
    out = capsys.readouterr().out
    plan = plan_model(create_model("mobilenet_v2", 0.35, 96))
    assert "int8 live" in out.splitlines()[0]
    assert f"planned int8 peak: {plan.arena_bytes:,} B arena" in out
    assert plan.arena_bytes < plan.layer_by_layer_bytes
