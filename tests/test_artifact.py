"""ArtifactMeta: checkpoints, ONNX and .tflite files go through ONE metadata parser, so the same
damaged field gives the same one-line error whatever the format (issue 15 item 4, issue 20
item 7)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch

from mobilenets import create_model
from mobilenets.artifact import ArtifactMeta
from mobilenets.checkpoint import load_checkpoint, save_checkpoint
from mobilenets.cli import main
from mobilenets.errors import MobilenetsError
from mobilenets.export import export_onnx, read_metadata, set_metadata, write_onnx
from mobilenets.micro.tflite import read_tflite, write_tflite
from mobilenets.preprocess import Preprocess

NAMES = [f"c{i}" for i in range(4)]
PREP = Preprocess(32, 1, (0.5,), (0.25,))


def _cfg(**change):
    return lambda fields: fields["config"].update(change)


DAMAGE = {
    "class_names_wrong_length": (lambda f: f.update(class_names=["a", "b"]), "class_names"),
    "class_names_not_strings": (lambda f: f.update(class_names=[1, 2, 3, {}]), "class_names"),
    "std_not_finite": (lambda f: f["preprocess"].update(std=[math.nan]), "std must be finite"),
    "std_zero": (lambda f: f["preprocess"].update(std=[0.0]), "std must be > 0"),
    "config_empty": (lambda f: f.update(config={}), "model config lacks field: name"),
    "config_wrong_in_chans": (_cfg(in_chans=3), "the model takes 32 px x 3"),
    "config_resolution_100000": (_cfg(resolution=100000), "resolution must be <= 4096"),
    "config_not_an_object": (lambda f: f.update(config=[1]), "model config"),
    "preprocess_resolution_100000": (
        lambda f: f["preprocess"].update(resolution=100000),
        "resolution must be <= 4096",
    ),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same tiny model as a checkpoint, an .onnx and an fp32 .tflite, plus its fields."""
    from mobilenets.micro.export import export_tflite

    root = tmp_path_factory.mktemp("art")
    torch.manual_seed(0)
    model = create_model("mobilenet_v1", 0.25, 32, num_classes=4, in_chans=1).eval()
    ckpt = save_checkpoint(root / "ck", model, NAMES, preprocess=PREP)
    onnx_path = root / "m.onnx"
    export_onnx(model, onnx_path, class_names=NAMES, preprocess=PREP)
    tfl = root / "m.tflite"
    export_tflite(model, tfl, class_names=NAMES, preprocess=PREP)
    return {"checkpoint": ckpt, "onnx": onnx_path, "tflite": tfl}


def _damaged_checkpoint(src: Path, dst: Path, edit) -> tuple[Path, Callable]:
    import shutil

    shutil.copytree(src, dst)
    info = json.loads((dst / "config.json").read_text())
    f = {"config": info["model"], "class_names": info["class_names"]}
    f["preprocess"] = info["preprocess"]
    edit(f)
    info.update(model=f["config"], class_names=f["class_names"], preprocess=f["preprocess"])
    (dst / "config.json").write_text(json.dumps(info))
    return dst, load_checkpoint


def _damaged_onnx(src: Path, dst: Path, edit) -> tuple[Path, Callable]:
    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    f = {k: json.loads(props[k]) for k in ("config", "class_names", "preprocess")}
    edit(f)
    set_metadata(proto, {k: json.dumps(v) for k, v in f.items()})
    write_onnx(proto, dst)
    return dst, read_metadata


def _damaged_tflite(src: Path, dst: Path, edit) -> tuple[Path, Callable]:
    graph, meta = read_tflite(src)
    f = {k: json.loads(json.dumps(meta[k])) for k in ("config", "class_names", "preprocess")}
    edit(f)
    write_tflite(graph, dst, f)  # the metadata entries given replace the graph's own
    return dst, read_tflite


MAKERS = {"checkpoint": _damaged_checkpoint, "onnx": _damaged_onnx, "tflite": _damaged_tflite}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_same_damaged_field_gives_the_same_error_for_all_three_formats(files, tmp_path, damage):
    edit, needle = DAMAGE[damage]
    errors = {}
    for fmt, make in MAKERS.items():
        ext = {"checkpoint": "", "onnx": ".onnx", "tflite": ".tflite"}[fmt]
        path, read = make(files[fmt], tmp_path / f"bad-{fmt}{ext}", edit)
        with pytest.raises(MobilenetsError) as info:
            read(path)
        msg = str(info.value)
        assert "\n" not in msg and needle in msg, (fmt, msg)
        prefix = str(path / "config.json") if fmt == "checkpoint" else str(path)
        assert msg.startswith(prefix + ": "), (fmt, msg)
        errors[fmt] = msg[len(prefix) + 2 :]
    assert len(set(errors.values())) == 1, errors


def test_predict_refuses_a_damaged_tflite_in_one_line(files, tmp_path, capsys):
    """predict used to crash with IndexError on 3 class names for 4 outputs."""
    from PIL import Image

    path, _ = _damaged_tflite(
        files["tflite"], tmp_path / "bad.tflite", lambda f: f.update(class_names=["a", "b", "c"])
    )
    img = tmp_path / "x.png"
    Image.new("L", (32, 32)).save(img)
    assert main(["predict", str(path), str(img)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "class_names" in err


def test_tflite_config_that_does_not_describe_the_graph_is_refused(files, tmp_path):
    """A consistent config + preprocess that claims 3 channels for a 1-channel graph."""

    def edit(f):
        f["config"].update(in_chans=3)
        f["preprocess"].update(in_chans=3, mean=[0.5], std=[0.25])

    path, _ = _damaged_tflite(files["tflite"], tmp_path / "bad.tflite", edit)
    with pytest.raises(MobilenetsError, match="graph's input is 32x32 x 1"):
        read_tflite(path)


def test_valid_metadata_reads_the_same_from_all_three_formats(files):
    ck = load_checkpoint(files["checkpoint"])
    on = read_metadata(files["onnx"])["artifact"]
    tf = read_tflite(files["tflite"])[1]["artifact"]
    assert isinstance(on, ArtifactMeta) and isinstance(tf, ArtifactMeta)
    assert ck.config == on.config == tf.config
    assert ck.class_names == list(on.class_names) == list(tf.class_names) == NAMES
    assert ck.preprocess == on.preprocess == tf.preprocess == PREP
