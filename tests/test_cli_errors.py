"""The command line's error contract: one line, exit 2 for usage and 1 for runtime errors, 130 on Ctrl-C, quiet on a closed pipe, full traceback only with MOBILENETS_DEBUG."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from support import NAMES, PREP, one_line_error

from mobilenets import cli, create_model
from mobilenets.checkpoint import save_checkpoint
from mobilenets.cli import args as cli_args
from mobilenets.cli import main
from mobilenets.errors import MobilenetsError
from mobilenets.predict import Predictor


def test_predict_and_eval_fail_on_non_finite_outputs(tiny, tmp_path, capsys):
    from mobilenets.evaluation import tally

    model, _, _, img = tiny
    broken = create_model("mobilenet_v1", 0.25, 32, num_classes=3, in_chans=1).eval()
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.classifier.weight.fill_(float("nan"))
    ck = save_checkpoint(tmp_path / "nan", broken, NAMES, preprocess=PREP)
    assert main(["predict", str(ck), str(img)]) == 1
    one_line_error(capsys.readouterr().err, "non-finite")
    batches = [(torch.zeros(2, 1, 32, 32), torch.tensor([0, 1]))]
    with pytest.raises(MobilenetsError, match="non-finite"):
        tally(broken, batches, 3, torch.device("cpu"))


@pytest.mark.parametrize("threads", ["99999", "0", "-2"])
def test_bench_refuses_thread_count_beyond_cpus(threads, capsys):
    assert main(["bench", "mobilenet_v1", "--threads", threads]) == 2
    one_line_error(capsys.readouterr().err, "--threads")


@pytest.mark.parametrize("threads", ["100000", "-1"])
def test_predict_refuses_thread_count_beyond_cpus(tiny, threads, capsys):
    _, _, onnx_path, img = tiny
    assert main(["predict", str(onnx_path), str(img), "--threads", threads]) == 2
    one_line_error(capsys.readouterr().err, "--threads")
    with pytest.raises(MobilenetsError, match="threads"):
        Predictor(onnx_path, threads=int(threads))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["summary", "mobilenet_v1", "--width", "1e9"], "--width"),
        (["summary", "mobilenet_v1", "--width", "inf"], "--width"),
        (["summary", "mobilenet_v1", "--width", "nan"], "--width"),
        (["eval", "CKPT", "--batch-size", "0"], "--batch-size"),
        (["eval", "CKPT", "--workers", "-1"], "--workers"),
        (["export", "CKPT", "--out", "OUT", "--eval-samples", "0"], "--eval-samples"),
        (["bench", "mobilenet_v1", "--runtimes", ","], "--runtimes"),
    ],
)
def test_bad_numeric_options_give_one_line_and_exit_2(tiny, tmp_path, argv, needle, capsys):
    _, ckpt, _, _ = tiny
    argv = [
        str(ckpt) if a == "CKPT" else str(tmp_path / "x.onnx") if a == "OUT" else a for a in argv
    ]
    assert main(argv) == 2
    one_line_error(capsys.readouterr().err, needle)
    assert not (tmp_path / "x.onnx").exists()


def test_float_range_helper_is_reusable_for_train_options():
    parse = cli_args.float_range(0, 1, hi_open=True)
    assert parse("0.1") == 0.1
    for bad in ("1", "5", "-1", "nan", "inf", "x"):
        with pytest.raises(Exception, match="must be|expected"):
            parse(bad)


def test_bench_refuses_model_options_for_a_saved_model(tiny, capsys):
    _, ckpt, onnx_path, _ = tiny
    for model in (ckpt, onnx_path):
        assert main(["bench", str(model), "--width", "4", "--resolution", "500"]) == 2
        one_line_error(capsys.readouterr().err, "--width, --resolution")


@pytest.mark.parametrize("command", ["summary", "bench"])
def test_baselines_refuse_mobilenet_only_options(command, capsys):
    for opt in (["--width", "0.5"], ["--activation", "relu"]):
        assert main([command, "resnet50", *opt]) == 2
        one_line_error(capsys.readouterr().err, opt[0])


def test_closed_output_pipe_exits_quietly():
    p = subprocess.Popen(
        [sys.executable, "-m", "mobilenets", "summary", "mobilenet_v1", "--resolution", "32"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    p.stdout.close()  # like `| head` that has read enough
    err = p.stderr.read().decode()
    assert p.wait() == 0 and err == ""


def test_ctrl_c_exits_130_without_traceback(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("mobilenets.cli.compare.run", interrupted)
    assert main(["compare"]) == 130
    one_line_error(capsys.readouterr().err, "interrupted")
    monkeypatch.setattr(cli, "build_parser", lambda: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["compare"]) == 130  # Ctrl-C while the commands load


def test_missing_input_file_exits_1_everywhere(tmp_path, capsys):
    missing = str(tmp_path / "nothing.onnx")
    for argv in (
        ["bench", missing],
        ["predict", missing, "x.png"],
        ["export", str(tmp_path / "nockpt"), "--out", str(tmp_path / "o.onnx")],
        ["eval", str(tmp_path / "nockpt")],
    ):
        assert main(argv) == 1, argv
        one_line_error(capsys.readouterr().err, str(tmp_path))


def test_debug_env_shows_the_full_traceback(tmp_path, capsys, monkeypatch):
    argv = ["bench", str(tmp_path / "nothing.onnx")]
    assert main(argv) == 1
    assert "Traceback" not in capsys.readouterr().err
    monkeypatch.setenv("MOBILENETS_DEBUG", "1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "no such ONNX file" in err


def test_unexpected_errors_are_one_line_unless_debugging(monkeypatch, capsys):
    def bug(args):
        raise IndexError("list index out of range")

    monkeypatch.setattr("mobilenets.cli.compare.run", bug)
    assert main(["compare"]) == 1
    one_line_error(capsys.readouterr().err, "IndexError")


def test_spin_option_reaches_the_onnxruntime_session(tiny, capsys):
    _, _, onnx_path, img = tiny
    for spin, flag in ((True, "--spin"), (False, "--no-spin")):
        sess = Predictor(onnx_path, threads=1, spin=spin).backend.session
        opts = sess.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == str(int(spin))
        assert main(["predict", str(onnx_path), str(img), flag, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["predictions"]
    assert (
        main(
            [
                "bench",
                str(onnx_path),
                "--runtimes",
                "onnx",
                "--no-spin",
                "--runs",
                "2",
                "--warmup",
                "0",
                "--json",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)[0]["spin"] is False


def test_pretrained_errors_are_precise(tmp_path, capsys):
    import torchvision

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.pth"
    noise.write_bytes(b"\x13" + np.random.default_rng(0).bytes(999))
    r18 = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), r18)
    ints = tmp_path / "ints.pth"
    v1 = create_model("mobilenet_v1", 0.25, 32)
    torch.save({k: v.round().long() for k, v in v1.state_dict().items()}, ints)
    cases = [
        (empty, "mobilenet_v1", "empty"),
        (noise, "mobilenet_v1", "not a PyTorch file"),
        (r18, "resnet50", "resnet18"),
        (ints, "mobilenet_v1", "int64"),
    ]
    for path, name, needle in cases:
        kw = {"width_mult": 0.25} if name == "mobilenet_v1" else {}
        with pytest.raises(MobilenetsError, match=needle) as e:
            create_model(name, resolution=32, pretrained=path, **kw)
        assert "pickled" not in str(e.value)
