"""``predict``/``eval`` on ``.tflite`` files without mobilenets metadata (issue 16 item 3): the
committed converter fixtures in ``tests/data/foreign`` give LiteRT's reference kernels' top-1
(the peer is run here, on inputs quantized here), and unsupported files are refused in one line.

Refused in one line: ``keras_mobilenet_a025_32_gray_softmax`` and ``..._float_io`` (both end in int8
SOFTMAX with a degenerate input scale, on which LiteRT BUILTIN_REF and TFLite Micro abort).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import dynamic_width, two_subgraphs, uint8_inside

from mobilenets.backend import ForeignInput
from mobilenets.cli import main
from mobilenets.errors import MobilenetsError
from mobilenets.micro import runtimes
from mobilenets.predict import Predictor

FOREIGN = Path(__file__).parent / "data/foreign"
FILES = [
    "keras_mobilenet_a025_32_gray",
    "keras_mobilenet_v2_a035_48_b6",
    "keras_mobilenet_v3_small_48_b5",
    "keras_mobilenet_v3_small_48_minimal_b5",
    "litert_torch_mobilenet_v2_a035_48_b7",
]
NAMES = tuple(f"item {i}" for i in range(10))
pytestmark = pytest.mark.skipif(not runtimes.have_litert(), reason="ai-edge-litert is missing")


def _peer(path: Path, x: torch.Tensor) -> np.ndarray:
    """LiteRT BUILTIN_REF outputs (dequantized) for normalized float NCHW inputs: the file's
    own I/O read and applied here, independently of backend.py."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    x = x.numpy()
    if inp["shape"][-1] != x.shape[1]:
        pass  # channels-first file (litert-torch): NCHW as is
    else:
        x = x.transpose(0, 2, 3, 1)
    if inp["dtype"] == np.int8:
        s, z = inp["quantization"]
        x = np.clip(np.round(x.astype(np.float64) / np.float32(s)) + z, -128, 127)
    rows = []
    for row in x.astype(inp["dtype"]):
        it.set_tensor(inp["index"], row[None])
        it.invoke()
        y = it.get_tensor(out["index"]).reshape(-1).astype(np.float32)
        if out["dtype"] == np.int8:
            s, z = out["quantization"]
            y = (y - z) * np.float32(s)
        rows.append(y)
    return np.stack(rows)


def _images(in_chans: int, n: int) -> torch.Tensor:
    """uint8 (N, C, 28, 28): Fashion-MNIST test images for 1 channel, random ones otherwise."""
    if in_chans == 1:
        from mobilenets.data import load_dataset

        return load_dataset("fashion-mnist").split("test").images[:n]
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, in_chans, 28, 28), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("name", FILES)
def test_foreign_file_gives_litert_reference_top1(name):
    path = FOREIGN / f"{name}.tflite"
    pred = Predictor(path, foreign=ForeignInput(class_names=NAMES))
    assert pred.backend.name == "litert" and pred.class_names == list(NAMES)
    assert "no mobilenets metadata" in pred.assumed and "classes" not in pred.assumed
    x = torch.cat([pred.preprocess(im) for im in _images(pred.in_chans, 20)])
    got, want = pred.logits(x), _peer(path, x)
    assert np.array_equal(got, want)  # bit for bit, hence the same top-1
    assert np.array_equal(got.argmax(1), want.argmax(1))


@pytest.mark.skipif(not runtimes.have_tflm(), reason="tflite-micro is missing")
def test_foreign_file_in_tflite_micro_equals_litert_reference():
    path = FOREIGN / "keras_mobilenet_v3_small_48_b5.tflite"
    micro = Predictor(path, runtime="tflite-micro")
    x = torch.cat([micro.preprocess(im) for im in _images(3, 5)])
    assert np.array_equal(micro.logits(x), _peer(path, x))


def test_predict_and_eval_cli_on_foreign_files(tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(NAMES) + "\n")
    path = FOREIGN / "keras_mobilenet_v3_small_48_b5.tflite"
    root = tmp_path / "imf"
    ims = _images(3, 12)
    files = []
    for i, im in enumerate(ims):
        for split in ("train", "val"):
            (root / split / f"c{i % 10}").mkdir(parents=True, exist_ok=True)
            f = root / split / f"c{i % 10}" / f"{i}.png"
            Image.fromarray(im.permute(1, 2, 0).numpy()).save(f)
        files.append(str(f))
    assert main(["predict", str(path), *files, "--json", "--class-names", str(names)]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "no mobilenets metadata: input int8 as stored" in err
    top = [r["predictions"][0]["class"] for r in json.loads(out)]
    pred = Predictor(path)
    x = torch.cat([pred.preprocess(pred.load(f)) for f in files])
    want = _peer(path, x).argmax(1)
    assert top == [NAMES[i] for i in want]
    argv = ["eval", str(path), "--data", f"imagefolder:{root}", "--json", "--class-names"]
    assert main([*argv, str(names), "--out", str(tmp_path / "ev")]) == 0
    r = json.loads(capsys.readouterr().out)
    labels = np.array([int(Path(f).parent.name[1:]) for f in files])
    assert r["n"] == 12 and r["top1"] == pytest.approx(float((want == labels).mean()))


def _edit(src: str, tmp_path: Path, fn) -> Path:
    """A copy of a fixture with ``fn(raw, model)`` applied to its bytes in place."""
    import tflite

    raw = bytearray((FOREIGN / f"{src}.tflite").read_bytes())
    fn(raw, tflite.Model.GetRootAsModel(raw, 0))
    out = tmp_path / f"{fn.__name__}.tflite"
    out.write_bytes(bytes(raw))
    return out


@pytest.mark.parametrize(
    "edit, message",
    [
        (uint8_inside, "uint8 (legacy) quantization is not supported"),
        (dynamic_width, "dynamic shapes are not supported"),
        (two_subgraphs, "2 subgraphs: only files with one subgraph are supported"),
    ],
)
def test_unsupported_files_are_refused_in_one_line(edit, message, tmp_path, capsys):
    path = _edit("keras_mobilenet_a025_32_gray", tmp_path, edit)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    assert main(["predict", str(path), str(image)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and str(path) in err
    with pytest.raises(MobilenetsError, match=re.escape(message)):
        Predictor(path)


def test_wrong_flags_are_usage_errors(tmp_path, capsys):
    path = FOREIGN / "keras_mobilenet_a025_32_gray.tflite"
    three = tmp_path / "three.txt"
    three.write_text("a\nb\nc\n")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    cases = [
        (["--class-names", str(three)], "--class-names: 3 names, "),
        (["--resolution", "40"], "--resolution 40: "),
        (["--mean", "0.1", "0.2"], "--mean: needs 1 or 1 values"),
    ]
    for flags, message in cases:
        assert main(["predict", str(path), str(image), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err


def test_standard_metadata_is_read_when_ours_is_absent(tmp_path):
    """Our own file with its ``mobilenets`` entry renamed: labels and normalization then come
    from LiteRT's standard metadata (TFLITE_METADATA and labels.txt) alone."""
    from test_tflite_model import NAMES as OURS
    from test_tflite_model import small_model

    from mobilenets.micro.quantizer import quantize_int8
    from mobilenets.micro.tflite import write_tflite
    from mobilenets.preprocess import Preprocess

    q = quantize_int8(small_model(), torch.randn(8, 1, 28, 28))
    q.class_names, q.preprocess = OURS, Preprocess(28, 1, (0.25,), (0.5,)).to_dict()
    path = write_tflite(q, tmp_path / "ours.tflite")
    assert Predictor(path).assumed == ""
    raw = path.read_bytes()
    assert raw.count(b"mobilenets\x00") >= 1
    renamed = tmp_path / "renamed.tflite"
    renamed.write_bytes(
        raw.replace(b"\x0a\x00\x00\x00mobilenets\x00", b"\x0a\x00\x00\x00mobilenetz\x00")
    )
    pred = Predictor(renamed)
    assert pred.class_names == OURS
    assert pred.preprocessing.mean == pytest.approx((0.25,))
    assert pred.preprocessing.std == pytest.approx((0.5,))
    assert pred.assumed == "no mobilenets metadata: resolution 28 from the graph"
    with pytest.raises(Exception, match="are for .tflite files without it"):
        Predictor(path, foreign=ForeignInput(class_names=tuple(OURS)))
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize(
    "name", ["keras_mobilenet_a025_32_gray_softmax", "keras_mobilenet_a025_32_gray_float_io"]
)
def test_degenerate_softmax_scale_is_refused_in_one_line_not_a_crash(name, tmp_path, capsys):
    """Untrained Keras files whose SOFTMAX input scale (7.8e-9) is at or below 2**-26 abort
    TFLite Micro and LiteRT in SOFTMAX's Prepare: refused in one line, exit 1."""
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(img)
    assert main(["predict", str(FOREIGN / f"{name}.tflite"), str(img)]) == 1
    err = capsys.readouterr().err.strip()
    assert "SOFTMAX input scale 7.84e-09 is degenerate" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(not runtimes.have_tflm(), reason="tflite-micro is missing")
@pytest.mark.parametrize("runtime", ["tflite-micro", "reference"])
def test_channels_first_file_runs_in_tflite_micro_and_the_reference(runtime):
    """litert-torch's NCHW file: its input TRANSPOSE is dropped for TFLite Micro's runner and the
    reference, so the batch goes in channels last; top-1 equals LiteRT BUILTIN_REF's."""
    path = FOREIGN / "litert_torch_mobilenet_v2_a035_48_b7.tflite"
    pred = Predictor(path, runtime=runtime, foreign=ForeignInput(class_names=NAMES))
    x = torch.cat([pred.preprocess(im) for im in _images(pred.in_chans, 20)])
    assert np.array_equal(pred.logits(x).argmax(1), _peer(path, x).argmax(1))
