"""``mobilenets eval``: top-1, top-5, per-class accuracy and a confusion matrix for a checkpoint.

Inputs are preprocessed with the checkpoint's own normalization and crop (``to_model_input``),
exactly as ``predict`` does. All accuracies are fractions in [0, 1]; the CLI prints percentages.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import MobilenetsError, UsageError


@dataclass
class Tally:
    """Sums over evaluated images; add tallies (or all-reduce ``tensor()``) to combine shards."""

    loss_sum: float
    top1: int
    top5: int
    n: int
    confusion: torch.Tensor  # (C, C) int64, rows = true class

    def as_tensor(self) -> torch.Tensor:
        head = torch.tensor([self.loss_sum, self.top1, self.top5, self.n], dtype=torch.float64)
        return torch.cat([head, self.confusion.flatten().double()])

    @classmethod
    def from_tensor(cls, t: torch.Tensor, num_classes: int) -> Tally:
        t = t.cpu()
        conf = t[4:].round().long().view(num_classes, num_classes)
        return cls(float(t[0]), int(t[1]), int(t[2]), int(t[3]), conf)

    def metrics(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {
            "loss": self.loss_sum / n,
            "top1": self.top1 / n,
            "top5": self.top5 / n,
            "n": self.n,
        }


@torch.no_grad()
def tally(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    device: torch.device,
    amp: bool = False,
    refuse_non_finite: bool = True,
) -> Tally:
    """Run ``model`` (already in eval mode) over ``batches`` of preprocessed inputs.

    ``refuse_non_finite=False`` (training) lets a NaN/inf reach the loss, for the caller to
    report with its own context (the epoch, the last good checkpoint).
    """
    k = min(5, num_classes)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top1 = torch.zeros((), dtype=torch.int64, device=device)
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    conf = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    n = 0
    for x, y in batches:
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        logits = logits.float()
        if refuse_non_finite and not bool(torch.isfinite(logits).all()):
            raise MobilenetsError(
                f"the model gives non-finite outputs (NaN/inf) after {n} images: "
                "its weights are broken (was training diverging?)"
            )
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        pred = logits.topk(k, 1).indices
        top1 += (pred[:, 0] == y).sum()
        top5 += (pred == y[:, None]).any(1).sum()
        conf += torch.bincount(y * num_classes + pred[:, 0], minlength=num_classes * num_classes)
        n += len(y)
    return Tally(
        float(loss_sum), int(top1), int(top5), n, conf.view(num_classes, num_classes).cpu()
    )


def evaluate(
    checkpoint: str | Path,
    data: str | None = None,
    split: str = "test",
    data_dir: str | Path | None = None,
    batch_size: int = 256,
    device: str | None = None,
    out: str | Path | None = None,
    workers: int = 0,
    skip_bad_images: bool = False,
    fast: bool = False,
    foreign: Any = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint folder (or ``last.ckpt``/``best.ckpt``), an ``.onnx`` or a ``.tflite``
    file (any :class:`mobilenets.backend.Backend`) on a dataset split.

    Args:
        data: a ``--data`` spec; defaults to the dataset the checkpoint was trained on.
        split: ``test`` (ImageFolder: ``val/``), ``val`` (the ``--val-split`` hold-out of the
            training set, re-drawn from the seed stored in the checkpoint) or ``train``.
        out: if given, write ``confusion_matrix.png``, ``confusion_matrix.json`` and ``eval.json`` there.
        fast: ``.tflite`` only: LiteRT's optimized kernels instead of its reference kernels.
        foreign: ``.tflite`` files without mobilenets metadata: a
            :class:`mobilenets.backend.ForeignInput` (class names, mean/std, resolution);
            ``assumed`` in the result says what was assumed instead.

    Returns:
        ``top1``, ``top5``, ``loss``, ``n``, ``per_class`` (class name -> accuracy, None when
        the split has no image of that class), ``confusion`` (rows true, columns predicted),
        ``class_names``, ``split``, ``data``, ``checkpoint``; accuracies are fractions.
    """
    from .data import BadImages, eval_batches, load_dataset

    if out is not None:
        check_writable_folder(out)
    backend, dev = _load_backend(checkpoint, device, fast, batch_size, foreign)
    spec = data or backend.extra.get("data")
    if not spec:
        what = "checkpoint" if backend.name == "torch" else "model file"
        raise UsageError(f"this {what} does not record its dataset; pass --data SPEC")
    ds = load_dataset(spec, data_dir or backend.extra.get("data_dir"))
    part = _split(ds, split, backend.extra)
    cfg = backend.meta.config
    if cfg.num_classes != len(ds.class_names):
        raise MobilenetsError(
            f"{backend.path}: the model has {cfg.num_classes} classes but {ds.name} has {len(ds.class_names)}"
        )
    bad = BadImages(skip_bad_images)
    prep = backend.meta.preprocess
    batches = eval_batches(part, prep, batch_size, dev, workers=workers, bad=bad)
    t = tally(_logits_fn(backend, dev), batches, cfg.num_classes, dev, dev.type == "cuda")
    result: dict[str, Any] = {
        **_tally_result(t, ds.class_names),
        "split": split,
        "data": ds.spec,
        "checkpoint": str(backend.path),
        "skipped_images": len(bad),
    }
    if backend.meta.assumed:
        result["assumed"] = backend.meta.assumed
    if out is not None:
        result["files"] = _write_eval_files(Path(out), result)
    return result


def _tally_result(t: Tally, class_names: Sequence[str]) -> dict[str, Any]:
    """top1, top5, loss, n, per_class accuracy (None for a class with no image), class_names
    and the confusion matrix as lists."""
    conf = t.confusion
    per_row = conf.sum(1)
    m = t.metrics()
    return {
        "top1": m["top1"],
        "top5": m["top5"],
        "loss": m["loss"],
        "n": t.n,
        "per_class": {
            name: (float(conf[i, i]) / int(per_row[i]) if per_row[i] else None)
            for i, name in enumerate(class_names)
        },
        "class_names": list(class_names),
        "confusion": conf.tolist(),
    }


def _load_backend(
    path: str | Path, device: str | None, fast: bool, batch_size: int, foreign: Any = None
):
    """The backend of a checkpoint (on ``device``: default CUDA when there is one) or of an
    ``.onnx``/``.tflite`` file (always on the CPU), and the device its inputs go to."""
    from .backend import load_backend

    exported = Path(path).suffix in (".onnx", ".tflite")
    dev = torch.device(
        "cpu" if exported else device or ("cuda" if torch.cuda.is_available() else "cpu")
    )
    backend = load_backend(path, device=dev, fast=fast, batch_size=batch_size, foreign=foreign)
    return backend, dev


def _logits_fn(backend: Any, dev: torch.device):
    """What :func:`tally` calls on a batch: the PyTorch model itself (channels-last on CUDA),
    or the backend's logits as a tensor."""
    if backend.name == "torch":
        model = backend.model
        return model.to(memory_format=torch.channels_last) if dev.type == "cuda" else model
    return lambda x: torch.from_numpy(backend.logits(x))


def _split(ds, split: str, meta: dict[str, Any]):
    """The split to evaluate; ``val`` is re-drawn from the seed stored in the checkpoint."""
    from .data import holdout

    if split != "val":
        return ds.split(split)
    n_val = int(meta.get("val_split") or 0)
    if not n_val:
        raise UsageError(
            "this checkpoint was trained without --val-split, so it has no val split; use --split test"
        )
    return holdout(ds.split("train"), n_val, int(meta.get("split_seed", 0)))[1]


def _write_eval_files(out: Path, result: dict[str, Any]) -> list[str]:
    """confusion_matrix.json/.png and eval.json in ``out`` (JSON written atomically)."""
    from .atomic import write_text as write_atomic
    from .plots import plot_confusion

    out.mkdir(parents=True, exist_ok=True)
    matrix = {"class_names": result["class_names"], "matrix": result["confusion"]}
    write_atomic(out / "confusion_matrix.json", json.dumps(matrix))
    plot_confusion(result["confusion"], result["class_names"], out / "confusion_matrix.png")
    summary = {k: v for k, v in result.items() if k != "confusion"}
    write_atomic(out / "eval.json", json.dumps(summary, indent=2))
    return [str(out / f) for f in ("confusion_matrix.png", "confusion_matrix.json", "eval.json")]


def check_writable_folder(folder: str | Path) -> None:
    """Raise MobilenetsError unless ``folder`` is (or can be made) a writable folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MobilenetsError(f"--out {folder}: exists and is not a folder")
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise MobilenetsError(f"--out {folder}: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise MobilenetsError(
            f"--out {folder}: cannot write in {probe} ({e.strerror or e}); pass --out DIR"
        ) from None
    if not os.access(probe, os.W_OK | os.X_OK):
        raise MobilenetsError(f"--out {folder}: {probe} is not writable; pass --out DIR")
