"""One small protocol for "a model file I can run": :class:`Backend`.

Every runtime mobilenets drives has the same three things: it is loaded from a file (or a model
in memory), it says what input it takes (:class:`InputSpec`: the :class:`Preprocess` record,
float NCHW inputs normalized by it), and it gives float logits for a batch. ``predict``,
``eval``, ``bench`` and the exporters' accuracy reports go through it, so there is one accuracy
loop (:func:`accuracy`) whatever the runtime:

- ``torch``: a checkpoint (or an ``nn.Module`` with a ``.config``) in PyTorch;
- ``onnxruntime``: an ``.onnx`` file (fp32 or int8);
- ``litert``: a ``.tflite`` file in LiteRT (reference kernels, bit-exact with TFLite Micro;
  ``fast``: its optimized kernels);
- ``tflite-micro``: an int8 ``.tflite`` file in the TFLite Micro interpreter;
- ``reference``: an int8 graph in the NumPy reference (:func:`mobilenets.run_int8`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .artifact import ArtifactMeta
from .errors import MobilenetsError, UsageError
from .preprocess import Preprocess

BACKENDS = ("torch", "onnxruntime", "litert", "tflite-micro", "reference")
CHECKPOINT_FILES = ("config.json", "model.safetensors", "training_state.pt")


def quantize_input(x: torch.Tensor | np.ndarray, graph: Any) -> np.ndarray:
    """Normalized float NCHW inputs -> the int8 NHWC input of ``graph``."""
    t = graph.input_tensor
    x = np.asarray(x, np.float32).transpose(0, 2, 3, 1)
    q = np.round(x.astype(np.float64) / np.float32(t.scale)) + t.zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize(y: np.ndarray, graph: Any) -> np.ndarray:
    """int8 outputs -> real values (``scale * (q - zero_point)``)."""
    t = graph.output_tensor
    return (y.astype(np.float32) - t.zero_point) * np.float32(t.scale)


@dataclass(frozen=True)
class InputSpec:
    """Float32 (N, in_chans, resolution, resolution) inputs, normalized by ``preprocess``."""

    in_chans: int
    resolution: int
    preprocess: Preprocess


@runtime_checkable
class Backend(Protocol):
    """A loaded model: ``name`` (one of :data:`BACKENDS`), ``meta`` (its :class:`ArtifactMeta`),
    ``extra`` (other recorded entries, e.g. ``data``: the dataset spec), ``path`` and ``note``."""

    name: str
    meta: ArtifactMeta
    path: Path | None
    extra: dict[str, Any]
    note: str

    def input_spec(self) -> InputSpec:
        """What :meth:`logits` takes."""
        ...

    def logits(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """Float logits (N, num_classes) for a float (N, C, R, R) batch."""
        ...


@dataclass
class _Base:
    meta: ArtifactMeta
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def input_spec(self) -> InputSpec:
        """What :meth:`logits` takes: the model's channels and resolution, its preprocessing."""
        p = self.meta.preprocess
        return InputSpec(p.in_chans, p.resolution, p)


@dataclass
class TorchBackend(_Base):
    """A PyTorch model (eval mode) on ``device``, run in chunks of ``batch_size``."""

    model: torch.nn.Module | None = None
    device: torch.device = torch.device("cpu")
    batch_size: int = 64
    name: str = "torch"

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """Float logits of the model on ``batch`` (moved to its device)."""
        x = torch.as_tensor(batch).float().to(self.device)
        self.model.eval()
        return torch.cat([self.model(c).float().cpu() for c in x.split(self.batch_size)]).numpy()


@dataclass
class OnnxRuntimeBackend(_Base):
    """An onnxruntime CPU session of an ``.onnx`` file."""

    session: Any = None
    batch_size: int = 64
    name: str = "onnxruntime"

    def logits(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """Float logits (int8 files compute in int8 and return float)."""
        from .export import run_ort

        return run_ort(self.session, batch, self.batch_size)


@dataclass
class _TFLiteBase(_Base):
    graph: Any = None  # micro.graph.QuantizedModel

    def _int8_input(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        return quantize_input(np.asarray(batch, np.float32), self.graph)

    def _float_output(self, y: np.ndarray) -> np.ndarray:
        return dequantize(y, self.graph)


@dataclass
class LiteRTBackend(_TFLiteBase):
    """A ``.tflite`` file in LiteRT: reference kernels (bit-exact with TFLite Micro) unless
    ``fast``."""

    fast: bool = False
    interpreter: Any = None
    name: str = "litert"

    def logits(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """Float logits: fp32 files directly, int8 files quantized in and dequantized out."""
        from .micro.runtimes import litert_interpreter, litert_outputs

        if self.interpreter is None:
            self.interpreter = litert_interpreter(self.path, self.fast)
        if self.graph.is_float:
            x = np.asarray(batch, np.float32).transpose(0, 2, 3, 1)
            return litert_outputs(self.path, x, it=self.interpreter)
        y = litert_outputs(self.path, self._int8_input(batch), it=self.interpreter)
        return self._float_output(y)


@dataclass
class TFLiteMicroBackend(_TFLiteBase):
    """An int8 ``.tflite`` file in the TFLite Micro interpreter."""

    name: str = "tflite-micro"

    def logits(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """Dequantized int8 logits of TFLite Micro."""
        from .micro.runtimes import tflm_outputs

        return self._float_output(tflm_outputs(self.path, self._int8_input(batch)))


@dataclass
class ReferenceBackend(_TFLiteBase):
    """An int8 graph in the NumPy reference :func:`mobilenets.run_int8`."""

    name: str = "reference"

    def logits(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """Dequantized int8 logits of the NumPy reference."""
        from .micro.reference import run_int8

        return self._float_output(run_int8(self.graph, self._int8_input(batch)))


# ---------------------------------------------------------------- loading


def torch_backend(
    model: torch.nn.Module,
    meta: ArtifactMeta | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
) -> TorchBackend:
    """A model in memory (with a ``.config``) as a backend; ``meta`` defaults to its config with
    class indices and identity preprocessing."""
    if meta is None:
        cfg = getattr(model, "config", None)
        if cfg is None:
            raise UsageError("a torch backend needs a mobilenets model (with a .config)")
        meta = ArtifactMeta.create(cfg)
    return TorchBackend(meta, model=model, device=torch.device(device), batch_size=batch_size)


def onnx_backend(session: Any, meta: ArtifactMeta, path: str | Path | None = None):
    """An onnxruntime session already open, with the metadata of its file."""
    return OnnxRuntimeBackend(meta, None if path is None else Path(path), session=session)


def reference_backend(graph: Any, meta: ArtifactMeta | None = None) -> ReferenceBackend:
    """An int8 :class:`QuantizedModel` in the NumPy reference (``meta`` from its fields)."""
    if meta is None:
        meta = ArtifactMeta.create(graph.config, graph.class_names, graph.preprocess or None)
    return ReferenceBackend(meta, graph=graph)


def load_backend(
    path: str | Path,
    runtime: str | None = None,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    spin: bool = True,
    fast: bool = False,
    batch_size: int = 64,
) -> Backend:
    """Load a checkpoint folder (``torch``), an ``.onnx`` file (``onnxruntime``) or a ``.tflite``
    file (``litert`` when installed, else ``reference`` for int8 files; or the ``runtime``
    named). MobilenetsError naming the file when it cannot be run."""
    if runtime is not None and runtime not in BACKENDS:
        raise UsageError(f"runtime must be one of {', '.join(BACKENDS)}, got {runtime!r}")
    p = Path(path)
    if p.suffix == ".tflite":
        return _load_tflite(p, runtime, fast)
    member = p.name in CHECKPOINT_FILES
    if p.suffix == ".onnx" or (p.is_file() and not member):
        _runtime_fits(p, runtime, ("onnxruntime",))
        return _load_onnx(p, threads, spin, batch_size)
    _runtime_fits(p, runtime, ("torch",))
    from .checkpoint import load_checkpoint

    ck = load_checkpoint(p, device)
    meta = ArtifactMeta.create(ck.config, ck.class_names, ck.preprocess)
    return TorchBackend(
        meta, ck.path, dict(ck.meta), model=ck.model, device=torch.device(device),
        batch_size=batch_size,
    )  # fmt: skip


def _runtime_fits(path: Path, runtime: str | None, fits: tuple[str, ...]) -> None:
    if runtime is not None and runtime not in fits:
        raise UsageError(f"{path}: runtime {runtime} cannot run it (use {', '.join(fits)})")


def _load_onnx(path: Path, threads: int | None, spin: bool, batch_size: int) -> Backend:
    from .export import ort_session, read_metadata

    if not path.is_file():
        raise MobilenetsError(f"{path}: no such ONNX file")
    meta = read_metadata(path)
    extra = {"data": None, "quantization": meta["quantization"]}
    session = ort_session(path, threads, spin)
    return OnnxRuntimeBackend(meta["artifact"], path, extra, session=session, batch_size=batch_size)


def _load_tflite(path: Path, runtime: str | None, fast: bool) -> Backend:
    from .micro.runtimes import have_litert, have_tflm
    from .micro.tflite import read_tflite

    if not path.is_file():
        raise MobilenetsError(f"{path}: no such .tflite file")
    graph, raw = read_tflite(path)
    meta, extra = raw["artifact"], {"data": raw.get("data")}
    chosen = runtime or ("litert" if have_litert() else "reference")
    _runtime_fits(path, chosen, ("litert", "tflite-micro", "reference"))
    if graph.is_float and chosen != "litert":
        raise MobilenetsError(
            f"{path}: an fp32 .tflite needs LiteRT (pip install 'mobilenets[micro]'); "
            "the NumPy reference and TFLite Micro run only int8 files"
        )
    if chosen == "litert":
        if not have_litert():
            raise MobilenetsError(
                f"{path}: LiteRT is not installed (pip install 'mobilenets[micro]')"
            )
        note = "LiteRT optimized kernels: may differ from TFLite Micro by a few LSB" if fast else ""
        return LiteRTBackend(meta, path, extra, note, graph=graph, fast=fast)
    if chosen == "tflite-micro" and not have_tflm():
        raise MobilenetsError(
            f"{path}: tflite-micro is not installed (pip install 'mobilenets[micro]')"
        )
    cls = TFLiteMicroBackend if chosen == "tflite-micro" else ReferenceBackend
    note = f"--fast needs LiteRT; running the NumPy {chosen}" if fast and runtime is None else ""
    return cls(meta, path, extra, note, graph=graph)


# ---------------------------------------------------------------- the one accuracy loop


def accuracy(
    backends: dict[str, Backend], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, Any]:
    """Top-1 (fraction) of each backend on ``(inputs, labels)`` batches, and how often each
    agrees with the first: ``{"images", "<key>_top1", "<key>_agreement"}`` (just ``images``: 0
    when there are no batches)."""
    correct = dict.fromkeys(backends, 0)
    agree = dict.fromkeys(backends, 0)
    total = 0
    for x, y in batches:
        labels = np.asarray(y)
        preds = {k: b.logits(x).argmax(1) for k, b in backends.items()}
        first = next(iter(preds.values()))
        for k, p in preds.items():
            correct[k] += int((p == labels).sum())
            agree[k] += int((p == first).sum())
        total += len(labels)
    if total == 0:
        return {"images": 0}
    out: dict[str, Any] = {"images": total}
    for k in backends:
        out[f"{k}_top1"] = correct[k] / total
        out[f"{k}_agreement"] = agree[k] / total
    return out
