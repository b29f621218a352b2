"""``mobilenets bench``: inference latency per runtime."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from torch import nn

from ..bench import DEFAULT_RUNTIMES, RUNTIMES, bench
from ..errors import MobilenetsError, UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    from .args import add_data_args, add_model_args, add_runtime_args, int_at_least

    p = subparsers.add_parser(
        "bench",
        help="time inference in PyTorch and onnxruntime (fp32, int8)",
        description="Median and p90 latency, throughput and model size per runtime. A model "
        "name times an untrained model (random weights); its int8 version is calibrated on "
        "random data. torch-compile is opt-in (compiling takes a minute).",
    )
    p.add_argument(
        "model", metavar="MODEL_OR_NAME", help="model name, checkpoint folder or .onnx file"
    )
    add_model_args(p)
    p.add_argument("--batch-size", type=int_at_least(1), default=1)
    add_runtime_args(p)
    p.add_argument("--runs", type=int_at_least(1), default=50)
    p.add_argument("--warmup", type=int_at_least(0), default=10)
    p.add_argument(
        "--runtimes",
        default=",".join(DEFAULT_RUNTIMES),
        help=f"comma-separated, from {','.join(RUNTIMES)} (default {','.join(DEFAULT_RUNTIMES)})",
    )
    add_data_args(
        p,
        flag="--calib-data",
        help="int8 calibration data for a checkpoint (default: random)",
        workers=False,
        skip_bad_images=False,
    )
    p.add_argument("--calib-samples", type=int_at_least(1), default=256)
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per runtime")
    p.set_defaults(func=run_bench)


def _load(args: argparse.Namespace) -> tuple[nn.Module | Path, dict[str, Any]]:
    """The model to time and the export_onnx keywords (class_names, preprocess) it carries."""
    from ..artifact import default_preprocess
    from ..config import MODEL_NAMES
    from .args import model_from_args, refuse_model_options

    if args.model in MODEL_NAMES:
        model = model_from_args(args, args.model)
        return model, {"preprocess": default_preprocess(model.config)}
    refuse_model_options(args, f"{args.model} (a saved model keeps its own configuration)")
    path = Path(args.model)
    if path.suffix == ".tflite":
        raise UsageError(
            f"{path}: bench takes a model name, checkpoint folder or .onnx file; to time the "
            ".tflite path, bench its checkpoint with --runtimes tflite-int8"
        )
    if path.suffix == ".onnx":
        if not path.is_file():
            raise MobilenetsError(f"{path}: no such ONNX file")
        return path, {}
    if not path.exists():
        raise MobilenetsError(
            f"{args.model!r} is neither a model name ({', '.join(MODEL_NAMES)}) nor a file"
        )
    from ..checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    return ck.model, {"class_names": ck.class_names, "preprocess": ck.preprocess}


def parse_runtimes(text: str) -> list[str]:
    """``--runtimes`` as a list: known names, at least one."""
    runtimes = [r.strip() for r in text.split(",") if r.strip()]
    if not runtimes:
        raise UsageError(f"--runtimes: no runtime given; choose from {','.join(RUNTIMES)}")
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise UsageError(
            f"--runtimes: unknown {', '.join(unknown)}; choose from {','.join(RUNTIMES)}"
        )
    return runtimes


def run_bench(args: argparse.Namespace) -> int:
    runtimes = parse_runtimes(args.runtimes)
    model, export_kwargs = _load(args)
    calib = None
    if args.calib_data and ("onnx-int8" in runtimes or "tflite-int8" in runtimes):
        from ..data import calibration_inputs
        from ..export import read_metadata

        if isinstance(model, Path):
            prep = read_metadata(model)["preprocess"]
        else:
            prep = export_kwargs["preprocess"]
        calib = calibration_inputs(args.calib_data, prep, args.calib_samples, args.data_dir)
    results = bench(
        model,
        runtimes,
        batch_size=args.batch_size,
        threads=args.threads,
        runs=args.runs,
        warmup=args.warmup,
        calib_data=calib,
        export_kwargs=export_kwargs,
        spin=args.spin,
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    r0 = results[0]
    print(
        f"{r0['model']} width {r0['width']:g}, {r0['resolution']} px, batch {r0['batch_size']}, "
        f"{r0['threads']} threads{'' if r0['spin'] else ' (no spin)'}, {r0['runs']} runs"
    )
    print(f"{'runtime':<14}{'median ms':>10}{'p90 ms':>10}{'img/s':>10}{'MB':>9}")
    for r in results:
        print(
            f"{r['runtime']:<14}{r['median_ms']:>10.2f}{r['p90_ms']:>10.2f}"
            f"{r['images_per_s']:>10.1f}{r['bytes'] / 1e6:>9.2f}"
        )
    for r in results:
        if "note" in r:
            print(f"note: {r['runtime']} {r['note']}")
    return 0
