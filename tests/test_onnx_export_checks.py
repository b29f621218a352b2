"""ONNX export checks: the opset is verified, int8 files are deduplicated, nothing is left behind when a check fails, eval checks its destination first."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from support import PREP, one_line_error

from mobilenets.cli import main
from mobilenets.errors import MobilenetsError
from mobilenets.export import ort_session, run_ort


def test_export_refuses_unsupported_opset_and_reports_the_real_one(tiny, tmp_path, capsys):
    model, ckpt, onnx_path, _ = tiny
    out = tmp_path / "x.onnx"
    assert main(["export", str(ckpt), "--out", str(out), "--opset", "99"]) == 2
    one_line_error(capsys.readouterr().err, "--opset")
    assert not out.exists()
    proto = onnx.load(str(onnx_path))
    assert max(o.version for o in proto.opset_import if o.domain == "") == 18


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
