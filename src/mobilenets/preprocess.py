"""The one record of how images become model inputs, stored with every model file.

A checkpoint's ``config.json``, an ``.onnx``'s metadata and a ``.tflite``'s metadata each carry it
as one ``"preprocess"`` entry, and train, eval, predict, export and the int8 paths all take it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .config import MAX_RESOLUTION
from .errors import UsageError

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class Preprocess:
    """Decode -> channels -> resize (``crop_pct`` < 1: shorter side to resolution / crop_pct,
    then center crop; 1: the whole image) -> ``(pixel / 255 - mean) / std``."""

    resolution: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "preprocess") -> Preprocess:
        """Rebuild from a stored entry, naming the field at fault in one line."""
        if not isinstance(d, dict):
            raise UsageError(f"{where} must be a JSON object, got {type(d).__name__}")
        known = {"resolution", "in_chans", "mean", "std", "crop_pct", "interpolation"}
        missing = sorted({"resolution", "in_chans", "mean", "std"} - set(d))
        if missing:
            raise UsageError(f"{where} lacks field(s): {', '.join(missing)}")
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"{where} has unknown field(s): {', '.join(unknown)}")
        for key in ("mean", "std"):
            if not isinstance(d[key], (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in d[key]
            ):
                raise UsageError(f"{where}.{key} must be a list of numbers, got {d[key]!r}")
        try:
            return cls(**{k: d[k] for k in known if k in d})
        except UsageError as e:
            raise UsageError(f"{where}: {e}") from None


def validate(p: Preprocess) -> None:
    """Raise UsageError naming the bad field."""
    for name in ("resolution", "in_chans"):
        v = getattr(p, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UsageError(f"{name} must be an integer >= 1, got {v!r}")
    if p.resolution > MAX_RESOLUTION:
        raise UsageError(f"resolution must be <= {MAX_RESOLUTION}, got {p.resolution}")
    for name in ("mean", "std"):
        v = getattr(p, name)
        if len(v) not in (1, p.in_chans):
            need = "1 value" if p.in_chans == 1 else f"1 or {p.in_chans} values"
            raise UsageError(f"{name} needs {need} (in_chans={p.in_chans}), got {len(v)}")
        if not all(math.isfinite(x) for x in v):
            raise UsageError(f"{name} must be finite, got {list(v)}")
    if not all(s > 0 for s in p.std):
        raise UsageError(f"std must be > 0, got {list(p.std)}")
    if not (isinstance(p.crop_pct, (int, float)) and 0 < p.crop_pct <= 1):
        raise UsageError(f"crop_pct must be in (0, 1], got {p.crop_pct!r}")
    if p.interpolation not in INTERPOLATIONS:
        raise UsageError(
            f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {p.interpolation!r}"
        )
