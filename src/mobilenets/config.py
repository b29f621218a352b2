"""The one model configuration shared by models, checkpoints, ONNX metadata and run summaries."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

# 2: ``padding`` ("symmetric" or "same"); version-1 configs load as symmetric.
# 3: ``minimal`` (MobileNetV3's minimalistic variants); older configs load with minimal=False.
# 4: ``expansion_activation`` (V2: the expansion's activation, or none); older configs load with
#    "nonlinear" (the model's activation, as before); ``conv_type`` also applies to V2.
SCHEMA_VERSION = 4

# The largest input side any model file may declare: 4096 px (a 3-channel float input is then
# 200 MB); a damaged file asking for 100000 px is refused before anything is allocated.
MAX_RESOLUTION = 4096

MOBILENET_V3 = ("mobilenet_v3_large", "mobilenet_v3_small")
MOBILENETS = ("mobilenet_v1", "mobilenet_v2", *MOBILENET_V3)
BASELINES = ("resnet50", "vgg16")
MODEL_NAMES = MOBILENETS + BASELINES

_CHOICES = {
    "activation": ("relu", "relu6"),
    "conv_type": ("separable", "full"),
    "bottleneck_activation": ("linear", "relu6"),
    "expansion_activation": ("nonlinear", "linear"),
    "shortcut": ("bottleneck", "expansion", "none"),
    "padding": ("symmetric", "same"),
}
# The widest width multiplier alpha accepted: beyond it layers have thousands of channels.
MAX_WIDTH_MULT = 4.0
# The one per-family option schema: the models each option applies to. Config validation, the
# command-line flags (a flag given for a model it does not apply to is refused) and weight import
# (the options a source network was trained with) all read it. Options not listed apply to all.
APPLIES_TO: dict[str, tuple[str, ...]] = {
    "width_mult": MOBILENETS,
    "activation": ("mobilenet_v1", "mobilenet_v2"),  # V3 fixes ReLU / hard-swish per block
    "conv_type": ("mobilenet_v1", "mobilenet_v2"),
    "bottleneck_activation": ("mobilenet_v2",),
    "expansion_activation": ("mobilenet_v2",),
    "shortcut": ("mobilenet_v2",),
    "padding": MOBILENETS,
    "minimal": MOBILENET_V3,
}
# ModelConfig fields that only MobileNets have (baselines refuse them).
MOBILENET_ONLY = tuple(APPLIES_TO)


def model_flag(option: str) -> str:
    """The command-line flag of a ModelConfig field (``width_mult`` is ``--width``)."""
    return {"width_mult": "--width", "name": "--model"}.get(option, "--" + option.replace("_", "-"))


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model, JSON-serialisable and versioned.

    ``activation`` defaults to ReLU6, as in the official TensorFlow MobileNets and timm
    (the V1 paper's text says ReLU; ReLU6 bounds activations, which helps int8).
    ``bn_eps`` defaults to PyTorch's 1e-5 so that torchvision/timm weights reproduce their logits.
    ``conv_type``: ``full`` replaces V1's depthwise separable blocks by full 3x3 convs (V1
    Table 4) and V2's 3x3 depthwise conv by a standard 3x3 conv over the expanded channels
    (groups 1); V1 and V2 only. ``bottleneck_activation`` (the projection's),
    ``expansion_activation`` (the expansion 1x1 conv's: ``nonlinear`` is the model's
    ``activation``, ``linear`` none) and ``shortcut`` apply to V2 only;
    ``activation`` to V1 and V2 (V3 fixes ReLU or hard-swish per block); ``minimal`` to V3 only
    (Keras's ``minimalistic``: ReLU, 3x3 kernels and no squeeze-excite everywhere).
    ``padding``: ``symmetric`` (PyTorch's k//2 on every side; torchvision/timm weights) or
    ``same`` (TensorFlow SAME: stride-2 convs pad less on the top/left, as timm's ``tf_``
    models), which exports to ``.tflite`` without PAD ops. MobileNets only.
    """

    name: str
    width_mult: float = 1.0
    resolution: int = 224
    num_classes: int = 1000
    in_chans: int = 3
    small_input: bool = False
    activation: str = "relu6"
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    drop_rate: float = 0.2
    conv_type: str = "separable"
    bottleneck_activation: str = "linear"
    expansion_activation: str = "nonlinear"
    shortcut: str = "bottleneck"
    padding: str = "symmetric"
    minimal: bool = False
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        validate(self)

    @property
    def rho(self) -> float:
        """The paper's resolution multiplier ρ = resolution / 224."""
        return self.resolution / 224

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Rebuild a config, refusing unknown fields and newer schema versions."""
        if not isinstance(d, dict):
            raise UsageError(f"model config must be a JSON object, got {type(d).__name__}")
        version = d.get("schema_version", SCHEMA_VERSION)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise UsageError(
                f"model config schema_version {version!r} is newer than this mobilenets "
                f"understands ({SCHEMA_VERSION}); upgrade mobilenets"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"unknown model config field(s): {', '.join(unknown)}")
        if "name" not in d:
            raise UsageError("model config lacks field: name")
        return cls(**{**d, "schema_version": SCHEMA_VERSION})  # older versions upgrade

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def current_dict(d: Any) -> Any:
    """A stored config dict as this version writes it: an older schema version upgraded (its
    missing fields at their defaults, which is what it built), so that a record written before
    a new field compares equal to the same model now; anything that does not parse as a config
    comes back unchanged (the caller's comparison then reports it)."""
    if not isinstance(d, dict):
        return d
    try:
        return ModelConfig.from_dict(d).to_dict()
    except (UsageError, TypeError):
        return d


def min_resolution(small_input: bool) -> int:
    return 16 if small_input else 32


def validate(cfg: ModelConfig) -> None:
    """Raise UsageError with a one-line message naming the bad field."""
    if cfg.name not in MODEL_NAMES:
        raise UsageError(f"unknown model {cfg.name!r}; choose from {', '.join(MODEL_NAMES)}")
    if isinstance(cfg.width_mult, bool) or not isinstance(cfg.width_mult, (int, float)):
        raise UsageError(f"width_mult must be a number, got {cfg.width_mult!r}")
    if not cfg.width_mult > 0:
        raise UsageError(f"width_mult must be > 0, got {cfg.width_mult}")
    if isinstance(cfg.resolution, bool) or not isinstance(cfg.resolution, int):
        raise UsageError(f"resolution must be an integer, got {cfg.resolution!r}")
    lo = min_resolution(cfg.small_input)
    if cfg.resolution < lo:
        extra = "" if cfg.small_input else " (16 with small_input)"
        raise UsageError(f"resolution must be >= {lo}{extra}, got {cfg.resolution}")
    if cfg.resolution > MAX_RESOLUTION:
        raise UsageError(f"resolution must be <= {MAX_RESOLUTION}, got {cfg.resolution}")
    for field in ("num_classes", "in_chans"):
        v = getattr(cfg, field)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UsageError(f"{field} must be an integer >= 1, got {v!r}")
    if not 0.0 <= cfg.drop_rate < 1.0:
        raise UsageError(f"drop_rate must be in [0, 1), got {cfg.drop_rate}")
    if not cfg.bn_eps > 0:
        raise UsageError(f"bn_eps must be > 0, got {cfg.bn_eps}")
    for field, choices in _CHOICES.items():
        if getattr(cfg, field) not in choices:
            raise UsageError(
                f"{field} must be one of {', '.join(choices)}, got {getattr(cfg, field)!r}"
            )
    if not isinstance(cfg.minimal, bool):
        raise UsageError(f"minimal must be true or false, got {cfg.minimal!r}")
    check_applies(cfg)


def check_applies(cfg: ModelConfig) -> None:
    """UsageError for an option set away from its default on a model it does not apply to
    (``APPLIES_TO``); the width of a baseline has its own message."""
    defaults = ModelConfig.__dataclass_fields__
    for field, models in APPLIES_TO.items():
        if cfg.name in models or getattr(cfg, field) == defaults[field].default:
            continue
        if field == "width_mult":
            raise UsageError(f"{cfg.name} has no width multiplier; width_mult must be 1.0")
        where = "MobileNets only" if models == MOBILENETS else ", ".join(models) + " only"
        raise UsageError(f"option {field} does not apply to {cfg.name} ({where})")
