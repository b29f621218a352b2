"""Inference latency on this machine: eager PyTorch, torch.compile, onnxruntime fp32 and int8.

Works on any model by name with random weights, so the whole alpha x rho grid and the
ResNet-50 / VGG16 baselines can be timed without training; int8 of such a model is calibrated
on random data (its latency is meaningful, its accuracy is not).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import MobilenetsError, UsageError

RUNTIMES = ("torch", "torch-compile", "onnx", "onnx-int8")
DEFAULT_RUNTIMES = ("torch", "onnx", "onnx-int8")


def default_threads() -> int:
    """The CPU cores this process may run on."""
    from .cli import usable_cpus

    return usable_cpus()


def time_fn(fn: Callable[[], Any], runs: int = 50, warmup: int = 10) -> np.ndarray:
    """Wall-clock seconds of ``runs`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        t = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t
    return times


def summarize(times: np.ndarray, batch_size: int) -> dict[str, float]:
    """median_ms, p90_ms, mean_ms and images_per_s (from the median) of per-run seconds."""
    med = float(np.median(times))
    return {
        "median_ms": med * 1e3,
        "p90_ms": float(np.percentile(times, 90)) * 1e3,
        "mean_ms": float(times.mean()) * 1e3,
        "images_per_s": batch_size / med,
    }


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (what a state_dict stores)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def bench(
    model: nn.Module | str | Path,
    runtimes: Sequence[str] = DEFAULT_RUNTIMES,
    *,
    batch_size: int = 1,
    threads: int | None = None,
    runs: int = 50,
    warmup: int = 10,
    calib_data: torch.Tensor | None = None,
    export_kwargs: dict[str, Any] | None = None,
    spin: bool = True,
) -> list[dict[str, Any]]:
    """Time ``model`` (a module with ``.config``, or an exported .onnx file) in each runtime.

    ``threads``: 1 .. the usable cores (default all). ``spin``: onnxruntime's
    ``session.intra_op.allow_spinning`` (False on a busy or shared machine).
    ``calib_data``: float model inputs for ``onnx-int8``; 64 random inputs when None.
    Returns one dict per runtime: runtime, median_ms, p90_ms, mean_ms, images_per_s, bytes, ...
    """
    from .export import export_onnx, ort_session, read_metadata
    from .onnx_quant import quantize_onnx

    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise UsageError(
            f"unknown runtime(s) {', '.join(unknown)}; choose from {', '.join(RUNTIMES)}"
        )
    if not runtimes:
        raise UsageError(f"no runtime given; choose from {', '.join(RUNTIMES)}")
    if threads is not None and not (
        not isinstance(threads, bool)
        and isinstance(threads, int)
        and 1 <= threads <= default_threads()
    ):
        raise UsageError(
            f"threads must be in 1..{default_threads()} (the usable CPU cores), got {threads!r}"
        )
    threads = threads or default_threads()
    onnx_file = None if isinstance(model, nn.Module) else Path(model)
    if onnx_file is not None:
        cfg = read_metadata(onnx_file)["config"]
        if any(r.startswith("torch") for r in runtimes):
            raise UsageError("an .onnx file runs only in the onnx and onnx-int8 runtimes")
    else:
        cfg = model.config
        model.eval()
    x = torch.randn(batch_size, cfg.in_chans, cfg.resolution, cfg.resolution)
    common = {
        "model": cfg.name,
        "width": cfg.width_mult,
        "resolution": cfg.resolution,
        "batch_size": batch_size,
        "threads": threads,
        "runs": runs,
        "spin": spin,
    }
    results = []
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="mobilenets-bench-") as tmp:
            fp32 = onnx_file
            for rt in runtimes:
                extra: dict[str, Any] = {}
                if rt in ("torch", "torch-compile"):
                    fn = torch.compile(model) if rt == "torch-compile" else model
                    with torch.inference_mode():
                        times = time_fn(lambda f=fn: f(x), runs, warmup)
                    size = state_bytes(model)
                else:
                    if fp32 is None:
                        fp32 = Path(tmp) / "fp32.onnx"
                        info = export_onnx(model, fp32, atol=None, **(export_kwargs or {}))
                        extra["max_abs_diff"] = info["max_abs_diff"]
                    path = fp32
                    if rt == "onnx-int8":
                        path = Path(tmp) / "int8.onnx"
                        data = calib_data
                        if data is None:
                            data = torch.randn(64, cfg.in_chans, cfg.resolution, cfg.resolution)
                            extra["note"] = "calibrated on random data: latency only, not accuracy"
                        q = quantize_onnx(fp32, path, data)
                        extra["scheme"] = q["scheme"]
                    sess = ort_session(path, threads, spin)
                    feed = {sess.get_inputs()[0].name: x.numpy()}
                    times = time_fn(lambda s=sess, f=feed: s.run(None, f), runs, warmup)
                    size = path.stat().st_size
                results.append(
                    {
                        "runtime": rt,
                        **common,
                        **summarize(times, batch_size),
                        "bytes": size,
                        **extra,
                    }
                )
    finally:
        torch.set_num_threads(prev_threads)
    return results


# ---------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    from .cli import add_data_args, add_model_args, add_runtime_args, int_at_least

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
    from .cli import model_from_args, refuse_model_options
    from .config import MODEL_NAMES
    from .export import default_preprocess

    if args.model in MODEL_NAMES:
        model = model_from_args(args, args.model)
        return model, {"preprocess": default_preprocess(model.config)}
    refuse_model_options(args, f"{args.model} (a saved model keeps its own configuration)")
    path = Path(args.model)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise MobilenetsError(f"{path}: no such ONNX file")
        return path, {}
    if not path.exists():
        raise MobilenetsError(
            f"{args.model!r} is neither a model name ({', '.join(MODEL_NAMES)}) nor a file"
        )
    from .checkpoint import load_checkpoint

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
    if args.calib_data and "onnx-int8" in runtimes:
        from .export import read_metadata
        from .onnx_quant import calibration_inputs

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
    notes = {r["note"] for r in results if "note" in r}
    for n in notes:
        print(f"note: onnx-int8 {n}")
    return 0
