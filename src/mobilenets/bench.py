"""Inference latency on this machine: eager PyTorch, torch.compile, onnxruntime fp32 and int8.

Works on any model by name with random weights, so the whole alpha x rho grid and the
ResNet-50 / VGG16 baselines can be timed without training; int8 of such a model is calibrated
on random data (its latency is meaningful, its accuracy is not).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import ModelConfig
from .errors import UsageError

RUNTIMES = ("torch", "torch-compile", "onnx", "onnx-int8", "tflite-int8")
DEFAULT_RUNTIMES = ("torch", "onnx", "onnx-int8")


def default_threads() -> int:
    """The CPU cores this process may run on."""
    from .env import usable_cpus

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
    ``calib_data``: float model inputs for ``onnx-int8`` and ``tflite-int8``; 64 random inputs
    when None. ``tflite-int8`` runs the int8 ``.tflite`` in LiteRT's optimized kernels (batch 1
    per invoke; skipped with a note when ai-edge-litert is not installed).
    Returns one dict per runtime: runtime, median_ms, p90_ms, mean_ms, images_per_s, bytes, ...
    """
    from .export import export_onnx

    _check_runtimes_and_threads(runtimes, threads)
    threads = threads or default_threads()
    cfg, onnx_file = _config_of(model, runtimes)
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
    results, onnx_opts = [], (threads, spin, runs, warmup)
    with _torch_threads(threads), tempfile.TemporaryDirectory(prefix="mobilenets-bench-") as tmp:
        fp32 = onnx_file
        for rt in runtimes:
            extra: dict[str, Any] = {}
            if rt == "tflite-int8":
                row = _bench_tflite(model, Path(tmp), x, calib_data, runs, warmup)
                if row is not None:
                    results.append({"runtime": rt, **common, **row})
                continue
            if rt in ("torch", "torch-compile"):
                times, size = _time_torch(model, rt == "torch-compile", x, runs, warmup)
            else:
                if fp32 is None:  # exported once, for the first ONNX runtime
                    fp32 = Path(tmp) / "fp32.onnx"
                    info = export_onnx(model, fp32, atol=None, **(export_kwargs or {}))
                    extra["max_abs_diff"] = info["max_abs_diff"]
                int8 = rt == "onnx-int8"
                times, size = _time_onnx(int8, fp32, Path(tmp), x, calib_data, extra, onnx_opts)
            row = {**summarize(times, batch_size), "bytes": size, **extra}
            results.append({"runtime": rt, **common, **row})
    return results


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """PyTorch's intra-op thread count set to ``threads`` inside the block, restored after."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _check_runtimes_and_threads(runtimes: Sequence[str], threads: int | None) -> None:
    """UsageError for an unknown or empty runtime list, or threads outside 1..usable cores."""
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


def _config_of(
    model: nn.Module | str | Path, runtimes: Sequence[str]
) -> tuple[ModelConfig, Path | None]:
    """(the model's ModelConfig, the .onnx file or None); an .onnx file runs only in onnx*."""
    from .export import read_metadata

    if isinstance(model, nn.Module):
        model.eval()
        return model.config, None
    onnx_file = Path(model)
    cfg = read_metadata(onnx_file)["config"]
    if any(r.startswith(("torch", "tflite")) for r in runtimes):
        raise UsageError("an .onnx file runs only in the onnx and onnx-int8 runtimes")
    return cfg, onnx_file


def _time_torch(
    model: nn.Module, compiled: bool, x: torch.Tensor, runs: int, warmup: int
) -> tuple[np.ndarray, int]:
    """(per-run seconds, state bytes) of the eager or ``torch.compile``-d model."""
    fn = torch.compile(model) if compiled else model
    with torch.inference_mode():
        times = time_fn(lambda: fn(x), runs, warmup)
    return times, state_bytes(model)


def _time_onnx(
    int8: bool,
    fp32: Path,
    tmp: Path,
    x: torch.Tensor,
    calib: torch.Tensor | None,
    extra: dict[str, Any],
    opts: tuple[int, bool, int, int],
) -> tuple[np.ndarray, int]:
    """(per-run seconds, file bytes) in onnxruntime of ``fp32`` or, with ``int8``, of its static
    int8 quantization (calibrated on ``calib``; its note and scheme go into ``extra``).
    ``opts``: (threads, spin, runs, warmup)."""
    from .backend import load_backend
    from .onnx_quant import quantize_onnx

    threads, spin, runs, warmup = opts

    path = fp32
    if int8:
        path = tmp / "int8.onnx"
        if calib is None:
            calib = torch.randn(64, *x.shape[1:])
            extra["note"] = "calibrated on random data: latency only, not accuracy"
        extra["scheme"] = quantize_onnx(fp32, path, calib)["scheme"]
    sess = load_backend(path, "onnxruntime", threads=threads, spin=spin).session
    feed = {sess.get_inputs()[0].name: x.numpy()}  # the raw session call: no chunking timed
    times = time_fn(lambda: sess.run(None, feed), runs, warmup)
    return times, path.stat().st_size


def _bench_tflite(
    model: nn.Module, tmp: Path, x: torch.Tensor, calib: torch.Tensor | None, runs: int, warmup: int
) -> dict[str, Any] | None:
    """Time the int8 .tflite in LiteRT's optimized kernels, one image per invoke."""
    import warnings

    from .backend import load_backend, quantize_input
    from .micro.export import export_tflite
    from .micro.runtimes import have_litert

    if not have_litert():
        warnings.warn("tflite-int8 skipped: ai-edge-litert is not installed", stacklevel=2)
        return None
    cfg = model.config
    extra: dict[str, Any] = {}
    if calib is None:
        calib = torch.randn(64, cfg.in_chans, cfg.resolution, cfg.resolution)
        extra["note"] = "calibrated on random data: latency only, not accuracy"
    path = tmp / "int8.tflite"
    export_tflite(model, path, int8=True, calib_data=calib, arena=False, verify_inputs=calib[:1])
    backend = load_backend(path, "litert", fast=True)
    backend.logits(x[:1])  # loads the interpreter; the raw invoke below is what is timed
    it = backend.interpreter
    inp = it.get_input_details()[0]["index"]
    xq = quantize_input(x[:1], backend.graph)

    def once() -> None:
        it.set_tensor(inp, xq)
        it.invoke()

    times = time_fn(once, runs, warmup) * len(x)  # batch: one invoke per image
    return {**summarize(times, len(x)), "bytes": path.stat().st_size, **extra}
