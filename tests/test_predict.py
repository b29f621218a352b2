"""`mobilenets predict` and Predictor on image files written by the test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenets import Predictor, create_model
from mobilenets.checkpoint import point_link, save_checkpoint
from mobilenets.cli import main
from mobilenets.export import export_onnx
from mobilenets.preprocess import Preprocess
from mobilenets.transforms import decode_image, to_model_input

NAMES = ["apple", "banana", "cherry", "date", "elder", "fig"]
MEAN, STD = [0.5, 0.45, 0.4], [0.25, 0.25, 0.25]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A small model with spread-out logits, as a checkpoint (behind last.ckpt) and an .onnx."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v1", 0.25, 40, num_classes=6)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    torch.nn.init.normal_(model.classifier.weight, 0, 1.0)
    model.eval()
    root = tmp_path_factory.mktemp("run")
    meta = {"preprocess": {"crop_pct": 0.875}}
    save_checkpoint(root / "step-10", model, NAMES, MEAN, STD, meta=meta)
    point_link(root / "last.ckpt", root / "step-10")
    onnx_path = root / "model.onnx"
    export_onnx(model, onnx_path, class_names=NAMES, preprocess=Preprocess(40, 3, MEAN, STD, 0.875))
    return model, root / "last.ckpt", onnx_path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:60, 0:80]
    rgb = np.stack([xx * 3, yy * 4, (xx + yy) * 2], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(d / "a.png")
    gray = (rng.random((50, 45)) * 255).astype(np.uint8)
    Image.fromarray(gray).save(d / "b.jpg", quality=95)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return d


def expected_probs(model, path) -> np.ndarray:
    img = decode_image(path, 3)
    x = to_model_input(img[None], 40, MEAN, STD, 3, 0.875)
    with torch.no_grad():
        return torch.softmax(model(x).double(), 1)[0].numpy()


def test_cli_predict_reports_bad_file_and_continues(models, images, capsys):
    model, ckpt, _ = models
    files = [str(images / "a.png"), str(images / "broken.jpg"), str(images / "b.jpg")]
    rc = main(["predict", str(ckpt), *files, "--top-k", "3", "--json"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "broken.jpg" in err and "a.png" not in err
    res = json.loads(out)
    assert [r["image"] for r in res] == files
    assert "error" in res[1] and "predictions" not in res[1]
    for r in (res[0], res[2]):
        preds = r["predictions"]
        assert len(preds) == 3
        probs = [p["prob"] for p in preds]
        assert probs == sorted(probs, reverse=True)
        ref = expected_probs(model, r["image"])
        assert (
            preds[0]["index"] == int(ref.argmax()) and preds[0]["class"] == NAMES[int(ref.argmax())]
        )
        assert abs(probs[0] - ref.max()) < 1e-5


def test_cli_predict_text_output(models, images, capsys):
    _, _, onnx_path = models
    rc = main(["predict", str(onnx_path), str(images / "a.png"), "--top-k", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "a.png" in out and sum(name in out for name in NAMES) == 2


def test_onnx_and_checkpoint_predict_the_same(models, images):
    _, ckpt, onnx_path = models
    files = [images / "a.png", images / "b.jpg"]
    from_ckpt = Predictor(ckpt).predict(files, top_k=6)
    from_onnx = Predictor(onnx_path).predict(files, top_k=6)
    for a, b in zip(from_ckpt, from_onnx, strict=True):
        assert [p["class"] for p in a][:2] == [p["class"] for p in b][:2]
        pa = {p["class"]: p["prob"] for p in a}
        pb = {p["class"]: p["prob"] for p in b}
        assert max(abs(pa[k] - pb[k]) for k in NAMES) < 1e-5
        assert abs(sum(pa.values()) - 1) < 1e-9


def test_predictor_accepts_arrays(models, images):
    _, _, onnx_path = models
    p = Predictor(onnx_path)
    arr = np.asarray(Image.open(images / "a.png"))  # H, W, C
    from_array = p.predict(arr, top_k=1)[0][0]
    from_file = p.predict(images / "a.png", top_k=1)[0][0]
    assert from_array["class"] == from_file["class"]
    assert abs(from_array["prob"] - from_file["prob"]) < 1e-6
    with pytest.raises(Exception, match="broken.jpg"):
        p.predict([images / "broken.jpg"])


def test_predict_escapes_control_characters_of_class_names_on_the_terminal(
    models, images, tmp_path, capsys
):
    """A class name with ESC/NUL/BEL (from a checkpoint's config) must not reach the terminal
    raw, where it could recolour, retitle or clear it; --json keeps the names as they are."""
    model = models[0]
    hostile = ["\x1b[2J\x1b]0;pwned\x07", "nul\x00x", "tab\tx", "ok", "café", "e"]
    save_checkpoint(tmp_path / "step-1", model, hostile, MEAN, STD, meta={})
    point_link(tmp_path / "last.ckpt", tmp_path / "step-1")
    argv = ["predict", str(tmp_path / "last.ckpt"), str(images / "a.png"), "--top-k", "6"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert not {"\x1b", "\x00", "\x07", "\t"} & set(out)
    assert "\\x1b[2J\\x1b]0;pwned\\x07" in out and "nul\\x00x" in out and "tab\\tx" in out
    assert "café" in out  # printable non-ASCII stays readable
    assert main([*argv, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert sorted(p["class"] for p in got) == sorted(hostile)
