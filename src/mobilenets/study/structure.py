"""Structural claims read from the models themselves, and V2 Table 3's whole-network memory.

- V1 (paper §3): 28 layers counting depthwise and pointwise separately, each followed by
  batch norm and a ReLU except the final fully connected layer; a single path (no skip).
- V2 (§3.3, Table 1) against ResNet's bottleneck: the inverted residual *expands* its input ×6
  where ResNet's bottleneck *reduces* it ×0.25 (the first 1×1 conv of every block whose
  shortcut is the identity).
- V2 Table 3: activation memory of the whole network at 224 px, from the C generator's memory
  planner (:func:`mobilenets.micro.planner.plan_model`, int8 activations, row streaming on and
  off) for V1, V2 and ResNet-50 (the planner refuses ResNet-50's padded max-pool: the reason is
  reported as "not measurable here").

Every figure is computed at the papers' ImageNet shape (224 px, 3 channels, 1000 classes).
"""

from __future__ import annotations

import operator
from typing import Any

from torch import nn

SHAPE = {"num_classes": 1000, "in_chans": 3, "resolution": 224, "small_input": False}
LAYERS = (nn.Conv2d, nn.Linear)
ACTIVATIONS = (nn.ReLU, nn.ReLU6)


def _model(name: str) -> nn.Module:
    from ..config import ModelConfig
    from ..models import build_from_config

    return build_from_config(ModelConfig(name=name, **SHAPE)).eval()


def executed_leaves(model: nn.Module) -> list[nn.Module]:
    """The leaf modules in the order one forward pass runs them (forward hooks)."""
    import torch

    order: list[nn.Module] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod)) for m in leaves]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, SHAPE["in_chans"], SHAPE["resolution"], SHAPE["resolution"]))
    finally:
        for h in hooks:
            h.remove()
    return order


def count_adds(model: nn.Module) -> int:
    """Tensor additions in the model's traced graph (residual shortcuts), via torch.fx."""
    import torch
    from torch import fx

    graph = fx.symbolic_trace(model).graph
    adds = (operator.add, operator.iadd, torch.add)
    return sum(n.op == "call_function" and n.target in adds for n in graph.nodes)


def v1_layers() -> dict[str, Any]:
    """V1's layer count and what follows each layer (batch norm, then ReLU/ReLU6)."""
    order = executed_leaves(_model("mobilenet_v1"))
    layers = [i for i, m in enumerate(order) if isinstance(m, LAYERS)]
    followed = [
        i
        for i in layers
        if i + 2 < len(order)
        and isinstance(order[i + 1], nn.BatchNorm2d)
        and isinstance(order[i + 2], ACTIVATIONS)
    ]
    return {
        "layers": len(layers),
        "conv_layers": sum(isinstance(order[i], nn.Conv2d) for i in layers),
        "followed_by_bn_and_relu": len(followed),
        "activation": sorted({type(m).__name__ for m in order if isinstance(m, ACTIVATIONS)}),
        "last_layer": type(order[layers[-1]]).__name__,
    }


def expansion_ratios() -> dict[str, list[float]]:
    """First 1×1 conv's out/in channels of every block with an identity shortcut: V2's
    inverted residuals (expand) and ResNet-50's bottlenecks (reduce)."""
    from torchvision.models.resnet import Bottleneck

    from ..models import InvertedResidual

    v2 = [
        _first_conv_ratio(m.expand)
        for m in _model("mobilenet_v2").modules()
        if isinstance(m, InvertedResidual) and m.expand is not None and m.bottleneck_shortcut
    ]
    resnet = [
        m.conv1.out_channels / m.conv1.in_channels
        for m in _model("resnet50").modules()
        if isinstance(m, Bottleneck) and m.downsample is None
    ]
    return {"mobilenet_v2": v2, "resnet50": resnet}


def _first_conv_ratio(module: nn.Module) -> float:
    conv = next(m for m in module.modules() if isinstance(m, nn.Conv2d))
    return conv.out_channels / conv.in_channels


def structure_facts() -> dict[str, Any]:
    """Every structural figure the report checks (V1 layers, shortcuts, expansion ratios)."""
    return {
        "v1": v1_layers(),
        "adds": {name: count_adds(_model(name)) for name in ("mobilenet_v1", "mobilenet_v2")},
        "expansion": expansion_ratios(),
    }


def network_memory() -> dict[str, Any]:
    """Whole-network int8 activation memory from the planner, per model: the arena with row
    streaming and the arena without it (bytes), and the op at the streamed peak."""
    from ..errors import MobilenetsError
    from ..micro.planner import plan_model

    rows: dict[str, Any] = {}
    for name in ("mobilenet_v1", "mobilenet_v2", "resnet50"):
        model = _model(name)
        try:
            streamed, whole = plan_model(model), plan_model(model, streaming=False)
        except MobilenetsError as e:
            rows[name] = {"error": f"the planner refuses it: {e}"}
            continue
        rows[name] = {
            "streamed_arena_bytes": streamed.arena_bytes,
            "layer_by_layer_arena_bytes": whole.arena_bytes,
            "peak_op": streamed.peak_op,
        }
    return rows
