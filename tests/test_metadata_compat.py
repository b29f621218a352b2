"""Artifact metadata over time: one Preprocess entry, older checkpoints and ONNX files still load, damaged or tampered fields are named in one line."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from support import PREP, one_line_error

from mobilenets.checkpoint import CONFIG, load_checkpoint
from mobilenets.cli import main
from mobilenets.errors import MobilenetsError
from mobilenets.export import read_metadata
from mobilenets.predict import Predictor


def copy_ckpt(ckpt: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    for f in ckpt.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    info = json.loads((dst / CONFIG).read_text())
    edit(info)
    (dst / CONFIG).write_text(json.dumps(info))
    return dst


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


def test_schema_3_checkpoint_and_onnx_without_expansion_activation_still_load(tiny, tmp_path):
    """Schema 4 added ``expansion_activation``; older files load as "nonlinear" (the model's
    activation after the expansion, which is what they computed)."""
    _, ckpt, onnx_path, img = tiny

    def schema_3(info):
        info["model"].pop("expansion_activation")
        info["model"]["schema_version"] = 3

    old = copy_ckpt(ckpt, tmp_path / "old", schema_3)
    assert "expansion_activation" not in json.loads((old / CONFIG).read_text())["model"]
    cfg = load_checkpoint(old).config
    assert cfg.expansion_activation == "nonlinear" and cfg.schema_version == 4
    assert Predictor(old).predict(str(img)) == Predictor(ckpt).predict(str(img))
    proto = onnx.load(str(onnx_path))
    for p in proto.metadata_props:
        if p.key == "config":
            d = json.loads(p.value)
            d.pop("expansion_activation")
            p.value = json.dumps({**d, "schema_version": 3})
    onnx.save(proto, str(tmp_path / "old.onnx"))
    assert read_metadata(tmp_path / "old.onnx")["config"].expansion_activation == "nonlinear"
