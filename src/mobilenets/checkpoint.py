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

from .config import ModelConfig
from .errors import MobilenetsError

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
    mean: list[float]
    std: list[float]
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def crop_pct(self) -> float:
        """Evaluation crop fraction recorded by training (1.0: resize the whole image)."""
        return float(self.meta.get("preprocess", {}).get("crop_pct", 1.0))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes | memoryview) -> None:
    """Write and fsync a new file; its mode follows the umask (0644 under the usual 022)."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    class_names: list[str] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    meta: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Atomically write a checkpoint folder at ``path`` (replacing one that exists).

    ``state_dict`` overrides the weights saved for inference (e.g. the EMA weights);
    ``training_state`` must hold only tensors and plain containers (``weights_only`` loadable).
    """
    path = Path(path)
    cfg: ModelConfig = model.config
    n = cfg.num_classes
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": cfg.to_dict(),
        "class_names": list(class_names) if class_names else [str(i) for i in range(n)],
        "mean": list(mean) if mean else [0.0] * cfg.in_chans,
        "std": list(std) if std else [1.0] * cfg.in_chans,
        "meta": meta or {},
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    sd = state_dict if state_dict is not None else model.state_dict()
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
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    return path


def point_link(link: str | Path, target: str | Path) -> None:
    """Make ``link`` a symlink to ``target`` (a sibling folder), swapped atomically."""
    link, target = Path(link), Path(target)
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target.name, tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


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


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint folder (or ``last.ckpt``/``best.ckpt``) as a model ready for inference."""
    from .models import build_from_config

    p = resolve(path)
    info = read_info(p)
    cfg = ModelConfig.from_dict(info["model"])
    model = build_from_config(cfg)
    try:
        sd = load_file(p / WEIGHTS)
    except Exception as e:  # safetensors raises its own error types
        raise MobilenetsError(f"{p / WEIGHTS}: unreadable weights ({e})") from None
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise MobilenetsError(
            f"{p / WEIGHTS}: weights do not match {cfg.name} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.eval().to(device)
    return Checkpoint(
        model, cfg, info["class_names"], info["mean"], info["std"], p, info.get("meta", {})
    )


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load(weights_only=True)``, turning a pickled object into a clear refusal."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise MobilenetsError(
            f"{path}: refusing to load, it carries a pickled Python object "
            f"(only tensors and plain containers are allowed). {first}"
        ) from None
    except (OSError, RuntimeError, EOFError) as e:
        raise MobilenetsError(f"{path}: unreadable file ({str(e).splitlines()[0]})") from None


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
