"""Issue 7, deployment and CLI side: each test is named after the claim it restores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import mobilenets
from mobilenets import cli, create_model
from mobilenets.checkpoint import CONFIG, load_checkpoint, save_checkpoint
from mobilenets.cli import args as cli_args
from mobilenets.cli import main
from mobilenets.errors import MobilenetsError
from mobilenets.export import export_onnx, ort_session, read_metadata, run_ort
from mobilenets.predict import Predictor
from mobilenets.preprocess import Preprocess

NAMES = ["a", "b", "c"]
PREP = Preprocess(32, 1, [0.3], [0.4], 0.875)


def one_line_error(err: str, needle: str) -> None:
    assert needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny MobileNetV1 saved as a checkpoint and exported to ONNX, plus one image."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v1", 0.25, 32, num_classes=3, in_chans=1).eval()
    root = tmp_path_factory.mktemp("tiny")
    ckpt = save_checkpoint(root / "ckpt", model, NAMES, preprocess=PREP)
    onnx_path = root / "m.onnx"
    export_onnx(model, onnx_path, class_names=NAMES, preprocess=PREP)
    img = root / "x.png"
    Image.fromarray(np.arange(40 * 40, dtype=np.uint8).reshape(40, 40)).save(img)
    return model, ckpt, onnx_path, img


def copy_ckpt(ckpt: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    for f in ckpt.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    info = json.loads((dst / CONFIG).read_text())
    edit(info)
    (dst / CONFIG).write_text(json.dumps(info))
    return dst


# ------------------------------------------------------------------ Preprocess, one owner


def test_checkpoint_stores_one_preprocess_entry(tiny):
    _, ckpt, onnx_path, _ = tiny
    info = json.loads((ckpt / CONFIG).read_text())
    assert info["preprocess"] == PREP.to_dict()
    assert "mean" not in info and "std" not in info and "preprocess" not in info["meta"]
    assert load_checkpoint(ckpt).preprocess == PREP
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(props["preprocess"]) == PREP.to_dict()
    assert not {"mean", "std", "crop_pct", "resolution", "in_chans"} & set(props)
    assert read_metadata(onnx_path)["preprocess"] == PREP
    assert Predictor(ckpt).preprocessing == Predictor(onnx_path).preprocessing == PREP


def test_old_checkpoint_with_top_level_mean_std_still_loads(tiny, tmp_path):
    _, ckpt, _, img = tiny

    def old_style(info):
        p = info.pop("preprocess")
        info["mean"], info["std"] = p["mean"], p["std"]
        info["meta"]["preprocess"] = {"resolution": 32, "crop_pct": 0.875}

    old = copy_ckpt(ckpt, tmp_path / "old", old_style)
    assert load_checkpoint(old).preprocess == PREP
    new, got = Predictor(ckpt).predict(str(img)), Predictor(old).predict(str(img))
    assert new == got


def test_old_onnx_with_five_preprocess_props_still_loads(tiny, tmp_path):
    from mobilenets.export import set_metadata

    _, _, onnx_path, img = tiny
    proto = onnx.load(str(onnx_path))
    keep = [p for p in proto.metadata_props if p.key != "preprocess"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    set_metadata(
        proto,
        {
            "mobilenets.format_version": "1",
            "resolution": "32",
            "in_chans": "1",
            "mean": "[0.3]",
            "std": "[0.4]",
            "crop_pct": "0.875",
        },
    )
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    assert read_metadata(old)["preprocess"] == PREP
    assert Predictor(old).predict(str(img)) == Predictor(onnx_path).predict(str(img))


# ------------------------------------------------------------------ item 3


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


# ------------------------------------------------------------------ items 9, 17, 18


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


# ------------------------------------------------------------------ item 12


def test_export_refuses_unsupported_opset_and_reports_the_real_one(tiny, tmp_path, capsys):
    model, ckpt, onnx_path, _ = tiny
    out = tmp_path / "x.onnx"
    assert main(["export", str(ckpt), "--out", str(out), "--opset", "99"]) == 2
    one_line_error(capsys.readouterr().err, "--opset")
    assert not out.exists()
    proto = onnx.load(str(onnx_path))
    assert max(o.version for o in proto.opset_import if o.domain == "") == 18


# ------------------------------------------------------------------ item 14


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda i: i.update(class_names=["x", "y", "z", "w"]), "class_names"),
        (lambda i: i["preprocess"].update(std=[0]), "std"),
        (lambda i: i["preprocess"].update(mean="zero"), "mean"),
        (lambda i: i["model"].update(width_mult=0.5), "shape"),
        (lambda i: i["model"].pop("name"), "model"),
        (lambda i: i.pop("model"), "model"),
        (lambda i: i["model"].update(resolution=64), "preprocess"),
    ],
)
def test_damaged_checkpoint_config_names_the_field(tiny, tmp_path, edit, needle, capsys):
    _, ckpt, _, img = tiny
    bad = copy_ckpt(ckpt, tmp_path / "bad", edit)
    with pytest.raises(MobilenetsError, match=needle):
        load_checkpoint(bad)
    assert main(["predict", str(bad), str(img), "--top-k", "5"]) == 1
    one_line_error(capsys.readouterr().err, needle)


# ------------------------------------------------------------------ item 15


def test_summary_at_3000_px_peaks_under_1_gb():
    code = (
        "import resource, subprocess, sys;"
        "r = subprocess.run([sys.executable, '-m', 'mobilenets', 'summary', 'mobilenet_v2',"
        " '--resolution', '3000', '--json'], capture_output=True);"
        "assert r.returncode == 0, r.stderr;"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak_kib = int(out.stdout.strip())
    assert peak_kib < 1024 * 1024, f"{peak_kib / 1024:.0f} MiB"


def test_profile_leaves_the_models_weights_device_and_mode_unchanged():
    model = create_model("mobilenet_v2", 0.35, 64, num_classes=5)
    model.train()
    model.blocks[0].eval()  # a mixed train/eval state must survive too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    rep = mobilenets.profile(model, resolution=96)
    assert rep.macs > 0 and rep.params == sum(p.numel() for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(t.device.type == "cpu" for t in after.values())


# ------------------------------------------------------------------ item 16


def test_int8_onnx_dedupes_scales_and_drops_unused_domains(tiny, tmp_path, monkeypatch):
    from mobilenets import onnx_quant

    model, _, onnx_path, _ = tiny
    calib = torch.randn(16, 1, 32, 32)
    small = tmp_path / "small.onnx"
    onnx_quant.quantize_onnx(onnx_path, small, calib)
    monkeypatch.setattr(onnx_quant, "shrink", lambda proto: None)
    big = tmp_path / "big.onnx"
    onnx_quant.quantize_onnx(onnx_path, big, calib)
    assert small.stat().st_size < big.stat().st_size
    proto = onnx.load(str(small))
    seen = set()
    for init in proto.graph.initializer:
        if np.prod(init.dims) <= 1024:
            key = (init.data_type, tuple(init.dims), onnx.numpy_helper.to_array(init).tobytes())
            assert key not in seen, init.name
            seen.add(key)
    used = {n.domain for n in proto.graph.node}
    assert {o.domain for o in proto.opset_import} <= used | {""}
    onnx.checker.check_model(proto)
    x = torch.randn(8, 1, 32, 32)
    np.testing.assert_array_equal(run_ort(ort_session(small), x), run_ort(ort_session(big), x))


# ------------------------------------------------------------------ item 21


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("class_names", "[not json"),
        ("class_names", '["one"]'),
        ("preprocess", "{}"),
        ("preprocess", '{"resolution": 32, "in_chans": 1, "mean": [0], "std": [0]}'),
        ("config", '{"name": "mobilenet_v9"}'),
        ("config", "]"),
    ],
)
def test_tampered_onnx_metadata_gives_one_line(tiny, tmp_path, key, value, capsys):
    from mobilenets.export import set_metadata

    _, _, onnx_path, img = tiny
    proto = onnx.load(str(onnx_path))
    set_metadata(proto, {key: value})
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    assert main(["predict", str(bad), str(img)]) == 1
    one_line_error(capsys.readouterr().err, key)
    assert main(["bench", str(bad), "--runtimes", "onnx", "--runs", "1", "--warmup", "0"]) == 1
    one_line_error(capsys.readouterr().err, key)


# ------------------------------------------------------------------ item 23, 27


def test_eval_checks_its_destination_before_evaluating(tiny, tmp_path, capsys, monkeypatch):
    from mobilenets import evaluation

    _, ckpt, _, _ = tiny
    monkeypatch.setattr(evaluation, "tally", lambda *a, **k: pytest.fail("evaluated first"))
    target = tmp_path / "a-file"
    target.write_text("")
    assert main(["eval", str(ckpt), "--data", "fashion-mnist", "--out", str(target)]) == 1
    one_line_error(capsys.readouterr().err, "--out")


def test_export_leaves_no_file_when_the_onnxruntime_check_fails(tiny, tmp_path, monkeypatch):
    from mobilenets import export

    model, _, _, _ = tiny
    monkeypatch.setattr(export, "max_abs_diff", lambda *a, **k: (1.0, 1.0))
    out = tmp_path / "m.onnx"
    with pytest.raises(MobilenetsError, match="not written"):
        export.export_onnx(model, out, preprocess=PREP)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ item 28 and errors


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


# ------------------------------------------------------------------ --spin


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


# ------------------------------------------------------------------ item 19


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
