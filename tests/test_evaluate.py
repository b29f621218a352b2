"""``mobilenets eval`` and ``mobilenets.evaluation``: metrics, confusion matrix files, splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from support import make_imagefolder, needs_fashion

import mobilenets
from mobilenets import cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "run"
    rc = cli.main(
        [
            "train",
            "--model",
            "mobilenet_v1",
            "--width",
            "0.25",
            "--data",
            "fashion-mnist",
            "--batch-size",
            "64",
            "--epochs",
            "1",
            "--max-train-samples",
            "1280",
            "--val-split",
            "500",
            "--max-eval-samples",
            "500",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return out


@needs_fashion
def test_eval_json_and_confusion_files(fashion_run, tmp_path, capsys):
    capsys.readouterr()
    rc = cli.main(
        [
            "eval",
            str(fashion_run / "best.ckpt"),
            "--data",
            "fashion-mnist",
            "--split",
            "val",
            "--json",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 500 and 0 <= r["top1"] <= r["top5"] <= 1
    assert len(r["per_class"]) == 10 and "Ankle boot" in r["per_class"]
    summary = json.loads((fashion_run / "summary.json").read_text())
    # the same images, weights and preprocessing as the training run's own validation
    assert r["top1"] == pytest.approx(summary["final_val_top1"], abs=1.5 / 500)
    m = json.loads((tmp_path / "confusion_matrix.json").read_text())
    matrix = torch.tensor(m["matrix"])
    assert m["class_names"][0] == "T-shirt/top" and matrix.shape == (10, 10)
    assert int(matrix.sum()) == r["n"]
    assert int(matrix.diag().sum()) == round(r["top1"] * r["n"])
    i = m["class_names"].index("Trouser")
    assert r["per_class"]["Trouser"] == pytest.approx(float(matrix[i, i] / matrix[i].sum()))
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000


@needs_fashion
def test_python_api(fashion_run):
    r = mobilenets.evaluate(fashion_run / "last.ckpt", split="val")
    assert r["n"] == 500 and sum(map(sum, r["confusion"])) == 500 and r["data"] == "fashion-mnist"


def test_eval_defaults_to_test_split_and_training_data(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "imgs", bad=False)
    run = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                "--model",
                "mobilenet_v1",
                "--width",
                "0.25",
                "--resolution",
                "32",
                "--data",
                f"imagefolder:{root}",
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--workers",
                "0",
                "--quiet",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert cli.main(["eval", str(run / "last.ckpt")]) == 0
    out = capsys.readouterr().out
    assert "[test], 4 images" in out and "top-1" in out and "circle" in out
    assert (
        sum(
            map(
                sum, json.loads((run / "eval-test" / "confusion_matrix.json").read_text())["matrix"]
            )
        )
        == 4
    )
    assert (run / "eval-test" / "confusion_matrix.png").exists()
    assert (
        cli.main(["eval", str(run / "last.ckpt"), "--split", "val"]) == 2
    )  # no --val-split hold-out
    assert "no val split" in capsys.readouterr().err
