"""ONNX export: fold BN, export ONE self-contained .onnx file, verify it in onnxruntime.

The file carries everything ``predict`` needs in its ``metadata_props``: the model config
(:meth:`ModelConfig.to_json`), the class names and the one ``preprocess`` record
(:class:`mobilenets.preprocess.Preprocess`). Files written before that record (five separate
props: resolution, in_chans, mean, std, crop_pct) still load.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .artifact import ArtifactMeta
from .atomic import replace, write_via
from .errors import MobilenetsError, UsageError
from .fold import fold_bn
from .preprocess import Preprocess

DEFAULT_OPSET = 18
MIN_OPSET = 17
FORMAT_VERSION = "2"  # 1: five separate preprocessing props; 2: one "preprocess" record
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
FP32_ATOL = 1e-4


# ---------------------------------------------------------------- metadata


def model_metadata(
    model: nn.Module,
    class_names: Sequence[str] | None = None,
    preprocess: Preprocess | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` written into exported files (all values are strings, JSON inside),
    checked by :meth:`ArtifactMeta.create`."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise UsageError(
            "export needs a mobilenets model (with a .config); build it with create_model"
        )
    meta = ArtifactMeta.create(cfg, class_names, preprocess)
    return {
        "mobilenets.format_version": FORMAT_VERSION,
        "config": cfg.to_json(),
        "architecture": cfg.name,
        "class_names": json.dumps(list(meta.class_names)),
        "preprocess": json.dumps(meta.preprocess.to_dict()),
    }


def _legacy_preprocess(props: dict[str, str], cfg: Any) -> dict[str, Any]:
    """The preprocess record of a format-1 file (five separate props)."""
    d: dict[str, Any] = {"in_chans": cfg["in_chans"] if "in_chans" in cfg else 3}
    d["resolution"] = int(props.get("resolution", cfg.get("resolution", 224)))
    d["mean"] = json.loads(props.get("mean", "null")) or [0.0] * d["in_chans"]
    d["std"] = json.loads(props.get("std", "null")) or [1.0] * d["in_chans"]
    d["crop_pct"] = float(props.get("crop_pct", 1.0))
    return d


def parse_metadata(props: dict[str, str], where: str) -> dict[str, Any]:
    """config, architecture, class_names, preprocess and quantization from ``metadata_props``,
    checked by :meth:`ArtifactMeta.parse` (the checks of checkpoints and ``.tflite`` files);
    MobilenetsError naming the field at fault."""
    if "config" not in props:
        raise MobilenetsError(
            f"{where}: no mobilenets metadata (export it with `mobilenets export`)"
        )
    fields: dict[str, Any] = {}
    for key in ("config", "class_names", "preprocess", "quantization"):
        if key in props:
            try:
                fields[key] = json.loads(props[key])
            except ValueError as e:
                raise MobilenetsError(f"{where}: {key}: not JSON ({e})") from None
    if "preprocess" not in props and isinstance(fields["config"], dict):
        try:
            fields["preprocess"] = _legacy_preprocess(props, fields["config"])
        except (TypeError, ValueError) as e:
            raise MobilenetsError(f"{where}: mean/std/resolution/crop_pct: {e}") from None
    meta = ArtifactMeta.parse(fields, where)
    return {
        "config": meta.config,
        "architecture": meta.config.name,
        "class_names": list(meta.class_names),
        "preprocess": meta.preprocess,
        "quantization": meta.quantization,
        "artifact": meta,
    }


def read_metadata(path: str | Path) -> dict[str, Any]:
    """config, class_names, preprocess (a :class:`Preprocess`), architecture and quantization
    of an exported file (format 1 files, with five separate preprocessing props, too)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise MobilenetsError(
            f"{path}: not a readable ONNX file ({str(e).splitlines()[0]})"
        ) from None
    return parse_metadata({p.key: p.value for p in proto.metadata_props}, str(path))


def write_onnx(proto: Any, path: str | Path) -> Path:
    """Save ``proto`` as one file (weights inside), atomically via a temporary sibling."""
    import onnx

    return write_via(
        path, lambda tmp: onnx.save_model(proto, str(tmp), save_as_external_data=False)
    )


def set_metadata(proto: Any, props: dict[str, str]) -> None:
    """Replace or add ``props`` in ``proto.metadata_props``."""
    keep = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


# ---------------------------------------------------------------- onnxruntime


def ort_session(path: str | Path, threads: int | None = None, spin: bool = True) -> Any:
    """A CPU onnxruntime session with all graph optimizations.

    ``threads``: intra-op threads. ``spin``: let idle threads busy-wait for the next op
    (onnxruntime's default, fastest on an idle machine); False on a busy or shared machine,
    where spinning threads steal the cores the work needs.
    """
    import onnxruntime as ort

    from .env import usable_cpus

    if threads is not None and not (
        not isinstance(threads, bool) and isinstance(threads, int) and 1 <= threads <= usable_cpus()
    ):
        raise UsageError(
            f"threads must be in 1..{usable_cpus()} (the usable CPU cores), got {threads!r}"
        )
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise MobilenetsError(
            f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0]})"
        ) from None


def run_ort(session: Any, x: np.ndarray | torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Logits for a float (N, C, H, W) batch, run in chunks of ``batch_size``."""
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    x = np.ascontiguousarray(x, dtype=np.float32)
    name = session.get_inputs()[0].name
    outs = [
        session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outs)


# ---------------------------------------------------------------- export


def max_opset() -> int:
    """The newest ONNX opset the installed ``onnx`` package knows."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def file_opset(proto: Any) -> int:
    """The default-domain opset a model proto declares."""
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _to_onnx(folded: nn.Module, cfg: Any, opset: int) -> Any:
    """The model proto of ``folded`` at ``opset`` (torch.export + the dynamo exporter)."""
    import contextlib
    import io

    res = cfg.resolution
    example = torch.randn(2, cfg.in_chans, res, res)
    batch = torch.export.Dim("batch", min=1, max=65536)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            program = torch.onnx.export(
                folded,
                (example,),
                None,
                dynamo=True,
                verbose=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
            )
    except Exception as e:
        raise MobilenetsError(f"ONNX export failed: {str(e).strip().splitlines()[0]}") from None
    proto = program.model_proto
    got = file_opset(proto)
    if got != opset:
        raise MobilenetsError(
            f"ONNX export: the converter could not produce opset {opset} (it gave {got}); "
            f"choose --opset in {MIN_OPSET}..{got}"
        )
    return proto


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    preprocess: Preprocess | None = None,
    opset: int = DEFAULT_OPSET,
    verify_inputs: torch.Tensor | None = None,
    atol: float | None = FP32_ATOL,
) -> dict[str, Any]:
    """Fold BN and export ``model`` to ONE self-contained ONNX file with a dynamic batch dimension.

    The file appears at ``path`` only once onnxruntime ran it and agreed with PyTorch.

    Args:
        path: the ``.onnx`` file to write (no ``.onnx.data`` beside it).
        class_names, preprocess: labels and the preprocessing record stored in the metadata
            (default: class indices, identity normalization at the model's resolution).
        opset: ONNX opset, from 17 to the installed onnx's newest.
        verify_inputs: float model inputs (N, C, H, W) to compare onnxruntime with PyTorch on;
            4 random inputs when None.
        atol: raise MobilenetsError when the max abs logit difference exceeds
            ``atol * max(1, largest |logit|)`` (None: no check). Logits within +-1 thus get an
            absolute 1e-4; larger ones a relative 1e-4 (float32 accumulation order differs).

    Returns:
        ``{"path", "bytes", "max_abs_diff", "max_abs_logit", "opset"}`` (the file's real opset).
    """
    from .fold import check_finite_weights

    _check_opset(opset)
    check_finite_weights(model)
    cfg = getattr(model, "config", None)
    meta = model_metadata(model, class_names, preprocess)
    proto = _to_onnx(fold_bn(model), cfg, opset)
    set_metadata(proto, meta)
    path = Path(path)
    res = cfg.resolution
    x = verify_inputs if verify_inputs is not None else torch.randn(4, cfg.in_chans, res, res)
    diff, scale = _write_verified(proto, path, model, x, atol)
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "max_abs_diff": diff,
        "max_abs_logit": scale,
        "opset": file_opset(proto),
    }


def _check_opset(opset: Any) -> None:
    """UsageError unless ``opset`` is an int in MIN_OPSET..the installed onnx's newest."""
    if (
        isinstance(opset, bool)
        or not isinstance(opset, int)
        or not (MIN_OPSET <= opset <= max_opset())
    ):
        raise UsageError(
            f"--opset must be in {MIN_OPSET}..{max_opset()} (the installed onnx's newest), "
            f"got {opset!r}"
        )


def _write_verified(
    proto: Any, path: Path, model: nn.Module, x: torch.Tensor, atol: float | None
) -> tuple[float, float]:
    """Write ``proto`` to a temporary file, run it in onnxruntime against ``model`` on ``x``, and
    move it to ``path`` only when the logits agree within ``atol`` (see :func:`export_onnx`).
    Returns (max abs logit difference, largest |logit|)."""
    tmp = path.with_name(f".{path.name}.unverified-{os.getpid()}.onnx")
    try:
        write_onnx(proto, tmp)
        diff, scale = max_abs_diff(model, tmp, x, with_scale=True)
        limit = None if atol is None else atol * max(1.0, scale)
        if limit is not None and not diff <= limit:
            raise MobilenetsError(
                f"{path}: not written: onnxruntime and PyTorch logits differ by {diff:.3g} "
                f"(> {atol:g} x max(1, largest |logit| {scale:.3g}))"
            )
        replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return diff, scale


@torch.inference_mode()
def max_abs_diff(
    model: nn.Module, onnx_path: str | Path, x: torch.Tensor, with_scale: bool = False
) -> float | tuple[float, float]:
    """Largest |logit difference| between ``model`` (eval) and the ONNX file on inputs ``x``.

    ``with_scale``: also return the largest |logit| of PyTorch, for relative comparisons.
    """
    was_training = model.training
    try:
        ref = torch.cat([model.eval()(c) for c in x.float().split(64)]).numpy()
    finally:
        model.train(was_training)
    got = run_ort(ort_session(onnx_path), x)
    diff = float(np.abs(ref.astype(np.float64) - got).max())
    return (diff, float(np.abs(ref).max())) if with_scale else diff


def _finite(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
