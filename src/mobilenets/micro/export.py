"""``.tflite`` export: :func:`export_tflite` (fp32, or full-integer int8 with int8 input/output).

The int8 input holds ``x = (pixel / 255 - mean) / std`` quantized as
``q = clamp(round(x / scale) + zero_point, -128, 127)`` with the input tensor's scale and zero
point (:func:`quantize_input`); the output is int8 logits (no softmax: TFLite Micro's int8
SOFTMAX has been seen to abort the process).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backend import dequantize, quantize_input
from ..errors import MobilenetsError, UsageError
from ..preprocess import Preprocess
from .graph import QuantizedModel
from .tflite_model import (
    IO_CHOICES,
    dequantize_like_tflite,
    quantize_like_tflite,
    with_float_io,
    with_uint8_io,
)

__all__ = ["dequantize", "export_tflite", "quantize_input"]

FP32_ATOL = 1e-4
FP16_ATOL = 2e-2  # fp16 weights: 11-bit mantissas, relative error up to 2^-11 per weight
SCHEME = (
    "LiteRT int8: symmetric per-channel int8 weights, asymmetric per-tensor int8 activations, "
    "int32 bias, int8 input and logits"
)


def same_padding_variant(graph: QuantizedModel) -> QuantizedModel | None:
    """The graph with every PAD op folded into the conv after it as SAME padding: the shapes
    and arena of the ``padding="same"`` model (for memory figures only: its numbers differ).
    None when a PAD feeds something else or SAME would change an output shape."""
    from .lower import same_padding

    source = {op.output: op.inputs[0] for op in graph.ops if op.kind == "pad"}
    ops = []
    for op in graph.ops:
        if op.kind == "pad":
            continue
        if op.inputs[0] in source:
            x = source[op.inputs[0]]
            _, h, w, _ = graph.tensors[x].shape
            if op.kind not in ("conv2d", "depthwise_conv2d"):
                return None
            if graph.tensors[op.output].shape[1:3] != (
                -(-h // op.stride[0]),
                -(-w // op.stride[1]),
            ):
                return None
            kh, kw = op.weights.shape[1:3]
            padding = same_padding(h, kh, op.stride[0]) + same_padding(w, kw, op.stride[1])
            op = dataclasses.replace(op, inputs=(x, *op.inputs[1:]), padding=padding)
        ops.append(op)
    return dataclasses.replace(graph, ops=ops)


TFLITE_NAMES = {
    "conv2d": "CONV_2D",
    "depthwise_conv2d": "DEPTHWISE_CONV_2D",
    "fully_connected": "FULLY_CONNECTED",
    "add": "ADD",
    "avg_pool2d": "AVERAGE_POOL_2D",
    "mean": "MEAN",
    "max_pool2d": "MAX_POOL_2D",
    "pad": "PAD",
    "reshape": "RESHAPE",
}
NO_TFLM = "tflite-micro is not installed (pip install 'mobilenets[micro]')"
NO_LITERT = "ai-edge-litert is not installed (pip install 'mobilenets[micro]')"


def _check_model(model: nn.Module) -> Any:
    from ..fold import check_finite_weights

    if not isinstance(model, nn.Module):
        raise TypeError(
            f"export_tflite: model must be a mobilenets torch.nn.Module (create_model or "
            f"load_checkpoint(...).model), got {type(model).__name__}"
        )
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise UsageError("export_tflite needs a mobilenets model (with a .config)")
    check_finite_weights(model)
    if cfg.name == "vgg16" and cfg.resolution != 224:
        raise UsageError(
            f"vgg16 exports to .tflite only at 224 px (where its adaptive average pool is an "
            f"identity), got resolution {cfg.resolution}"
        )
    return cfg


def export_tflite(
    model: nn.Module,
    path: str | Path,
    *,
    int8: bool = False,
    calib_data: torch.Tensor | np.ndarray | Iterable[torch.Tensor] | None = None,
    preprocess: Preprocess | None = None,
    class_names: Sequence[str] | None = None,
    calib_method: str | None = None,
    verify_inputs: torch.Tensor | None = None,
    eval_data: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    arena: bool = True,
    metadata: dict[str, Any] | None = None,
    io: str = "int8",
    fp16: bool = False,
) -> dict[str, Any]:
    """Fold BN and write ``model`` as ONE ``.tflite`` file (fp32, or full-integer int8).

    Args:
        int8: int8 weights and activations, int8 input and output (logits); needs ``calib_data``.
        calib_data: normalized float model inputs (N, C, H, W) from training images.
        preprocess, class_names: stored in the file's metadata (with the model config).
        calib_method: ``minmax``, ``percentile`` or ``mse`` (the default; see ``micro.quantizer``).
        verify_inputs: normalized float inputs to verify on (20 random ones when None): fp32
            against PyTorch in LiteRT (max diff <= 1e-4 * max(1, |logit|), else
            MobilenetsError); int8: our reference against TFLite Micro and LiteRT (in LSB).
        eval_data: (inputs, labels) batches for fp32/int8 top-1 and agreement.
        arena: measure TFLite Micro's arena (int8 only).
        metadata: extra JSON entries for the file's metadata (e.g. ``data``: the dataset spec).
        io: int8 files only: ``int8`` (int8 input and logits), ``uint8`` (uint8 input and
            logits, zero points + 128: a QUANTIZE at each end) or ``float`` (float32 input and
            logits: QUANTIZE/DEQUANTIZE at the boundary); the int8 graph inside is the same.
        fp16: fp32 files only: weights stored as float16 (half the bytes), DEQUANTIZEd to
            float32 at load, as TensorFlow's converter writes them for phone GPUs; verified in
            LiteRT against PyTorch within ``FP16_ATOL``.

    Returns:
        The report: path, bytes, ops, padding, tflm_* figures, max_abs_diff_lsb, accuracies...
    """
    from ..artifact import ArtifactMeta
    from ..atomic import replace, temp_sibling
    from .quantizer import DEFAULT_METHOD

    path = _check_path(path)
    _check_io(io, int8)
    if fp16 and int8:
        raise UsageError("--fp16 stores float weights: it is for fp32 files, not --int8")
    cfg = _check_model(model)
    art = ArtifactMeta.create(cfg, class_names, preprocess)
    method = calib_method or DEFAULT_METHOD
    graph = _graph(model, _check_calib(calib_data), method) if int8 else _graph(model)
    graph.class_names, graph.preprocess = list(art.class_names), art.preprocess.to_dict()
    quant = {"scheme": SCHEME, "calib_method": method} if int8 else None
    tmp = temp_sibling(path, "unverified")  # moved to ``path`` only once verified
    try:
        meta = {**(metadata or {}), "quantization": quant}
        report = _write_and_verify(model, graph, path, tmp, meta, int8, io, fp16, verify_inputs)
        if int8 and arena and io == "int8":
            report.update(_arena_report(tmp, graph))
        if eval_data is not None:
            report.update(_accuracy(model, graph if int8 else None, eval_data))
        replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def _write_and_verify(
    model: nn.Module,
    graph: QuantizedModel,
    path: Path,
    tmp: Path,
    metadata: dict[str, Any],
    int8: bool,
    io: str,
    fp16: bool,
    verify_inputs: torch.Tensor | None,
) -> dict[str, Any]:
    """Write ``graph`` (wrapped for ``io``, fp16 weights if asked) to ``tmp`` and verify it:
    fp32 against PyTorch in LiteRT, int8 against TFLite Micro and LiteRT; the report."""
    from .tflite import write_tflite

    cfg = model.config
    written = {"float": with_float_io, "uint8": with_uint8_io}.get(io, lambda g: g)(graph)
    extra = {"weights": "fp16"} if fp16 else {}
    extra.update({"io": "uint8"} if io == "uint8" else {})
    write_tflite(written, tmp, {**metadata, **extra})
    method = (metadata.get("quantization") or {}).get("calib_method")
    report = _file_report(path, tmp, written, cfg, method if int8 else None)
    if fp16:
        report["format"] = "tflite-fp16"
    x = verify_inputs if verify_inputs is not None else _seeded_inputs(cfg, 20)
    report["verify_samples"] = len(x)
    if io != "int8":
        report.update(io=io, **_verify_wrapped_io(tmp, graph, x, io))
    elif int8:
        report.update(_verify_int8(tmp, graph, x))
    else:
        report.update(_verify_fp32(model, tmp, x, **({"atol": FP16_ATOL} if fp16 else {})))
    return report


def _file_report(path: Path, tmp: Path, graph: QuantizedModel, cfg: Any, method: str | None):
    """The report's first entries: path, format, bytes, ops, padding (and calib_method)."""
    report: dict[str, Any] = {
        "path": str(path),
        "format": "tflite-fp32" if method is None else "tflite-int8",
        "bytes": tmp.stat().st_size,
        "ops": {_tflite_name(k): v for k, v in graph.op_counts().items()},
        "padding": cfg.padding,
    }
    if method is not None:
        report["calib_method"] = method
    return report


def _tflite_name(kind: str) -> str:
    from .ops import TFLITE_NAMES as ALL

    return TFLITE_NAMES.get(kind) or ALL.get(kind, kind.upper())


def _check_io(io: Any, int8: bool) -> None:
    """UsageError unless ``io`` is one of :data:`IO_CHOICES` (and ``float`` only for int8)."""
    if io not in IO_CHOICES:
        raise UsageError(f"io must be one of {', '.join(IO_CHOICES)}, got {io!r}")
    if io != "int8" and not int8:
        raise UsageError(f"--io {io} wraps an int8 graph: add --int8 (an fp32 file is float)")


def _verify_wrapped_io(
    path: Path, graph: QuantizedModel, x: torch.Tensor, io: str
) -> dict[str, Any]:
    """A float- or uint8-I/O file in TFLite Micro and LiteRT (reference kernels) against our
    reference of the int8 graph inside, its input and output converted as TFLite does: the
    difference in output LSB (0: bit-exact)."""
    from .reference import run_int8
    from .runtimes import have_litert, have_tflm, litert_outputs, tflm_outputs

    t_in, t_out = graph.input_tensor, graph.output_tensor
    xf = np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 2, 3, 1))
    if io == "uint8":
        xq = quantize_input(x, graph)
        feed = (xq.astype(np.int16) + 128).astype(np.uint8)
        want = run_int8(graph, xq).astype(np.float64) + 128
    else:
        feed = xf
        ours = run_int8(graph, quantize_like_tflite(xf, t_in.scale, t_in.zero_point))
        want = dequantize_like_tflite(ours, t_out.scale, t_out.zero_point)
    want = want.reshape(len(xf), -1)
    unit = 1.0 if io == "uint8" else t_out.scale

    def lsb(got: np.ndarray) -> int:
        diff = np.abs(got.reshape(len(xf), -1).astype(np.float64) - want).max()
        return int(np.round(diff / unit))

    out: dict[str, Any] = {"max_abs_diff_lsb": None, "litert_max_abs_diff_lsb": None}
    if have_tflm():
        out["max_abs_diff_lsb"] = lsb(tflm_outputs(path, feed))
    else:
        out["tflm_note"] = NO_TFLM
    if have_litert():
        out["litert_max_abs_diff_lsb"] = lsb(litert_outputs(path, feed))
    else:
        out["litert_note"] = NO_LITERT
    return out


def _check_path(path: Any) -> Path:
    """``path`` as a Path: TypeError unless it is a str or os.PathLike, UsageError for a
    folder (the .tflite file is written next to nothing else)."""
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            "export_tflite: path must be a str or os.PathLike naming the .tflite file to "
            f"write, got {type(path).__name__}"
        )
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a folder; name the .tflite file to write")
    if not path.parent.is_dir():
        raise UsageError(f"{path}: folder {path.parent} does not exist")
    return path


def _check_calib(calib_data: Any) -> Any:
    """``calib_data`` with at least one image: ValueError naming it when it has none (a list
    or other iterable of batches is materialised to count them)."""
    if calib_data is None:
        return None
    if isinstance(calib_data, (torch.Tensor, np.ndarray)):
        batches = [calib_data]
    elif isinstance(calib_data, Iterable) and not isinstance(calib_data, (str, bytes)):
        batches = list(calib_data)
        calib_data = batches
    else:
        raise TypeError(
            "export_tflite: calib_data must be a float tensor/array (N, C, H, W) or an iterable "
            f"of them, got {type(calib_data).__name__}"
        )
    n = sum(len(b) if getattr(b, "ndim", 0) == 4 else 1 for b in batches)
    if n == 0:
        raise ValueError(
            "export_tflite: calib_data has 0 images; an int8 export needs normalized float "
            "inputs (N, C, H, W) with N >= 1 (a few hundred training images)"
        )
    return calib_data


def _seeded_inputs(cfg: Any, n: int) -> torch.Tensor:
    """``n`` standard-normal model inputs from a generator seeded with 0 (reproducible)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, cfg.in_chans, cfg.resolution, cfg.resolution, generator=g)


def _graph(
    model: nn.Module,
    calib_data: torch.Tensor | np.ndarray | Iterable[torch.Tensor] | None = None,
    method: str | None = None,
) -> QuantizedModel:
    """The fp32 graph of ``model`` (BN folded), or with ``method`` its int8 quantization
    calibrated on ``calib_data``."""
    from ..fold import fold_bn
    from .lower import lower
    from .quantizer import quantize_int8

    if method is None:
        lowered = lower(fold_bn(model))
        if lowered.fixed_ranges:  # MobileNetV3's squeeze-excite gate
            raise UsageError(
                "this model's hard-sigmoid is folded for int8 only: export it with --int8 "
                "(or as ONNX for float32)"
            )
        return lowered.graph
    if calib_data is None:
        raise UsageError("an int8 export needs calibration data (calib_data / --calib-data)")
    return quantize_int8(model, calib_data, method=method)


def _verify_int8(path: Path, graph: QuantizedModel, x: torch.Tensor) -> dict[str, Any]:
    """Our reference against TFLite Micro and LiteRT (reference kernels), in LSB."""
    from .reference import run_int8
    from .runtimes import have_litert, have_tflm, litert_outputs, tflm_outputs

    xq = quantize_input(x, graph)
    ours = run_int8(graph, xq).astype(np.int32)
    out: dict[str, Any] = {"max_abs_diff_lsb": None, "litert_max_abs_diff_lsb": None}
    if have_tflm():
        out["max_abs_diff_lsb"] = int(np.abs(tflm_outputs(path, xq) - ours).max())
    else:
        out["tflm_note"] = NO_TFLM
    if have_litert():
        out["litert_max_abs_diff_lsb"] = int(np.abs(litert_outputs(path, xq) - ours).max())
    else:
        out["litert_note"] = NO_LITERT
    return out


@torch.inference_mode()
def _verify_fp32(
    model: nn.Module, path: Path, x: torch.Tensor, atol: float = FP32_ATOL
) -> dict[str, Any]:
    """LiteRT (reference kernels) against PyTorch on float inputs."""
    from .runtimes import have_litert, litert_outputs

    if not have_litert():
        return {"max_abs_diff": None, "litert_note": NO_LITERT}
    ref = torch.cat([model.eval()(c) for c in x.float().split(64)]).numpy().astype(np.float64)
    got = litert_outputs(path, x.float().numpy().transpose(0, 2, 3, 1))
    diff, scale = float(np.abs(ref - got).max()), float(np.abs(ref).max())
    if not diff <= atol * max(1.0, scale):
        raise MobilenetsError(
            f"{path}: LiteRT and PyTorch logits differ by {diff:.3g} "
            f"(> {atol:g} x max(1, largest |logit| {scale:.3g}))"
        )
    return {"max_abs_diff": diff, "max_abs_logit": scale}


def _arena_report(path: Path, graph: QuantizedModel) -> dict[str, Any]:
    """TFLite Micro's arena; with PAD ops, also the arena without them (SAME padding)."""
    from .runtimes import have_tflm, tflm_arena
    from .tflite import write_tflite

    if not have_tflm():
        none = dict.fromkeys(("tflm_arena_bytes", "tflm_activation_bytes", "tflm_persistent_bytes"))
        return {**none, "tflm_note": NO_TFLM}
    shape = graph.input_tensor.shape
    out: dict[str, Any] = tflm_arena(path, shape)
    pads = graph.op_counts().get("pad", 0)
    variant = same_padding_variant(graph) if pads else None
    if variant is not None:
        with tempfile.TemporaryDirectory(prefix="mobilenets-tflite-") as tmp:
            same = tflm_arena(write_tflite(variant, Path(tmp) / "same.tflite"), shape)
        out["same_padding"] = same
        out["padding_note"] = (
            f"symmetric padding needs {pads} PAD ops: "
            f"{out['tflm_arena_bytes'] - same['tflm_arena_bytes']:,} B more TFLite Micro arena "
            "than the same network with padding='same' (train with --padding same)"
        )
    return out


def _accuracy(model: nn.Module, graph: QuantizedModel | None, batches) -> dict[str, Any]:
    """fp32 (PyTorch) and int8 (our reference) top-1, and their top-1 agreement
    (:func:`mobilenets.backend.accuracy`, the loop every accuracy report uses)."""
    from ..backend import accuracy, reference_backend, torch_backend

    backends: dict[str, Any] = {"fp32": torch_backend(model)}
    if graph is not None:
        backends["int8"] = reference_backend(graph)
    acc = accuracy(backends, batches)
    n = acc["images"]
    out: dict[str, Any] = {"eval_samples": n, "fp32_top1": acc.get("fp32_top1")}
    if graph is not None:
        out.update(int8_top1=acc.get("int8_top1"), agreement=acc.get("int8_agreement"))
    return out
