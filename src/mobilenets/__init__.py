"""mobilenets: MobileNet V1/V2 from the papers to a device."""

from __future__ import annotations

import importlib
from typing import Any

from .config import ModelConfig
from .errors import MobilenetsError, UsageError
from .models import create_model
from .profile import Report, profile

__version__ = "0.1.0"

# Heavier parts load on first use, so `import mobilenets` stays quick.
_LAZY = {
    "Checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_pretrained": "weights",
    "fit": "train",
    "evaluate": "evaluate",
    "export_onnx": "export",
    "fold_bn": "export",
    "quantize": "quantize",
    "Predictor": "predict",
}

__all__ = [
    "ModelConfig",
    "MobilenetsError",
    "Report",
    "UsageError",
    "create_model",
    "profile",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mobilenets' has no attribute {name!r}")
