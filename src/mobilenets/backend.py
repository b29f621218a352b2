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
    graph: Any = None  # micro.graph.QuantizedModel; None: a file our reader does not take yet
    io: Any = None  # micro.tflite_model.TFLiteIO: the file's input/output

    def _int8_input(self, batch: torch.Tensor | np.ndarray, nhwc: bool = False) -> np.ndarray:
        """The file's input for ``batch``; ``nhwc``: channels last even for a channels-first
        file (TFLite Micro's runner and the reference, which drop its input TRANSPOSE)."""
        if self.io is not None:
            x = self.io.to_input(np.asarray(batch, np.float32))
            return x.transpose(0, 2, 3, 1) if nhwc and self.io.layout == "NCHW" else x
        return quantize_input(np.asarray(batch, np.float32), self.graph)

    def _float_output(self, y: np.ndarray) -> np.ndarray:
        return self.io.from_output(y) if self.io is not None else dequantize(y, self.graph)


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
        y = litert_outputs(self.path, self._int8_input(batch), it=self.interpreter)
        return self._float_output(y)


@dataclass
class TFLiteMicroBackend(_TFLiteBase):
    """A ``.tflite`` file in the TFLite Micro interpreter (int8, or float I/O around int8)."""

    name: str = "tflite-micro"

    def logits(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """Dequantized int8 logits of TFLite Micro."""
        from .micro.runtimes import tflm_outputs

        return self._float_output(tflm_outputs(self.path, self._int8_input(batch, nhwc=True)))


@dataclass
class ReferenceBackend(_TFLiteBase):
    """An int8 graph in the NumPy reference :func:`mobilenets.run_int8`."""

    name: str = "reference"

    def logits(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """Dequantized int8 logits of the NumPy reference."""
        from .micro.reference import run_graph, run_int8

        x = self._int8_input(batch, nhwc=True)
        if x.dtype != np.int8:  # float I/O: its boundary QUANTIZE/DEQUANTIZE run too
            return self._float_output(run_graph(self.graph, x).reshape(len(x), -1))
        return self._float_output(run_int8(self.graph, x))


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
    foreign: ForeignInput | None = None,
) -> Backend:
    """Load a checkpoint folder (``torch``), an ``.onnx`` file (``onnxruntime``) or a ``.tflite``
    file (``litert`` when installed, else ``reference`` for int8 files; or the ``runtime``
    named). ``foreign``: class names and normalization of a ``.tflite`` file without
    mobilenets metadata (any converter's). MobilenetsError naming the file when it cannot be
    run."""
    if runtime is not None and runtime not in BACKENDS:
        raise UsageError(f"runtime must be one of {', '.join(BACKENDS)}, got {runtime!r}")
    p = Path(path)
    if p.suffix == ".tflite":
        return _load_tflite(p, runtime, fast, foreign)
    if foreign is not None and foreign.given():
        raise UsageError(f"{'/'.join(foreign.given())}: only for .tflite files without metadata")
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


@dataclass(frozen=True)
class ForeignInput:
    """What ``predict``/``eval`` are told about a ``.tflite`` file without mobilenets metadata
    (``--class-names``, ``--mean``, ``--std``, ``--resolution``); None: read it from LiteRT's
    standard metadata when the file has it, else assume (and say so)."""

    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resolution: int | None = None

    def given(self) -> list[str]:
        """The flags given (for the refusal on files that have our metadata)."""
        return [f"--{k.replace('_', '-')}" for k, v in vars(self).items() if v is not None]


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """One class name per non-empty line of ``path``; UsageError naming it when unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--class-names {path}: cannot read it ({type(e).__name__})") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise UsageError(f"--class-names {path}: no class names in it (one per line)")
    return names


def _load_tflite(
    path: Path, runtime: str | None, fast: bool, foreign: ForeignInput | None = None
) -> Backend:
    from .micro.runtimes import have_litert, have_tflm

    if not path.is_file():
        raise MobilenetsError(f"{path}: no such .tflite file")
    graph, meta, extra, io = _read_any_tflite(path, foreign or ForeignInput())
    default = "reference" if graph is not None else "tflite-micro"
    chosen = runtime or ("litert" if have_litert() else default)
    _runtime_fits(path, chosen, ("litert", "tflite-micro", "reference"))
    if chosen == "reference" and graph is None:
        raise MobilenetsError(
            f"{path}: the NumPy reference cannot read this file yet; LiteRT or TFLite Micro run it"
        )
    if graph is not None and graph.is_float and chosen != "litert":
        raise MobilenetsError(
            f"{path}: an fp32 .tflite needs LiteRT (pip install 'mobilenets[micro]'); "
            "the NumPy reference and TFLite Micro run only int8 files"
        )
    kw = {"graph": graph, "io": io}
    if chosen == "litert":
        if not have_litert():
            raise MobilenetsError(
                f"{path}: LiteRT is not installed (pip install 'mobilenets[micro]')"
            )
        note = "LiteRT optimized kernels: may differ from TFLite Micro by a few LSB" if fast else ""
        return LiteRTBackend(meta, path, extra, note, fast=fast, **kw)
    if chosen == "tflite-micro" and not have_tflm():
        raise MobilenetsError(
            f"{path}: tflite-micro is not installed (pip install 'mobilenets[micro]')"
        )
    cls = TFLiteMicroBackend if chosen == "tflite-micro" else ReferenceBackend
    note = f"--fast needs LiteRT; running the NumPy {chosen}" if fast and runtime is None else ""
    return cls(meta, path, extra, note, **kw)


def _read_any_tflite(path: Path, foreign: ForeignInput) -> tuple[Any, ArtifactMeta, dict, Any]:
    """(graph or None, metadata, extra entries, :class:`TFLiteIO`) of our file or another's.

    Ours: read by :func:`read_tflite`. Another's: its I/O from the flatbuffer (one-line
    refusals: several subgraphs, dynamic shapes, uint8), metadata from ``foreign`` or LiteRT's
    standard metadata or assumed; its graph when :func:`read_tflite` accepts the file (then the
    NumPy reference runs it), else None (LiteRT and TFLite Micro still do)."""
    import dataclasses

    from .micro.tflite import read_tflite
    from .micro.tflite_model import check_softmax_scale, has_mobilenets_metadata, inspect_tflite

    raw = path.read_bytes()
    if has_mobilenets_metadata(raw):
        if foreign.given():
            raise UsageError(
                f"{path}: has mobilenets metadata (class names, preprocessing); "
                f"{'/'.join(foreign.given())} are for .tflite files without it"
            )
        io = dataclasses.replace(inspect_tflite(path, raw), layout="NHWC")
        graph, fields = _read_ours(path, raw)
        return graph, fields["artifact"], {"data": fields.get("data")}, io
    io = inspect_tflite(path, raw)
    check_softmax_scale(path, raw)  # LiteRT and TFLite Micro would abort the process
    try:
        graph, fields = read_tflite(path)
    except MobilenetsError:
        graph, fields = None, {}
    meta = fields.get("artifact") or foreign_meta(path, raw, io, foreign)
    return graph, meta, {"data": None}, io


def _read_ours(path: Path, raw: bytes) -> tuple[Any, dict[str, Any]]:
    """(graph, metadata fields) of our file; graph None for one the NumPy reference does not
    run (fp16 weights, uint8 I/O: LiteRT and TFLite Micro do), whose metadata is still
    checked and read."""
    import tflite

    from .micro.tflite import _metadata, read_tflite

    try:
        fields = _metadata(tflite.Model.GetRootAsModel(raw, 0), path)
    except MobilenetsError:
        fields = {}
    except Exception:  # a damaged flatbuffer: read_tflite names what is wrong
        fields = {}
    if fields.get("weights") == "fp16" or fields.get("io") == "uint8":
        return None, fields
    return read_tflite(path)


def _normalization(io: Any, foreign: ForeignInput, standard: dict, notes: list[str]):
    """(mean, std) per channel: given, else the file's standard metadata, else assumed (the
    int8 input's range covering pixels / 255; float inputs: pixels / 255)."""
    c = io.in_chans
    mean, std = foreign.mean or standard.get("mean"), foreign.std or standard.get("std")
    if mean is None or std is None:
        lo_hi = io.input_range()
        if lo_hi is None:
            mean, std = mean or (0.0,), std or (1.0,)
            notes.append(f"float input pixels/255 (mean {mean[0]:g}, std {std[0]:g})")
        else:
            lo, hi = lo_hi
            s = 1.0 / (hi - lo)
            mean, std = mean or (-lo * s,), std or (s,)
            notes.append(
                f"input int8 as stored: pixels/255 onto its range [{lo:.3g}, {hi:.3g}] "
                f"(mean {mean[0]:.3g}, std {std[0]:.3g})"
            )
    out = []
    for what, v in (("mean", mean), ("std", std)):
        if len(v) not in (1, c):
            raise UsageError(
                f"--{what}: needs 1 or {c} values (the input's channels), got {len(v)}"
            )
        out.append(tuple(float(x) for x in v) * (c if len(v) == 1 else 1))
    return out[0], out[1]


def foreign_meta(path: Path, raw: bytes, io: Any, foreign: ForeignInput) -> ArtifactMeta:
    """The :class:`ArtifactMeta` of a file without mobilenets metadata, with its one-line
    ``assumed`` note ("no mobilenets metadata: ...") naming everything it did not get."""
    from .micro.tflite_model import read_standard_metadata

    h, w = io.hw
    if h != w:
        raise MobilenetsError(f"{path}: input is {h}x{w}: only square inputs are supported")
    if foreign.resolution is not None and foreign.resolution != h:
        raise UsageError(f"--resolution {foreign.resolution}: {path} takes {h} px (its graph)")
    standard = read_standard_metadata(path, raw)
    notes: list[str] = []
    names = foreign.class_names or standard.get("labels")
    n = io.num_classes
    if names is not None and len(names) != n:
        src = "--class-names" if foreign.class_names else "its labels file"
        raise UsageError(f"{src}: {len(names)} names, {path} has {n} outputs")
    if names is None:
        notes.append(f"classes class_0..class_{n - 1}")
    mean, std = _normalization(io, foreign, standard, notes)
    if foreign.resolution is None:
        notes.append(f"resolution {h} from the graph")
    if io.layout == "NCHW":
        notes.append("channels-first input (NCHW)")
    prep = Preprocess(h, io.in_chans, mean, std)
    assumed = "no mobilenets metadata: " + ", ".join(notes) if notes else ""
    return ArtifactMeta.foreign(str(path), n, prep, names, assumed)


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
