"""int8 .tflite benchmark: bit-exactness with TFLite Micro, accuracy, arena and size (JSON lines).

Sections (all by default):
  random      random-weight 1000-class V2 a=0.35 @96/@144 and V1 a=0.25 @128 (both paddings):
              our NumPy reference vs the tflite-micro interpreter and LiteRT BUILTIN_REF on
              20 random int8 inputs each (goal: 0 LSB).
  arena       V2 a=0.35 @144, 1000 classes, padding=same and symmetric: .tflite bytes and
              TFLite Micro arena (goal for same: activations <= 311,040 B, arena <= 390,792 B,
              file <= 1,905,000 B: the Keras-built graph's figures).
  fc_rounding why the classifier is a CONV_2D: the same V2 a=0.35 @144 with its classifier
              written as an int8 FULLY_CONNECTED; LiteRT BUILTIN_REF and TFLite Micro compared,
              on 20 random inputs, with one rounding ((acc*M + 2^(s-1)) >> s) and with
              TFLite Micro's two (saturating doubling high multiply, then rounding shift).
  checkpoints each --checkpoint (trained on Fashion-MNIST): int8 export calibrated on 512
              training images, fp32/int8 top-1 and agreement on the 10,000 test images
              (goal: within 0.3 points, >= 99%), and reference vs TFLite Micro and LiteRT on
              all 10,000 (goal: 0 LSB).
  calib       --calib-compare: int8 top-1 of minmax, percentile and mse calibration on the
              first checkpoint (the evidence for micro.quantizer.DEFAULT_METHOD).

    nice python benchmarks/bench_tflite.py [--checkpoint RUN/last.ckpt ...] [--sections random,arena]

``--smoke``: the random section on one 32 px model (seconds), so the script cannot rot unseen.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mobilenets import create_model
from mobilenets.env import versions
from mobilenets.micro.arith import conv_multipliers, multiply_by_quantized_multiplier
from mobilenets.micro.export import export_tflite, quantize_input
from mobilenets.micro.quantizer import quantize_int8
from mobilenets.micro.reference import run_int8
from mobilenets.micro.runtimes import litert_outputs, tflm_outputs
from mobilenets.micro.tflite import write_tflite
from mobilenets.testing import randomize_bn


def environment() -> dict[str, str | None]:
    """The machine and the versions of the runtimes compared, through ``mobilenets.env``."""
    pkgs = ("tflite-micro", "ai-edge-litert", "tflite", "flatbuffers", "numpy")
    return {"machine": platform.machine(), **versions(*pkgs)}


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def diffs(path: Path, ours: np.ndarray, xq: np.ndarray) -> dict[str, int]:
    tflm = tflm_outputs(path, xq)
    ref = litert_outputs(path, xq)
    return {
        "max_abs_diff_lsb_tflm": int(np.abs(ours.astype(int) - tflm).max()),
        "max_abs_diff_lsb_litert_ref": int(np.abs(ours.astype(int) - ref).max()),
    }


def random_model(name: str, width: float, res: int, padding: str) -> torch.nn.Module:
    """A 1000-class zoo model with seeded random weights (conv init and BN statistics), so that
    every run of this benchmark measures the same network."""
    torch.manual_seed(0)
    return randomize_bn(create_model(name, width, res, padding=padding), linear_std=0.05)


RANDOM_CASES = [
    ("mobilenet_v2", 0.35, 96),
    ("mobilenet_v2", 0.35, 144),
    ("mobilenet_v1", 0.25, 128),
]
SMOKE_CASES = [("mobilenet_v2", 0.35, 32)]  # --smoke: one tiny case, every path


def section_random(tmp: Path, cases: list[tuple[str, float, int]] = RANDOM_CASES) -> None:
    """Reference vs TFLite Micro and LiteRT on random inputs, for each (name, width, res)."""
    for name, width, res in cases:
        for padding in ("same", "symmetric"):
            t0 = time.time()
            model = random_model(name, width, res, padding)
            g = torch.Generator().manual_seed(0)
            qmodel = quantize_int8(model, torch.randn(32, 3, res, res, generator=g))
            path = write_tflite(qmodel, tmp / f"{name}-{res}-{padding}.tflite")
            xq = np.random.default_rng(0).integers(-128, 128, (20, res, res, 3)).astype(np.int8)
            ours = run_int8(qmodel, xq)
            emit(
                {
                    "section": "random",
                    "model": name,
                    "width": width,
                    "resolution": res,
                    "padding": padding,
                    "classes": 1000,
                    "inputs": 20,
                    **diffs(path, ours, xq),
                    "distinct_logits": int(len(np.unique(ours))),
                    "seconds": round(time.time() - t0, 1),
                }
            )


# MobileNetV3 (issue 17): (name, width, resolution, minimal), 1000 classes, SAME padding
V3_CASES = [
    ("mobilenet_v3_large", 1.0, 224, False),
    ("mobilenet_v3_small", 1.0, 224, False),
    ("mobilenet_v3_small", 0.75, 96, True),
    ("mobilenet_v3_small", 1.0, 128, True),
]


def section_v3(tmp: Path) -> None:
    """MobileNetV3 int8 (HARD_SWISH, squeeze-excite's MUL): reference vs TFLite Micro and LiteRT
    on 20 random inputs, with TFLite Micro's arena for the same file."""
    from mobilenets.micro.runtimes import tflm_arena

    for name, width, res, minimal in V3_CASES:
        t0 = time.time()
        torch.manual_seed(0)
        model = create_model(name, width, res, minimal=minimal, padding="same")
        model = randomize_bn(model, linear_std=0.05)
        g = torch.Generator().manual_seed(0)
        qmodel = quantize_int8(model, torch.randn(32, 3, res, res, generator=g))
        path = write_tflite(qmodel, tmp / f"{name}-{width}-{res}-{minimal}.tflite")
        xq = np.random.default_rng(0).integers(-128, 128, (20, res, res, 3)).astype(np.int8)
        ours = run_int8(qmodel, xq).reshape(20, -1)
        row = {"section": "v3", "model": name, "width": width, "resolution": res}
        row.update(minimal=minimal, classes=1000, inputs=20, ops=qmodel.op_counts())
        row.update(diffs(path, ours, xq), **tflm_arena(path, (1, res, res, 3)))
        emit({**row, "bytes": path.stat().st_size, "seconds": round(time.time() - t0, 1)})


def section_arena(tmp: Path) -> None:
    for padding in ("same", "symmetric"):
        model = random_model("mobilenet_v2", 0.35, 144, padding)
        calib = torch.randn(16, 3, 144, 144, generator=torch.Generator().manual_seed(0))
        r = export_tflite(model, tmp / f"v2-144-{padding}.tflite", int8=True, calib_data=calib)
        keys = ("bytes", "ops", "tflm_arena_bytes", "tflm_activation_bytes")
        emit(
            {
                "section": "arena",
                "model": "mobilenet_v2",
                "width": 0.35,
                "resolution": 144,
                "classes": 1000,
                "padding": padding,
                **{k: r[k] for k in (*keys, "tflm_persistent_bytes", "max_abs_diff_lsb")},
                "goal_same": {
                    "tflm_activation_bytes": 311040,
                    "tflm_arena_bytes": 390792,
                    "bytes": 1905000,
                },
            }
        )


TEST_IMAGES: int | None = None  # --test-images (default: all 10,000)


def _as_fully_connected(graph):
    """The graph with its classifier conv (1x1 output) written as FULLY_CONNECTED."""
    g = copy.deepcopy(graph)
    conv = g.ops[-1]
    assert conv.kind == "conv2d" and conv.output == g.output
    conv.kind = "fully_connected"
    conv.weights = conv.weights.reshape(conv.weights.shape[0], -1)  # (O, H*W*C): NHWC order
    g.tensors[conv.output].shape = (1, conv.weights.shape[0])
    return g


def section_fc_rounding(tmp: Path) -> None:
    model = random_model("mobilenet_v2", 0.35, 144, "same")
    calib = torch.randn(16, 3, 144, 144, generator=torch.Generator().manual_seed(0))
    graph = _as_fully_connected(quantize_int8(model, calib))
    path = write_tflite(graph, tmp / "v2-144-fc.tflite")
    xq = np.random.default_rng(0).integers(-128, 128, (20, 144, 144, 3)).astype(np.int8)
    fc = graph.ops[-1]
    features = graph.tensors[fc.inputs[0]]
    head = copy.deepcopy(graph)  # everything up to the classifier's input
    head.ops.pop()
    head.output = fc.inputs[0]
    x = run_int8(head, xq).reshape(len(xq), -1).astype(np.int64) - features.zero_point
    acc = x @ fc.weights.astype(np.int64).T + fc.bias.astype(np.int64)
    out = graph.output_tensor
    m, shift = conv_multipliers(features.scale, fc.weight_scales[:1], out.scale)
    m, shift = int(np.ravel(m)[0]), int(np.ravel(shift)[0])
    twice = multiply_by_quantized_multiplier(acc, m, shift)
    once = (acc * m + (1 << (30 - shift))) >> (31 - shift)

    def clamp(v: np.ndarray) -> np.ndarray:
        return np.clip(v + out.zero_point, fc.act_min, fc.act_max)

    runtimes = {"tflm": tflm_outputs(path, xq), "litert_ref": litert_outputs(path, xq)}
    for name, got in runtimes.items():
        got = got.reshape(len(xq), -1).astype(np.int64)
        emit(
            {
                "section": "fc_rounding",
                "runtime": name,
                "logits": int(got.size),
                "multiplier": m,
                "shift": shift,
                "differ_from_two_roundings": int((got != clamp(twice)).sum()),
                "differ_from_one_rounding": int((got != clamp(once)).sum()),
            }
        )


def _fashion(ck, n_calib: int = 512):
    from mobilenets.data import calibration_inputs, test_batches

    calib = calibration_inputs("fashion-mnist", ck.preprocess, n_calib)
    test = list(test_batches("fashion-mnist", ck.preprocess, TEST_IMAGES))
    return calib, test


def section_checkpoint(path: str, tmp: Path) -> None:
    from mobilenets.checkpoint import load_checkpoint
    from mobilenets.micro.tflite import read_tflite

    t0 = time.time()
    ck = load_checkpoint(path)
    cfg = ck.config
    calib, test = _fashion(ck)
    out = tmp / "ck.tflite"
    prep = ck.preprocess
    r = export_tflite(ck.model, out, int8=True, calib_data=calib, preprocess=prep)
    graph, _ = read_tflite(out)  # everything below runs on the file as written
    xq = np.concatenate([quantize_input(x, graph) for x, _ in test])
    y = torch.cat([t for _, t in test]).numpy()
    ours = run_int8(graph, xq)
    with torch.no_grad():
        fp = torch.cat([ck.model(x) for x, _ in test]).argmax(1).numpy()
    q = ours.argmax(1)
    fp32_top1, int8_top1 = float((fp == y).mean()), float((q == y).mean())
    emit(
        {
            "section": "checkpoint",
            "checkpoint": path,
            "model": cfg.name,
            "width": cfg.width_mult,
            "resolution": cfg.resolution,
            "padding": cfg.padding,
            "calib_images": len(calib),
            "test_images": len(xq),
            "fp32_top1": fp32_top1,
            "int8_top1": int8_top1,
            "agreement": float((q == fp).mean()),
            "top1_drop_points": round(100 * (fp32_top1 - int8_top1), 3),
            **{k: r.get(k) for k in ("bytes", "tflm_arena_bytes", "tflm_activation_bytes")},
            **diffs(out, ours, xq),
            "seconds": round(time.time() - t0, 1),
        }
    )


def section_calib(path: str) -> None:
    from mobilenets.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    calib, test = _fashion(ck)
    y = torch.cat([t for _, t in test]).numpy()
    with torch.no_grad():
        fp = torch.cat([ck.model(x) for x, _ in test]).argmax(1).numpy()
    for method in ("minmax", "percentile", "mse"):
        q = quantize_int8(ck.model, calib, method=method)
        pred = np.concatenate([run_int8(q, quantize_input(x, q)) for x, _ in test]).argmax(1)
        emit(
            {
                "section": "calib",
                "checkpoint": path,
                "method": method,
                "fp32_top1": float((fp == y).mean()),
                "int8_top1": float((pred == y).mean()),
                "agreement": float((pred == fp).mean()),
            }
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", default=[], metavar="CKPT")
    p.add_argument("--sections", default="random,v3,arena,fc_rounding,checkpoints")
    p.add_argument("--calib-compare", action="store_true")
    p.add_argument("--test-images", type=int, default=None, help="default: all 10,000")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="the random section on one 32 px model only (seconds; the figures mean nothing)",
    )
    args = p.parse_args(argv)
    global TEST_IMAGES
    TEST_IMAGES = args.test_images
    torch.set_num_threads(1 if args.smoke else 2)
    emit({"section": "env", **environment()})
    sections = {"random"} if args.smoke else set(args.sections.split(","))
    with tempfile.TemporaryDirectory(prefix="mobilenets-bench-tflite-") as tmp:
        tmp = Path(tmp)
        if "random" in sections:
            section_random(tmp, SMOKE_CASES if args.smoke else RANDOM_CASES)
        if "v3" in sections:
            section_v3(tmp)
        if "arena" in sections:
            section_arena(tmp)
        if "fc_rounding" in sections:
            section_fc_rounding(tmp)
        if "checkpoints" in sections:
            for ck in args.checkpoint:
                section_checkpoint(ck, tmp)
        if args.calib_compare and args.checkpoint:
            section_calib(args.checkpoint[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
