"""``create_model``: a model by name, optionally with weights from a file (as timm's
``_factory.create_model``). Kept apart from :mod:`mobilenets.models`, which only builds networks,
so that building never does file I/O and ``models`` imports nothing that imports it back."""

from __future__ import annotations

from typing import Any

from torch import nn

from .config import ModelConfig
from .errors import UsageError
from .models import build_from_config
from .weights import load_pretrained


def create_model(
    name: str,
    width_mult: float = 1.0,
    resolution: int = 224,
    num_classes: int = 1000,
    in_chans: int = 3,
    small_input: bool = False,
    pretrained: str | None = None,
    **options: Any,
) -> nn.Module:
    """Build a model by name: ``mobilenet_v1``, ``mobilenet_v2``, ``resnet50`` or ``vgg16``.

    Args:
        width_mult: the width multiplier alpha (MobileNets only).
        resolution: the input size the model is meant for; rho = resolution / 224.
            Any input >= 32 px (>= 16 with ``small_input``) runs through global pooling.
        small_input: total stride 8 instead of 32, for 28-64 px data (Fashion-MNIST, CIFAR).
        pretrained: a state_dict file (.pth/.pt/.bin/.safetensors) from torchvision, timm or
            mobilenets, or a mobilenets checkpoint folder, loaded without unpickling objects.
        options: any other :class:`ModelConfig` field (activation, bn_eps, drop_rate,
            conv_type, bottleneck_activation, expansion_activation, shortcut).

    Returns:
        The model, with its :class:`ModelConfig` as ``model.config``.
    """
    unknown = sorted(set(options) - set(ModelConfig.__dataclass_fields__))
    if unknown:
        raise UsageError(f"unknown model option(s): {', '.join(unknown)}")
    cfg = ModelConfig(
        name=name,
        width_mult=width_mult,
        resolution=resolution,
        num_classes=num_classes,
        in_chans=in_chans,
        small_input=small_input,
        **options,
    )
    model = build_from_config(cfg)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model
