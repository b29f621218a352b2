"""What `export` (ONNX and .tflite), `codegen` and `bench` refuse, and what an export leaves behind
when it fails (issue 20 items 3, 10 and 11)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import run_cli

from mobilenets import create_model
from mobilenets.checkpoint import save_checkpoint
from mobilenets.errors import MobilenetsError
from mobilenets.micro import export as micro_export
from mobilenets.micro.export import export_tflite
from mobilenets.preprocess import Preprocess

PREP = Preprocess(32, 1, [0.3], [0.4])


def _model(nan: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("mobilenet_v1", 0.25, 32, num_classes=3, in_chans=1).eval()
    if nan:
        with torch.no_grad():
            model.classifier.weight[0, 0] = float("nan")
    return model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    good = save_checkpoint(root / "good", _model(), ["a", "b", "c"], preprocess=PREP)
    bad = save_checkpoint(root / "nan", _model(nan=True), ["a", "b", "c"], preprocess=PREP)
    return good, bad


def one_line(err: str, needle: str) -> None:
    assert needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def nothing_written(folder: Path) -> None:
    assert [p.name for p in folder.iterdir()] == [], "a failed export left files behind"


# ------------------------------------------------------------------ item 3


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_export_refuses_a_checkpoint_with_nan_weights_and_writes_nothing(
    ckpts, tmp_path, capsys, fmt
):
    out = tmp_path / "out" / f"m.{fmt}"
    out.parent.mkdir()
    rc, _, err = run_cli(["export", ckpts[1], "--format", fmt, "--out", out], capsys)
    assert rc == 1
    one_line(err, "classifier.weight has 1 non-finite value")
    nothing_written(out.parent)


def test_codegen_refuses_a_checkpoint_with_nan_weights_in_one_line(ckpts, tmp_path, capsys):
    rc, _, err = run_cli(
        ["codegen", ckpts[1], "--calib-data", "random", "--out", tmp_path / "c"], capsys
    )
    assert rc == 1
    one_line(err, "non-finite")


def test_tflite_that_fails_verification_is_not_left_in_place(ckpts, tmp_path, capsys, monkeypatch):
    def fails(model, path, x):
        assert path.exists() and path.name != "m.tflite"  # verified under a temporary name
        raise MobilenetsError(f"{path}: LiteRT and PyTorch logits differ by 1")

    monkeypatch.setattr(micro_export, "_verify_fp32", fails)
    out = tmp_path / "out" / "m.tflite"
    out.parent.mkdir()
    rc, _, err = run_cli(["export", ckpts[0], "--format", "tflite", "--out", out], capsys)
    assert rc == 1 and "differ" in err
    nothing_written(out.parent)
    with pytest.raises(MobilenetsError, match="differ"):
        export_tflite(_model(), out)
    nothing_written(out.parent)


def test_interrupted_tflite_export_leaves_neither_file_nor_report(
    ckpts, tmp_path, capsys, monkeypatch
):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(micro_export, "_verify_fp32", interrupted)
    out = tmp_path / "out" / "m.tflite"
    out.parent.mkdir()
    try:
        rc, _, _ = run_cli(["export", ckpts[0], "--format", "tflite", "--out", out], capsys)
    except KeyboardInterrupt:
        rc = 130
    assert rc == 130
    nothing_written(out.parent)


def test_tflite_export_writes_the_file_and_its_report_together(ckpts, tmp_path, capsys):
    out = tmp_path / "out" / "m.tflite"
    out.parent.mkdir()
    rc, stdout, err = run_cli(["export", ckpts[0], "--format", "tflite", "--out", out], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.tflite", "m.tflite.json"]
    import json

    assert json.loads((out.parent / "m.tflite.json").read_text())["path"] == str(out)


# ------------------------------------------------------------------ item 10


def test_export_tflite_names_the_path_argument_when_it_is_none():
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        export_tflite(_model(), None)


def test_export_tflite_names_a_model_that_is_not_a_module(tmp_path):
    with pytest.raises(TypeError, match="model must be a mobilenets torch.nn.Module"):
        export_tflite("mobilenet_v1", tmp_path / "m.tflite")


@pytest.mark.parametrize("calib", [torch.empty(0, 1, 32, 32), [], [torch.empty(0, 1, 32, 32)]])
def test_export_tflite_names_calib_data_with_no_images(tmp_path, calib):
    with pytest.raises(ValueError, match="calib_data has 0 images"):
        export_tflite(_model(), tmp_path / "m.tflite", int8=True, calib_data=calib)
    nothing_written(tmp_path)


# ------------------------------------------------------------------ item 11


@pytest.mark.parametrize(
    "opt",
    [
        ["--opset", "18"],
        ["--activation-type", "int8"],
        ["--weight-bits", "8"],
        ["--int8-out", "x.int8.onnx"],
    ],
)
def test_export_tflite_refuses_onnx_only_options(ckpts, tmp_path, capsys, opt):
    out = tmp_path / "m.tflite"
    rc, _, err = run_cli(["export", ckpts[0], "--format", "tflite", "--out", out, *opt], capsys)
    assert rc == 2
    one_line(err, f"{opt[0]} apply to --format onnx only")
    nothing_written(tmp_path)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_export_out_folder_is_refused_in_one_line(ckpts, tmp_path, capsys, fmt):
    rc, _, err = run_cli(["export", ckpts[0], "--format", fmt, "--out", tmp_path], capsys)
    assert rc == 2
    one_line(err, "is a folder")
    nothing_written(tmp_path)


@pytest.mark.parametrize(("fmt", "name"), [("tflite", "x.onnx"), ("onnx", "x.tflite")])
def test_export_refuses_an_out_name_of_the_other_format(ckpts, tmp_path, capsys, fmt, name):
    rc, _, err = run_cli(["export", ckpts[0], "--format", fmt, "--out", tmp_path / name], capsys)
    assert rc == 2
    one_line(err, "--out")
    nothing_written(tmp_path)


def test_bench_of_a_tflite_file_points_at_the_tflite_int8_runtime(tmp_path, capsys):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"")
    rc, _, err = run_cli(["bench", path], capsys)
    assert rc == 2
    one_line(err, "--runtimes tflite-int8")
