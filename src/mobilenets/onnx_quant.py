"""Static int8 post-training quantization of exported ONNX files with ``onnxruntime.quantization``.

The scheme is LiteRT / TFLite-Micro's: int8 weights, symmetric and per output channel (per-tensor
depthwise weights are what breaks MobileNetV2 in int8), asymmetric per-tensor activations
calibrated on training images, int32 biases, QDQ format (QuantizeLinear/DequantizeLinear pairs
that any runtime can fuse). Activations are stored as ``uint8`` by default because that is what
onnxruntime's fast x86 kernels run (U8S8); ``int8`` activations give the exact TFLite scheme, run
well on ARM, but on x86 onnxruntime leaves part of the graph in float (slower than fp32 there).

Weights use 7 bits (``reduce_range``, values in -64..63) by default. onnxruntime's x86 int8 kernels
on CPUs without VNNI (AVX2, AVX-512F) multiply uint8 by int8 with ``vpmaddubsw``, whose int16
pair sums saturate when full-range weights meet large activations: on such a CPU a per-channel
MobileNetV2 file agreed with its fp32 model on only 82% of test images (97% with graph
optimizations off, i.e. the unfused reference kernels). With 7-bit weights the pair sums cannot
saturate, so the same file is right on every x86 CPU; pass ``reduce_range=False`` for full 8-bit
weights when the file only runs on ARM or VNNI CPUs (or is converted for TFLite).
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import MobilenetsError, UsageError
from .preprocess import Preprocess

ACTIVATION_TYPES = ("uint8", "int8")
CALIB_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIB_METHOD = "minmax"  # ONNX int8; the .tflite path has its own (micro.quantizer)

CalibData = torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray]


class _Reader:
    """An onnxruntime ``CalibrationDataReader`` over float batches."""

    def __init__(self, name: str, batches: Iterable[np.ndarray]) -> None:
        self.name = name
        self.it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.it, None)
        return None if x is None else {self.name: x}

    def rewind(self) -> None:  # not needed: each method reads the data once
        pass


def _float_batches(data: CalibData, prep: Preprocess, batch_size: int) -> Iterator[np.ndarray]:
    """Float32 model inputs in chunks; uint8 images are preprocessed with the file's record."""
    from .transforms import preprocess_images

    arrays = [data] if isinstance(data, (torch.Tensor, np.ndarray)) else data
    for arr in arrays:
        t = torch.as_tensor(arr)
        if t.ndim == 3:
            t = t[None]
        for chunk in t.split(batch_size):
            if chunk.dtype == torch.uint8:
                chunk = preprocess_images(prep, chunk)
            yield np.ascontiguousarray(chunk.float().numpy())


def quantize_onnx(
    onnx_path: str | Path,
    out_path: str | Path,
    calib_data: CalibData,
    *,
    activation_type: str = "uint8",
    calib_method: str = DEFAULT_CALIB_METHOD,
    per_channel: bool = True,
    exclude_nodes: Sequence[str] = (),
    batch_size: int = 32,
    reduce_range: bool = True,
) -> dict[str, Any]:
    """Statically quantize an exported fp32 ONNX file to int8 (QDQ) and write ONE file.

    Args:
        onnx_path: an fp32 file written by :func:`mobilenets.export_onnx`.
        out_path: the int8 file to write; it keeps the fp32 file's metadata.
        calib_data: calibration inputs: float model inputs (N, C, H, W), uint8 images
            (N, C, H, W, preprocessed with the file's metadata) or an iterable of such batches.
            Use a few hundred training images; random data only fits untrained models.
        activation_type: ``uint8`` (default, fastest in onnxruntime on x86) or ``int8``
            (the LiteRT/TFLite-Micro scheme, for ARM and other runtimes).
        calib_method: ``minmax`` (default), ``percentile`` (99.999th) or ``entropy``.
        per_channel: per-output-channel weight scales (keep True for depthwise convolutions).
        exclude_nodes: ONNX node names to leave in float.
        reduce_range: 7-bit weights (default), exact on every x86 CPU; False: 8-bit weights,
            which saturate in onnxruntime on x86 CPUs without VNNI (see the module docstring).

    Returns:
        A summary: scheme, activation_type, calib_method, calib_samples, bytes, path.
    """
    import onnx

    from .export import read_metadata, set_metadata, write_onnx

    options = _quant_options(
        activation_type, calib_method, per_channel, reduce_range, exclude_nodes
    )
    meta = read_metadata(onnx_path)
    src = onnx.load(str(onnx_path))
    props = {p.key: p.value for p in src.metadata_props}
    samples = 0

    def counted() -> Iterator[np.ndarray]:
        nonlocal samples
        for b in _float_batches(calib_data, meta["preprocess"], batch_size):
            samples += len(b)
            yield b

    with tempfile.TemporaryDirectory(prefix="mobilenets-quant-") as tmp:
        out_tmp = Path(tmp) / "int8.onnx"
        reader = _Reader(src.graph.input[0].name, counted())
        _quantize_static(Path(onnx_path), Path(tmp) / "pre.onnx", out_tmp, reader, options)
        if samples == 0:
            raise UsageError("calibration data is empty")
        info = _scheme_info(options, samples)
        q = onnx.load(str(out_tmp))
        shrink(q)
        set_metadata(q, {**props, "quantization": json.dumps(info)})
        out = write_onnx(q, out_path)
    return {**info, "path": str(out), "bytes": out.stat().st_size}


def _quant_options(
    activation_type: str,
    calib_method: str,
    per_channel: bool,
    reduce_range: bool,
    exclude_nodes: Sequence[str],
) -> dict[str, Any]:
    """The checked options of :func:`quantize_onnx` (UsageError for an unknown type or method)."""
    if activation_type not in ACTIVATION_TYPES:
        raise UsageError(
            f"activation_type must be one of {', '.join(ACTIVATION_TYPES)}, got {activation_type!r}"
        )
    if calib_method not in CALIB_METHODS:
        raise UsageError(
            f"calib_method must be one of {', '.join(CALIB_METHODS)}, got {calib_method!r}"
        )
    return {
        "per_channel": per_channel,
        "activation_type": activation_type,
        "calib_method": calib_method,
        "reduce_range": reduce_range,
        "exclude_nodes": list(exclude_nodes),
    }


def _quantize_static(src: Path, pre: Path, out: Path, reader: Any, options: dict[str, Any]) -> None:
    """onnxruntime's pre-processing and static QDQ quantization, failures as one line."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[options["calib_method"]]
    uint8 = options["activation_type"] == "uint8"
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        with contextlib.redirect_stdout(io.StringIO()):  # histogram calibrators print
            quantize_static(
                str(pre),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=options["per_channel"],
                activation_type=QuantType.QUInt8 if uint8 else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                reduce_range=options["reduce_range"],
                nodes_to_exclude=options["exclude_nodes"] or None,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
    except MobilenetsError:
        raise
    except Exception as e:
        raise MobilenetsError(
            f"int8 quantization of {src} failed: {str(e).strip().splitlines()[0]}"
        ) from None


def _scheme_info(options: dict[str, Any], samples: int) -> dict[str, Any]:
    """The ``quantization`` record stored in the int8 file's metadata."""
    bits = 7 if options["reduce_range"] else 8
    per = "per-channel" if options["per_channel"] else "per-tensor"
    return {
        "scheme": f"QDQ, {bits}-bit symmetric {per} weights, "
        f"{options['activation_type']} asymmetric per-tensor activations, int32 bias",
        "activation_type": options["activation_type"],
        "weight_type": "int8",
        "weight_bits": bits,
        "per_channel": options["per_channel"],
        "calib_method": options["calib_method"],
        "calib_samples": samples,
        "excluded_nodes": options["exclude_nodes"],
    }


def shrink(proto: Any) -> None:
    """Dedupe identical small initializers (the quantizer writes a scale and a zero point per
    tensor, most of them equal) and drop unused opset imports, in place, with ``onnx_ir``'s
    ``DeduplicateInitializersPass`` and ``RemoveUnusedOpsetsPass``; the graph computes exactly
    what it did (tests/test_onnx_quant.py compares it with the former hand-written passes)."""
    import onnx_ir as ir
    from onnx_ir.passes.common import DeduplicateInitializersPass, RemoveUnusedOpsetsPass

    model = ir.serde.deserialize_model(proto)
    DeduplicateInitializersPass(size_limit=1024)(model)
    RemoveUnusedOpsetsPass()(model)
    proto.CopyFrom(ir.serde.serialize_model(model))
