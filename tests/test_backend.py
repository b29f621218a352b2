"""The Backend protocol: torch, onnxruntime, litert, tflite-micro and reference load a model file,
say what input they take and give logits; eval, predict and the accuracy reports use it, so
`eval` takes .onnx files too (issue 15 item 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import make_imagefolder, run_cli

from mobilenets import create_model, evaluate, quantize_int8
from mobilenets.backend import (
    BACKENDS,
    Backend,
    accuracy,
    load_backend,
    reference_backend,
    torch_backend,
)
from mobilenets.checkpoint import save_checkpoint
from mobilenets.errors import MobilenetsError, UsageError
from mobilenets.export import export_onnx
from mobilenets.micro import runtimes
from mobilenets.micro.tflite import write_tflite
from mobilenets.preprocess import Preprocess

PREP = Preprocess(32, 3, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 2-class V1 on a tiny ImageFolder: its checkpoint, its .onnx and an int8 .tflite."""
    root = tmp_path_factory.mktemp("be")
    folder = make_imagefolder(root / "imgs")
    torch.manual_seed(0)
    model = create_model("mobilenet_v1", 0.25, 32, num_classes=2).eval()
    meta = {"data": f"imagefolder:{folder}"}
    ckpt = save_checkpoint(root / "ck", model, ["circle", "square"], preprocess=PREP, meta=meta)
    onnx_path = root / "m.onnx"
    export_onnx(model, onnx_path, class_names=["circle", "square"], preprocess=PREP)
    q = quantize_int8(model, torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    q.class_names, q.preprocess = ["circle", "square"], PREP.to_dict()
    tfl = write_tflite(q, root / "m.tflite", {"data": meta["data"]})
    return {"checkpoint": ckpt, "onnx": onnx_path, "tflite": tfl, "data": meta["data"], "q": q}


def _x(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def test_each_format_loads_as_the_backend_of_its_runtime(files):
    ck, on = load_backend(files["checkpoint"]), load_backend(files["onnx"])
    assert (ck.name, on.name) == ("torch", "onnxruntime")
    for b in (ck, on):
        assert isinstance(b, Backend)
        spec = b.input_spec()
        assert (spec.in_chans, spec.resolution, spec.preprocess) == (3, 32, PREP)
        assert list(b.meta.class_names) == ["circle", "square"]
    # onnxruntime agrees with PyTorch (float32 accumulation order differs)
    assert np.abs(ck.logits(_x()) - on.logits(_x())).max() < 1e-4


def test_int8_backends_agree_bit_for_bit_with_their_peers(files):
    ref = load_backend(files["tflite"], "reference")
    assert ref.name == "reference" and ref.extra["data"] == files["data"]
    want = ref.logits(_x())
    assert np.array_equal(reference_backend(files["q"]).logits(_x()), want)
    peers = []
    if runtimes.have_tflm():
        peers.append(load_backend(files["tflite"], "tflite-micro"))
    if runtimes.have_litert():
        peers.append(load_backend(files["tflite"], "litert"))  # reference kernels
    if not peers:
        pytest.skip("neither tflite-micro nor LiteRT is installed")
    for b in peers:
        assert np.array_equal(b.logits(_x()), want), b.name


def test_load_backend_refuses_a_runtime_that_cannot_run_the_file(files):
    with pytest.raises(UsageError, match="runtime litert cannot run it"):
        load_backend(files["onnx"], "litert")
    with pytest.raises(UsageError, match="runtime must be one of"):
        load_backend(files["onnx"], "tvm")
    assert set(BACKENDS) == {"torch", "onnxruntime", "litert", "tflite-micro", "reference"}


def test_accuracy_counts_top1_and_agreement_with_the_first_backend():
    class Fixed:
        def __init__(self, preds):
            self.preds = iter(preds)

        def logits(self, x):
            p = np.asarray(next(self.preds))
            return np.eye(3)[p]

    batches = [(torch.zeros(2, 1), torch.tensor([0, 1])), (torch.zeros(2, 1), torch.tensor([2, 2]))]
    acc = accuracy({"a": Fixed([[0, 1], [2, 0]]), "b": Fixed([[0, 0], [1, 0]])}, batches)
    assert acc == {
        "images": 4,
        "a_top1": 0.75,
        "a_agreement": 1.0,
        "b_top1": 0.25,
        "b_agreement": 0.5,
    }
    assert accuracy({"a": Fixed([])}, []) == {"images": 0}


def test_eval_takes_an_onnx_file_and_matches_the_checkpoint(files, tmp_path, capsys):
    a = evaluate(files["checkpoint"], split="test", device="cpu")
    b = evaluate(files["onnx"], data=files["data"], split="test")
    assert a["n"] == b["n"] == 4
    assert (a["top1"], a["confusion"]) == (b["top1"], b["confusion"])
    assert abs(a["loss"] - b["loss"]) < 1e-5
    rc, out, err = run_cli(
        ["eval", files["onnx"], "--data", files["data"], "--out", tmp_path / "ev", "--json"], capsys
    )
    assert rc == 0, err
    assert '"top1"' in out


def test_eval_of_an_onnx_file_without_data_names_the_flag(files, capsys):
    rc, _, err = run_cli(["eval", files["onnx"]], capsys)
    assert rc == 2 and "--data" in err and len(err.strip().splitlines()) == 1


def test_torch_backend_of_a_model_in_memory_needs_its_config():
    with pytest.raises(UsageError, match="needs a mobilenets model"):
        torch_backend(torch.nn.Linear(2, 2))
    b = torch_backend(create_model("mobilenet_v1", 0.25, 32, num_classes=2))
    assert b.logits(_x(2)).shape == (2, 2)


def test_predict_reports_a_broken_model_file_in_one_line(tmp_path, capsys):
    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(MobilenetsError, match="not a readable ONNX file"):
        load_backend(bad)
