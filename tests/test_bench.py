"""`mobilenets bench`: the documented fields, for a tiny untrained model (no timing asserts)."""

from __future__ import annotations

import json

from mobilenets.cli import main

FIELDS = {"runtime", "median_ms", "p90_ms", "images_per_s", "bytes"}


def test_bench_json_fields(capsys):
    rc = main(
        [
            "bench",
            "mobilenet_v2",
            "--width",
            "0.35",
            "--resolution",
            "32",
            "--batch-size",
            "2",
            "--threads",
            "1",
            "--runs",
            "3",
            "--warmup",
            "1",
            "--runtimes",
            "torch,onnx,onnx-int8",
            "--json",
        ]
    )
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["runtime"] for r in res] == ["torch", "onnx", "onnx-int8"]
    for r in res:
        assert FIELDS <= set(r)
        assert 0 < r["median_ms"] <= r["p90_ms"]
        assert r["images_per_s"] > 0 and r["bytes"] > 1000
        assert r["batch_size"] == 2 and r["threads"] == 1 and r["resolution"] == 32
    torch_r, fp32, int8 = res
    assert int8["bytes"] < fp32["bytes"]
    assert "random" in int8["note"]


def test_bench_rejects_bad_arguments(tmp_path, capsys):
    assert main(["bench", "mobilenet_v1", "--runtimes", "torch,tflite"]) == 2
    assert "tflite" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "nothing.onnx")]) == 1  # a missing file: exit 1
    assert main(["bench", "resnet50", "--width", "0.5"]) == 2
