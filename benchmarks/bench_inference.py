"""Inference benchmark: our ONNX MobileNetV2 vs torchvision's, int8 vs fp32, int8 accuracy.

Prints ONE JSON line with:
  (a) fp32 latency, batch 1, 224 px: our exported MobileNetV2 (alpha 1) in onnxruntime vs
      torchvision's mobilenet_v2 exported and run the same way (goal: ratio <= 1.05);
  (b) our int8 latency / our fp32 latency (goal <= 0.65);
  (c) int8 file size / fp32 file size (goal <= 0.3);
  (d) with --checkpoint (a model trained with `mobilenets train`): fp32 and int8 top-1 on the
      Fashion-MNIST test set (goal: int8 within 1.0 point of fp32).
Sessions are timed in interleaved blocks (20 runs of each, 15 rounds); ratios are ratios of medians,
so that load from other processes hits every session alike; ``ratio_p10`` compares the 10th
percentiles, which a busy shared machine disturbs least.
--tune also times the int8 variants that were tried.

    python benchmarks/bench_inference.py [--checkpoint RUN/last.ckpt] [--tune]

``--smoke`` runs every path of (a)-(c) in seconds (64 px, 8 calibration images, one round of
one run): the figures then mean nothing; it keeps the script from rotting (tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision

from mobilenets import ModelConfig, create_model
from mobilenets.bench import default_threads
from mobilenets.env import hardware_record, versions
from mobilenets.export import export_onnx, ort_session
from mobilenets.onnx_quant import quantize_onnx


def hardware(threads: int) -> dict:
    """The machine and the software versions this run measured, through ``mobilenets.env``."""
    return {**hardware_record(threads), **versions("onnx", "onnxruntime")}


def time_interleaved(
    sessions: dict, x: np.ndarray, rounds: int, block: int
) -> dict[str, np.ndarray]:
    """Per-run latency (ms) of each session, timed in interleaved blocks.

    Each round runs every session for one untimed run (its thread pool wakes up while the
    previous session's pool stops spinning) and ``block`` timed runs. Interleaving spreads the
    load of other processes over all sessions, so their medians stay comparable.
    """
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(10):
            s.run(None, feeds[k])
    out: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            s.run(None, feeds[k])
            for _ in range(block):
                t = time.perf_counter()
                s.run(None, feeds[k])
                out[k].append((time.perf_counter() - t) * 1e3)
    return {k: np.array(v) for k, v in out.items()}


def ratio(a: np.ndarray, b: np.ndarray, q: float = 50) -> float:
    """Ratio of the ``q``-th percentiles of two latency samples (median by default)."""
    return float(np.percentile(a, q) / np.percentile(b, q))


def session(path: Path, threads: int, level: str = "all") -> ort.InferenceSession:
    if level == "all":
        return ort_session(path, threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def variants(fp32: Path, tmp: Path, calib: torch.Tensor) -> dict[str, Path]:
    """The int8 variants tried while tuning (besides the chosen default)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i : i + 8].numpy()} for i in range(0, len(calib), 8)])

        def get_next(self):
            return next(self.it, None)

    out = {}
    proto = onnx.load(str(fp32))
    first_conv = next(n.name for n in proto.graph.node if n.op_type == "Conv")
    gemm = [n.name for n in proto.graph.node if n.op_type == "Gemm"]
    plain = {"per_channel": True, "weight_type": QuantType.QInt8}
    for name, kw in {
        "ort_qdq_u8s8_plain": dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8),
        "ort_qdq_s8s8_plain": dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8),
        "ort_qoperator_u8s8_plain": dict(
            quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8
        ),
    }.items():
        out[name] = tmp / f"{name}.onnx"
        quantize_static(str(fp32), str(out[name]), Reader(), **plain, **kw)
    for name, kw in {
        "s8s8": {"activation_type": "int8"},
        "per_tensor_weights": {"per_channel": False},
        "keep_first_conv_fp32": {"exclude_nodes": [first_conv]},
        "keep_classifier_fp32": {"exclude_nodes": gemm},
        "percentile_calibration": {"calib_method": "percentile"},
    }.items():
        out[name] = tmp / f"{name}.onnx"
        quantize_onnx(fp32, out[name], calib, **kw)
    return out


def accuracy(checkpoint: str, data: str, calib_samples: int, tmp: Path) -> dict:
    """Test top-1 of the checkpoint's fp32 and int8 ONNX files, measured by the user's own
    command: ``mobilenets export CKPT --int8 --calib-data DATA`` and its FILE.json report."""
    from mobilenets.checkpoint import read_info
    from mobilenets.cli import main as cli

    out = tmp / "ck.onnx"
    argv = ["export", checkpoint, "--format", "onnx", "--out", str(out), "--int8"]
    argv += ["--calib-data", data, "--calib-samples", str(calib_samples)]
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON line
        if cli(argv) != 0:
            raise SystemExit(f"mobilenets {' '.join(argv)} failed")
    r = json.loads(out.with_name(out.name + ".json").read_text())
    drop = 100 * (r["fp32_top1"] - r["int8_top1"])
    return {
        "checkpoint": checkpoint,
        "model": read_info(checkpoint)["model"],
        "data": data,
        "test_images": r["test_images"],
        "calib_samples": r["int8"]["calib_samples"],
        "max_abs_diff_fp32": r["max_abs_diff"],
        "fp32_top1": r["fp32_top1"],
        "int8_top1": r["int8_top1"],
        "int8_fp32_agreement": r["int8_fp32_agreement"],
        "top1_drop_points": drop,
        "goal_drop_points": 1.0,
        "meets_goal": drop <= 1.0,
    }


def latency_report(t: dict, paths: dict, scheme: str, tune: bool) -> dict:
    """Parts (a)-(c) from the timings ``t`` (ms per session) and the files in ``paths``; with
    ``tune``, every other session against ours_fp32."""
    main_keys = ("ours_fp32", "torchvision_fp32", "ours_int8")
    fp, tvb, i8 = (paths[k].stat().st_size for k in main_keys)
    out: dict = {}
    out["latency_ms"] = {
        k: {
            "median": round(float(np.median(t[k])), 3),
            "p90": round(float(np.percentile(t[k], 90)), 3),
        }
        for k in main_keys
    }
    out["a_fp32_ours_vs_torchvision"] = {
        "ratio": round(ratio(t["ours_fp32"], t["torchvision_fp32"]), 3),
        "ratio_p10": round(ratio(t["ours_fp32"], t["torchvision_fp32"], 10), 3),
        "goal": 1.05,
    }
    out["b_int8_vs_fp32"] = {
        "ratio": round(ratio(t["ours_int8"], t["ours_fp32"]), 3),
        "ratio_p10": round(ratio(t["ours_int8"], t["ours_fp32"], 10), 3),
        "goal": 0.65,
        "scheme": scheme,
        "session": "onnxruntime CPU, ORT_ENABLE_ALL, intra_op_num_threads=threads",
        "note": "untrained MobileNetV2 calibrated on random data (latency does not depend on the weights)",
    }
    out["c_int8_size_ratio"] = {
        "ratio": round(i8 / fp, 3),
        "goal": 0.3,
        "int8_bytes": i8,
        "fp32_bytes": fp,
        "torchvision_fp32_bytes": tvb,
    }
    if tune:
        out["variants_vs_ours_fp32"] = {
            k: {
                "ratio": round(ratio(t[k], t["ours_fp32"]), 3),
                "ratio_p10": round(ratio(t[k], t["ours_fp32"], 10), 3),
                "median_ms": round(float(np.median(t[k])), 3),
                "bytes": paths[k].stat().st_size,
            }
            for k in t
            if k not in main_keys
        }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv`` for tests; default ``sys.argv``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a `mobilenets train` checkpoint for the accuracy part (d)")
    p.add_argument(
        "--data", default="fashion-mnist", help="dataset of the checkpoint (default fashion-mnist)"
    )
    p.add_argument("--calib-samples", type=int, default=512)
    p.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: usable cores)"
    )
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    p.add_argument("--block", type=int, default=20, help="timed runs per session per round")
    p.add_argument(
        "--tune", action="store_true", help="also time the int8 variants that were tried"
    )
    p.add_argument(
        "--resolution", type=int, default=224, help="input size of both models (default 224)"
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny settings (64 px, 1 round of 1 run): paths only"
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.resolution, args.rounds, args.block = 64, 1, 1
    return args


def main() -> int:
    args = parse_args()
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    result: dict = {"benchmark": "bench_inference", "hardware": hardware(threads)}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        res = args.resolution
        ours = create_model("mobilenet_v2", resolution=res).eval()
        tv = torchvision.models.mobilenet_v2(weights=None).eval()
        tv.config = ModelConfig("mobilenet_v2", resolution=res)  # exported through the same code
        ours_path, tv_path, int8_path = tmp / "ours.onnx", tmp / "tv.onnx", tmp / "ours.int8.onnx"
        export_onnx(ours, ours_path)
        export_onnx(tv, tv_path)
        calib = torch.randn(
            8 if args.smoke else 64, 3, res, res
        )  # random weights: calibration data only sets scales
        q = quantize_onnx(ours_path, int8_path, calib)
        paths = {"ours_fp32": ours_path, "torchvision_fp32": tv_path, "ours_int8": int8_path}
        if args.tune:
            paths.update(variants(ours_path, tmp, calib))
        sessions = {k: session(v, threads) for k, v in paths.items()}
        if args.tune:  # the same files with onnxruntime's EXTENDED level instead of ALL
            sessions["ours_int8_opt_extended"] = session(int8_path, threads, "extended")
            sessions["ours_fp32_opt_extended"] = session(ours_path, threads, "extended")
            paths.update(ours_int8_opt_extended=int8_path, ours_fp32_opt_extended=ours_path)
        x = np.random.default_rng(0).standard_normal((1, 3, res, res)).astype(np.float32)
        t = time_interleaved(sessions, x, args.rounds, args.block)
        result.update(latency_report(t, paths, q["scheme"], args.tune))
        result["timing"] = {
            "rounds": args.rounds,
            "runs_per_round": args.block,
            "batch_size": 1,
            "resolution": res,
            "smoke": args.smoke,
        }
        if args.checkpoint:
            result["d_int8_accuracy"] = accuracy(
                args.checkpoint, args.data, args.calib_samples, tmp
            )
    result["hardware"]["loadavg_1m_end"] = os.getloadavg()[0]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
