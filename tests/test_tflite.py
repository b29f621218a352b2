""".tflite writer/reader, export_tflite and the CLI (export, predict, eval) with bad inputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support import run_module

from mobilenets import ModelConfig, create_model, quantize_int8, run_int8
from mobilenets.checkpoint import save_checkpoint
from mobilenets.cli import main
from mobilenets.errors import MobilenetsError, UsageError
from mobilenets.micro import ops, runtimes
from mobilenets.micro.export import export_tflite, quantize_input
from mobilenets.micro.tflite import read_tflite, write_tflite
from mobilenets.predict import Predictor
from mobilenets.preprocess import Preprocess

needs_tflm = pytest.mark.skipif(not runtimes.have_tflm(), reason="tflite-micro is not installed")
needs_litert = pytest.mark.skipif(
    not runtimes.have_litert(), reason="ai-edge-litert is not installed"
)
FMNIST = Path("/usr/share/datasets/fashion-mnist")
HAVE_FMNIST = (FMNIST / "train-images-idx3-ubyte.gz").is_file()
NAMES = [f"class {i}" for i in range(10)]


def small_model(padding: str = "symmetric", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model(
        "mobilenet_v2", 0.35, 28, num_classes=10, in_chans=1, small_input=True, padding=padding
    )
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
        elif isinstance(m, torch.nn.Linear):
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An (untrained, randomized) small V2 saved as a checkpoint that records its dataset."""
    path = tmp_path_factory.mktemp("ck") / "ck"
    meta = {"data": "fashion-mnist"}
    return save_checkpoint(path, small_model(), NAMES, [0.286], [0.353], meta=meta)


def test_writer_round_trip_keeps_graph_and_metadata(tmp_path):
    q = quantize_int8(small_model(), torch.randn(16, 1, 28, 28))
    q.class_names = NAMES
    q.preprocess = Preprocess(28, 1, (0.286,), (0.353,)).to_dict()
    path = write_tflite(q, tmp_path / "m.tflite", {"data": "fashion-mnist"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]  # atomic: no temp left
    back, meta = read_tflite(path)
    assert meta["data"] == "fashion-mnist" and meta["class_names"] == NAMES
    assert ModelConfig.from_dict(meta["config"]) == ModelConfig.from_dict(q.config)
    assert Preprocess.from_dict(meta["preprocess"]) == Preprocess(28, 1, (0.286,), (0.353,))
    assert [op.kind for op in back.ops] == [op.kind for op in q.ops]
    for a, b in zip(q.ops, back.ops, strict=True):
        assert (a.stride, a.padding, a.activation) == (b.stride, b.padding, b.activation)
        assert (a.act_min, a.act_max) == (b.act_min, b.act_max)
        if a.weights is not None:
            assert np.array_equal(a.weights, b.weights) and np.array_equal(a.bias, b.bias)
            assert np.array_equal(a.weight_scales, b.weight_scales)
        ta, tb = q.tensors[a.output], back.tensors[b.output]
        assert (ta.shape, ta.scale, ta.zero_point) == (tb.shape, tb.scale, tb.zero_point)
    xq = np.random.default_rng(0).integers(-128, 128, (4, 28, 28, 1)).astype(np.int8)
    assert np.array_equal(run_int8(q, xq), run_int8(back, xq))


@needs_litert
@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_fp32_tflite_matches_pytorch_in_litert(padding, tmp_path):
    model = small_model(padding)
    x = torch.randn(6, 1, 28, 28)
    r = export_tflite(model, tmp_path / "f.tflite", verify_inputs=x)
    assert r["format"] == "tflite-fp32" and r["max_abs_diff"] <= 1e-4 * max(1, r["max_abs_logit"])
    assert ("PAD" in r["ops"]) == (padding == "symmetric")
    assert r["max_abs_logit"] > 0.1
    graph, _ = read_tflite(tmp_path / "f.tflite")
    assert graph.is_float


@needs_tflm
@needs_litert
def test_export_report(tmp_path):
    model = small_model()
    calib = torch.randn(32, 1, 28, 28)
    y = torch.randint(0, 10, (32,))
    r = export_tflite(
        model, tmp_path / "q.tflite", int8=True, calib_data=calib, eval_data=[(calib[:40], y)]
    )
    assert r["bytes"] == (tmp_path / "q.tflite").stat().st_size
    # stem + 16 expand + 17 project + head + classifier (a conv); 2 PADs at 28 -> 14 -> 7
    shortcuts = sum(getattr(m, "bottleneck_shortcut", False) for m in model.modules())
    assert r["ops"]["CONV_2D"] == 36 and r["ops"]["PAD"] == 2
    assert r["ops"]["ADD"] == shortcuts == 11
    assert r["max_abs_diff_lsb"] == 0 and r["litert_max_abs_diff_lsb"] == 0
    arena = r["tflm_arena_bytes"]
    assert arena % 4 == 0 and r["tflm_activation_bytes"] + r["tflm_persistent_bytes"] <= arena
    with pytest.raises(RuntimeError):  # the bisection's answer is the smallest that works
        runtimes.tflm_outputs(tmp_path / "q.tflite", np.zeros((1, 28, 28, 1), np.int8), arena - 4)
    assert r["eval_samples"] == 32 and 0 <= r["agreement"] <= 1
    assert r["same_padding"]["tflm_arena_bytes"] < arena and "PAD" in r["padding_note"]


@needs_tflm
@needs_litert
@pytest.mark.skipif(not HAVE_FMNIST, reason="needs the Fashion-MNIST Debian package")
def test_cli_export_predict_eval(checkpoint, tmp_path):
    out = tmp_path / "m.tflite"
    args = ["--calib-data", "fashion-mnist", "--calib-samples", "32", "--eval-samples", "50"]
    assert main(["export", str(checkpoint), "--format", "tflite", "--int8", *args,
                 "--verify-samples", "5", "--out", str(out)]) == 0  # fmt: skip
    report = json.loads(out.with_name("m.tflite.json").read_text())
    assert report["eval_samples"] == 50 and report["verify_samples"] == 5
    assert report["max_abs_diff_lsb"] == 0 and report["calib_samples"] == 32
    assert report["calib_method"] == "mse"  # the .tflite default (micro.quantizer's evidence)
    for key in ("bytes", "ops", "tflm_arena_bytes", "tflm_activation_bytes", "int8_top1"):
        assert report[key] is not None
    from PIL import Image

    from mobilenets.data import load_fashion_mnist

    img = load_fashion_mnist(FMNIST).splits["test"].images[0][0].numpy()
    Image.fromarray(img).save(tmp_path / "a.png")
    p = run_module(
        "predict", str(out), str(tmp_path / "a.png"), "--json", "--top-k", "2", timeout=600
    )
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)[0]["predictions"]
    pred = Predictor(out)
    ref = pred.rank(pred.logits(pred.preprocess(pred.load(tmp_path / "a.png"))), 2)[0]
    assert [g["class"] for g in got] == [r["class"] for r in ref] and got[0]["class"] in NAMES
    fast = run_module("predict", str(out), str(tmp_path / "a.png"), "--fast", timeout=600)
    assert fast.returncode == 0 and "few LSB" in fast.stderr
    from mobilenets.evaluation import evaluate

    root = tmp_path / "imgs"  # a small ImageFolder: 10,000 Fashion-MNIST images take minutes
    for split, names in (("train", NAMES), ("val", NAMES[:2])):
        for c in names:
            (root / split / c).mkdir(parents=True)
            Image.fromarray(img).save(root / split / c / "a.png")
    r = evaluate(out, data=f"imagefolder:{root}", out=tmp_path / "ev")
    assert r["n"] == 2 and r["split"] == "test"


# ---------------------------------------------------------------- bad inputs


def test_int8_without_or_with_missing_calibration_data(checkpoint, tmp_path, capsys):
    out = str(tmp_path / "m.tflite")
    assert main(["export", str(checkpoint), "--format", "tflite", "--int8", "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--int8 needs --calib-data" in err
    missing = f"imagefolder:{tmp_path / 'nope'}"
    rc = main(["export", str(checkpoint), "--format", "tflite", "--int8", "--calib-data",
               missing, "--out", out])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc != 0 and err.count("\n") == 0 and "nope" in err
    with pytest.raises(UsageError, match="needs calibration data"):
        export_tflite(small_model(), out, int8=True)


def test_calibration_channels_must_match(tmp_path):
    with pytest.raises(UsageError, match=r"1-channel model, got shape \(4, 3, 28, 28\)"):
        export_tflite(
            small_model(), tmp_path / "m.tflite", int8=True, calib_data=torch.randn(4, 3, 28, 28)
        )


def test_vgg16_exports_only_at_224(tmp_path):
    class Vgg(torch.nn.Module):  # the refusal comes before any work: a config is enough
        config = ModelConfig("vgg16", resolution=64)

    with pytest.raises(UsageError, match="vgg16 exports to .tflite only at 224 px"):
        export_tflite(Vgg(), tmp_path / "v.tflite")


def test_foreign_or_unsupported_tflite_is_refused(tmp_path, monkeypatch, capsys):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(MobilenetsError, match="not a .tflite file"):
        read_tflite(junk)
    if runtimes.have_tflm():  # a real .tflite that is not ours: the TFLite Micro example model
        import tflite_micro

        sine = Path(tflite_micro.__file__).parent / "python/tflite_micro/sine_float.tflite"
        with pytest.raises(MobilenetsError, match=r"a \(1, H, W, C\) image is expected"):
            Predictor(sine)  # foreign files run (issue 16), but this one is no image classifier
    q = quantize_int8(small_model(), torch.randn(8, 1, 28, 28))
    pool = ops.OPS["avg_pool2d"]
    monkeypatch.setitem(ops.OPS, "avg_pool2d", dataclasses.replace(pool, code=2))  # CONCATENATION
    path = write_tflite(q, tmp_path / "concat.tflite")
    assert main(["predict", str(path), str(junk)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is CONCATENATION, not supported (supported: ADD," in err


def test_predict_needs_a_runtime_that_can_run_the_file(tmp_path, monkeypatch, capsys):
    export_tflite(small_model(), tmp_path / "f.tflite", arena=False)
    q = quantize_int8(small_model(), torch.randn(8, 1, 28, 28))
    q.preprocess = Preprocess(28, 1, (0.286,), (0.353,)).to_dict()
    write_tflite(q, tmp_path / "q.tflite")
    monkeypatch.setattr(runtimes, "have_litert", lambda: False)
    with pytest.raises(MobilenetsError, match="fp32 .tflite needs LiteRT"):
        Predictor(tmp_path / "f.tflite")
    pred = Predictor(tmp_path / "q.tflite")  # int8 without LiteRT: the NumPy reference
    assert pred.backend.name == "reference"
    x = torch.randn(2, 1, 28, 28)
    assert np.array_equal(pred.logits(x).argmax(1), run_int8(q, quantize_input(x, q)).argmax(1))
    assert main(["predict", str(tmp_path / "f.tflite"), str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs LiteRT" in err
