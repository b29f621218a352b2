"""Checkpoint folders: ``model.safetensors`` + ``config.json`` (+ ``training_state.pt``).

Folders are written under a temporary name, fsync'ed and renamed; ``last.ckpt`` and
``best.ckpt`` are symlinks swapped with an atomic ``os.replace``, so a run killed at any
moment leaves the previous complete checkpoint in place. Nothing here unpickles objects:
weights come from safetensors, metadata from JSON, training state via ``weights_only=True``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from .atomic import fsync_dir as _fsync_dir
from .atomic import point_link  # noqa: F401 - checkpoint.point_link
from .atomic import replace_folder as _replace_folder
from .atomic import write_new_file as _write_file
from .config import ModelConfig
from .errors import MobilenetsError, UsageError
from .preprocess import Preprocess

FORMAT = "mobilenets.checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINING_STATE = "training_state.pt"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model in eval mode and everything needed to feed it."""

    model: nn.Module
    config: ModelConfig
    class_names: list[str]
    preprocess: Preprocess
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> list[float]:
        """``preprocess.mean`` as a list."""
        return list(self.preprocess.mean)

    @property
    def std(self) -> list[float]:
        """``preprocess.std`` as a list."""
        return list(self.preprocess.std)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    class_names: list[str] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    meta: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    preprocess: Preprocess | None = None,
) -> Path:
    """Atomically write a checkpoint folder at ``path`` (replacing one that exists).

    ``preprocess``: the record stored as config.json's one ``"preprocess"`` entry; when None it
    is built from the model's resolution and channels, ``mean``/``std`` (default 0/1) and
    ``meta["preprocess"]``'s crop_pct and interpolation (that meta entry is not stored twice).
    ``state_dict`` overrides the weights saved for inference (e.g. the EMA weights);
    ``training_state`` must hold only tensors and plain containers (``weights_only`` loadable).
    """
    path = Path(path)
    info = _config_json(model.config, class_names, mean, std, meta, preprocess)
    sd = state_dict if state_dict is not None else model.state_dict()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        _write_file(tmp / WEIGHTS, save({k: v.detach().contiguous().cpu() for k, v in sd.items()}))
        _write_file(tmp / CONFIG, json.dumps(info, indent=2).encode())
        if training_state is not None:
            buf = io.BytesIO()
            torch.save(training_state, buf)
            _write_file(tmp / TRAINING_STATE, buf.getbuffer())
        _fsync_dir(tmp)
    except (
        BaseException
    ):  # a full disk, a kill signal turned into an exception: leave no partial folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_folder(tmp, path)
    return path


def _config_json(
    cfg: ModelConfig,
    class_names: list[str] | None,
    mean: list[float] | None,
    std: list[float] | None,
    meta: dict[str, Any] | None,
    preprocess: Preprocess | None,
) -> dict[str, Any]:
    """config.json's content (see :func:`save_checkpoint` for the preprocess defaults)."""
    from .artifact import ArtifactMeta

    meta = dict(meta or {})
    old = meta.pop("preprocess", None) or {}
    if preprocess is None:
        preprocess = Preprocess(
            cfg.resolution,
            cfg.in_chans,
            list(mean) if mean else [0.0] * cfg.in_chans,
            list(std) if std else [1.0] * cfg.in_chans,
            old.get("crop_pct", 1.0),
            old.get("interpolation", "bilinear"),
        )
    checked = ArtifactMeta.create(cfg, class_names, preprocess)
    names, preprocess = list(checked.class_names), checked.preprocess
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": cfg.to_dict(),
        "class_names": names,
        "preprocess": preprocess.to_dict(),
        "meta": meta,
    }


def resolve(path: str | Path) -> Path:
    """Accept a checkpoint folder, a link to one, or a file inside one."""
    p = Path(path)
    if p.is_file() and p.name in (WEIGHTS, CONFIG, TRAINING_STATE):
        p = p.parent
    if not p.exists():
        raise MobilenetsError(f"checkpoint not found: {path}")
    if not p.is_dir() or not (p / CONFIG).is_file() or not (p / WEIGHTS).is_file():
        raise MobilenetsError(
            f"{path} is not a mobilenets checkpoint folder (needs {CONFIG} and {WEIGHTS})"
        )
    return p


def read_info(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``config.json``, validated."""
    p = resolve(path)
    try:
        info = json.loads((p / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MobilenetsError(f"{p / CONFIG}: unreadable checkpoint config ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise MobilenetsError(f"{p / CONFIG}: not a {FORMAT} config")
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise MobilenetsError(f"{p / CONFIG}: format_version is newer than this mobilenets")
    return info


def _legacy_preprocess(info: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    """The preprocess entry of a checkpoint written before it had one (top-level mean/std,
    ``meta.preprocess.crop_pct``)."""
    old = info.get("meta", {}).get("preprocess", {}) if isinstance(info.get("meta"), dict) else {}
    old = old if isinstance(old, dict) else {}
    return {
        "resolution": cfg.resolution,
        "in_chans": cfg.in_chans,
        "mean": info.get("mean", [0.0] * cfg.in_chans),
        "std": info.get("std", [1.0] * cfg.in_chans),
        "crop_pct": old.get("crop_pct", 1.0),
        "interpolation": old.get("interpolation", "bilinear"),
    }


def parse_info(info: dict[str, Any], where: str) -> tuple[ModelConfig, list[str], Preprocess]:
    """Validate a config.json: (model config, class names, preprocess), or MobilenetsError
    naming the field at fault (the checks of :meth:`ArtifactMeta.parse`, as for ONNX and
    ``.tflite`` files)."""
    from .artifact import ArtifactMeta

    if "model" not in info:
        raise MobilenetsError(f"{where}: no mobilenets model config in its metadata")
    cfg_raw = info["model"]
    fields = {"config": cfg_raw, "class_names": info.get("class_names", [])}
    if "preprocess" in info:
        fields["preprocess"] = info["preprocess"]
    elif isinstance(cfg_raw, dict):
        try:
            fields["preprocess"] = _legacy_preprocess(info, ModelConfig.from_dict(cfg_raw))
        except (UsageError, TypeError, ValueError):
            pass  # the config itself is damaged: ArtifactMeta.parse names it
    meta = ArtifactMeta.parse(fields, where)
    if not isinstance(info.get("meta", {}), dict):
        raise MobilenetsError(f"{where}: meta must be a JSON object")
    return meta.config, list(meta.class_names), meta.preprocess


def _check_shapes(model: nn.Module, sd: dict[str, torch.Tensor], where: Path, name: str) -> None:
    """One line naming the first missing, unexpected or wrongly shaped tensor."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise MobilenetsError(
            f"{where}: weights do not match {name} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for k, t in own.items():
        if tuple(sd[k].shape) != tuple(t.shape):
            raise MobilenetsError(
                f"{where}: {k} has shape {tuple(sd[k].shape)}, but the config.json model "
                f"({name}) needs {tuple(t.shape)}"
            )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint folder (or ``last.ckpt``/``best.ckpt``) as a model ready for inference.

    config.json is validated first: a bad field gives one MobilenetsError line naming it.
    """
    from .models import build_from_config

    p = resolve(path)
    info = read_info(p)
    cfg, names, prep = parse_info(info, str(p / CONFIG))
    model = build_from_config(cfg)
    try:
        sd = load_file(p / WEIGHTS)
    except Exception as e:  # safetensors raises its own error types
        raise MobilenetsError(f"{p / WEIGHTS}: unreadable weights ({e})") from None
    _check_shapes(model, sd, p / WEIGHTS, cfg.name)
    model.load_state_dict(sd)
    model.eval().to(device)
    return Checkpoint(model, cfg, names, prep, p, info.get("meta", {}))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load(weights_only=True)``, turning a pickled object into a clear refusal.

    An empty file, or bytes that are neither a torch zip archive nor a pickle, get their own
    one-line message (they are not "pickled objects").
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise MobilenetsError(f"{path}: unreadable file ({e.strerror or e})") from None
    if not head:
        raise MobilenetsError(f"{path}: the file is empty")
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise MobilenetsError(
            f"{path}: not a PyTorch file (neither a torch.save zip archive nor a pickle; "
            "a .safetensors file needs that suffix)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise MobilenetsError(f"{path}: damaged PyTorch file ({_first_line(e)})") from None
        raise MobilenetsError(
            f"{path}: refusing to load, it carries a pickled Python object "
            f"(only tensors and plain containers are allowed). {_first_line(e)}"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise MobilenetsError(f"{path}: unreadable file ({_first_line(e)})") from None


def load_training_state(path: str | Path) -> dict[str, Any]:
    """The checkpoint's training state, loaded with ``weights_only=True``."""
    p = resolve(path)
    f = p / TRAINING_STATE
    if not f.is_file():
        raise MobilenetsError(f"{p}: has no {TRAINING_STATE}, so it cannot be resumed")
    return safe_torch_load(f)


def verify_checkpoint(path: str | Path, state_keys: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """Check every file of a checkpoint folder; return its training state when ``state_keys`` is given.

    Raises MobilenetsError naming the file and what is wrong with it: a missing file, a
    config that does not parse, weights that are truncated, do not match the config or are not
    finite, or a training state that lacks one of ``state_keys``.
    """
    p = resolve(path)
    try:
        ck = load_checkpoint(p)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise MobilenetsError(f"{p}: damaged checkpoint ({str(e).splitlines()[0]})") from None
    bad = [
        k
        for k, v in ck.model.state_dict().items()
        if v.is_floating_point() and not v.isfinite().all()
    ]
    if bad:
        raise MobilenetsError(f"{p / WEIGHTS}: non-finite weights (e.g. {bad[0]})")
    if not state_keys:
        return None
    state = load_training_state(p)
    missing = [k for k in state_keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise MobilenetsError(
            f"{p / TRAINING_STATE}: incomplete training state (missing {', '.join(missing)})"
        )
    return state
