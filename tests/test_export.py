"""ONNX export, BN folding and int8 quantization, checked against PyTorch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision
from support import fit_tiny

from mobilenets import ModelConfig, create_model
from mobilenets.checkpoint import save_checkpoint
from mobilenets.cli import main
from mobilenets.export import export_onnx, ort_session, read_metadata, run_ort
from mobilenets.fold import fold_bn
from mobilenets.onnx_quant import quantize_onnx
from mobilenets.preprocess import Preprocess
from mobilenets.testing import randomize_bn
from mobilenets.transforms import to_model_input

FMNIST = Path("/usr/share/datasets/fashion-mnist")
HAVE_FMNIST = (FMNIST / "train-images-idx3-ubyte.gz").is_file()
RES = 32
MEAN, STD = [0.286], [0.353]


# Wider statistics than the int8 tests': BN folding must stay exact far from the defaults.
WIDE_BN = {"mean_std": 0.5, "var_range": (0.1, 2.1), "beta_std": 0.3}


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A separable 10-class task: class k brightens one 7x7 patch of noisy 28x28 images."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand(n, 1, 28, 28, generator=g) * 100
    for k in range(10):
        r, c = divmod(k, 4)
        x[y == k, :, r * 7 : r * 7 + 7, c * 7 : c * 7 + 7] += 120
    return x.clamp(0, 255).to(torch.uint8), y


def image_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, labels, test images, labels): Fashion-MNIST when installed."""
    if HAVE_FMNIST:
        from mobilenets.data import load_fashion_mnist

        ds = load_fashion_mnist(FMNIST)
        tr, te = ds.splits["train"], ds.splits["test"]
        return tr.images[:20000], tr.labels[:20000], te.images[:1000], te.labels[:1000]
    return (*synthetic(8000, 0), *synthetic(1000, 1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A MobileNetV2 (alpha 0.35, 32 px, 1 channel) trained 200 steps, saved as a checkpoint."""
    torch.manual_seed(0)
    xtr, ytr, xte, yte = image_data()
    model = create_model("mobilenet_v2", 0.35, RES, num_classes=10, in_chans=1, drop_rate=0.0)
    fit_tiny(model, xtr, ytr, 200, MEAN, STD)
    ckpt = save_checkpoint(
        tmp_path_factory.mktemp("ck") / "ckpt", model, [f"class {i}" for i in range(10)], MEAN, STD
    )
    return model, ckpt, xtr, xte, yte


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    model, _, _, _, _ = trained
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    info = export_onnx(
        model,
        path,
        class_names=[f"class {i}" for i in range(10)],
        preprocess=Preprocess(RES, 1, MEAN, STD),
    )
    return path, info


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "resnet18"])
def test_fold_bn_is_exact(name):
    if name == "resnet18":  # any torchvision model: conv -> bn pairs are found with torch.fx
        model = randomize_bn(torchvision.models.resnet18(num_classes=7), **WIDE_BN)
    else:
        model = randomize_bn(create_model(name, 0.5, 32, num_classes=7), **WIDE_BN)
    folded = fold_bn(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # a copy
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref, got = model(x), folded(x)
    assert ref.abs().max() > 0.1  # the comparison is not between two near-zero outputs
    # Random BN statistics blow ResNet's logits up to ~1e3: compare relative to their size.
    scale = 1.0 if name.startswith("mobilenet") else float(ref.abs().max())
    assert (ref - got).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("option", [("conv_type", "full"), ("expansion_activation", "linear")])
def test_v2_ablations_export_and_match_pytorch(tmp_path, option):
    """The V2 ablation blocks (a standard 3x3 in the block; no ReLU after the expansion) export
    like the paper's block: onnxruntime's logits equal PyTorch's and the config round-trips."""
    model = randomize_bn(create_model("mobilenet_v2", 0.35, 32, num_classes=5, **dict([option])))
    info = export_onnx(model, tmp_path / "m.onnx")
    assert info["max_abs_diff"] <= 1e-4
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(run_ort(ort_session(tmp_path / "m.onnx"), x) - ref).max() <= 1e-4
    assert getattr(read_metadata(tmp_path / "m.onnx")["config"], option[0]) == option[1]


def test_export_is_one_file_with_dynamic_batch_and_metadata(tmp_path):
    model = randomize_bn(
        create_model("mobilenet_v2", 0.35, 48, num_classes=5, in_chans=3), **WIDE_BN
    )
    names = ["cat", "dog", "bird", "fish", "snail"]
    out = tmp_path / "a" / "m.onnx"
    out.parent.mkdir()
    prep = Preprocess(48, 3, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3], 0.875)
    info = export_onnx(model, out, class_names=names, preprocess=prep)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx"]  # no .onnx.data
    assert info["max_abs_diff"] <= 1e-4 and info["bytes"] == out.stat().st_size

    moved = tmp_path / "b" / "copy.onnx"
    moved.parent.mkdir()
    shutil.move(out, moved)
    proto = onnx.load(str(moved))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch

    sess = ort_session(moved)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 48, 48)
        with torch.no_grad():
            ref = model(x).numpy()
        got = run_ort(sess, x)
        assert got.shape == (batch, 5)
        assert np.abs(ref - got).max() <= 1e-4

    meta = read_metadata(moved)
    assert meta["config"] == model.config
    assert (
        ModelConfig.from_json({p.key: p.value for p in proto.metadata_props}["config"])
        == model.config
    )
    assert meta["class_names"] == names
    assert meta["preprocess"] == prep
    assert meta["architecture"] == "mobilenet_v2"


def test_onnxruntime_matches_pytorch_on_real_images(trained, exported):
    model, _, _, xte, yte = trained
    path, info = exported
    assert info["max_abs_diff"] <= 1e-4
    x = to_model_input(xte[:256], RES, MEAN, STD)
    with torch.no_grad():
        ref = model(x).numpy()
    got = run_ort(ort_session(path), x)
    assert np.abs(ref - got).max() <= 1e-4
    assert (ref.argmax(1) == yte[:256].numpy()).mean() > 0.5  # the model learned something


def test_int8_agrees_with_fp32(trained, exported, tmp_path):
    _, _, xtr, xte, yte = trained
    path, _ = exported
    out = tmp_path / "int8.onnx"
    info = quantize_onnx(
        path, out, xtr[:256]
    )  # uint8 images: preprocessed with the file's metadata
    assert info["calib_samples"] == 256 and info["activation_type"] == "uint8"
    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    w8 = [
        i
        for i in proto.graph.initializer
        if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4
    ]
    assert w8, "conv weights are stored as int8"
    assert read_metadata(out)["config"] == read_metadata(path)["config"]
    assert out.stat().st_size < 0.5 * path.stat().st_size

    x = to_model_input(xte, RES, MEAN, STD)
    fp = run_ort(ort_session(path), x).argmax(1)
    q = run_ort(ort_session(out), x).argmax(1)
    assert (fp == q).mean() >= 0.95, (fp == q).mean()
    assert abs((fp == yte.numpy()).mean() - (q == yte.numpy()).mean()) <= 0.03


def test_int8_activation_type_int8_runs(exported, trained, tmp_path):
    _, _, xtr, xte, _ = trained
    path, _ = exported
    info = quantize_onnx(
        path, tmp_path / "s8.onnx", xtr[:64], activation_type="int8", calib_method="percentile"
    )
    assert "int8 asymmetric" in info["scheme"]
    x = to_model_input(xte[:200], RES, MEAN, STD)
    fp = run_ort(ort_session(path), x).argmax(1)
    q = run_ort(ort_session(tmp_path / "s8.onnx"), x).argmax(1)
    assert (fp == q).mean() >= 0.9


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST is not installed")
def test_cli_export_int8_writes_report(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOBILENETS_OFFLINE", "1")
    _, ckpt, _, _, _ = trained
    out = tmp_path / "fm.onnx"
    rc = main(
        [
            "export",
            str(ckpt),
            "--format",
            "onnx",
            "--out",
            str(out),
            "--int8",
            "--calib-data",
            "fashion-mnist",
            "--data-dir",
            str(FMNIST),
            "--calib-samples",
            "256",
            "--eval-samples",
            "300",
        ]
    )
    assert rc == 0
    report = json.loads((tmp_path / "fm.onnx.json").read_text())
    assert report["bytes"] == out.stat().st_size
    assert report["max_abs_diff"] <= 1e-4
    assert report["int8_bytes"] == (tmp_path / "fm.int8.onnx").stat().st_size
    assert 0.5 < report["fp32_top1"] <= 1 and 0.5 < report["int8_top1"] <= 1
    assert report["test_images"] == 300
    assert report["int8_fp32_agreement"] >= 0.95, report


def test_cli_export_errors(trained, tmp_path, capsys):
    _, ckpt, _, _, _ = trained
    assert main(["export", str(ckpt), "--out", str(tmp_path / "x.onnx"), "--int8"]) == 2
    assert "--calib-data" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x.onnx")]) == 1
    assert "not found" in capsys.readouterr().err


def test_int8_file_is_exact_in_onnxruntimes_fused_x86_kernels(exported, trained, tmp_path):
    """The fused int8 kernels (graph optimizations on) give the unfused reference's logits.

    With full 8-bit weights, onnxruntime's uint8 x int8 kernels saturate on x86 CPUs without
    VNNI (AVX2); 7-bit weights (the default) cannot.
    """
    import onnxruntime as ort

    _, _, xtr, xte, _ = trained
    path, _ = exported
    out = tmp_path / "q.onnx"
    info = quantize_onnx(path, out, xtr[:64])
    assert info["weight_bits"] == 7
    x = to_model_input(xte[:64], RES, MEAN, STD).numpy()
    logits = []
    for level in (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    ):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        sess = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
        logits.append(sess.run(None, {"input": x})[0])
    scale = float(np.abs(logits[0]).max())
    assert np.abs(logits[0] - logits[1]).max() <= 0.05 * scale
