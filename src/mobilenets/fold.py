"""Batch-norm folding: every Conv2d -> BatchNorm2d pair becomes one Conv2d with a bias.

Used by the ONNX export, the int8 quantizer and the memory planner (so none of them imports
another's module for it).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["check_finite_weights", "fold_bn"]


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (eval statistics) into ``conv`` in place, computed in float64."""
    w = conv.weight.detach().double()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    new_b = (b - bn.running_mean.double()) * scale + bn.bias.detach().double()
    conv.weight = nn.Parameter((w * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
    conv.bias = nn.Parameter(new_b.to(conv.weight.dtype))


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where the BN reads only the conv's output (found with torch.fx)."""
    from torch import fx

    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # untraceable custom model: fall back to ConvBNAct-style children
        return [
            (f"{n}.conv" if n else "conv", f"{n}.bn" if n else "bn")
            for n, m in model.named_modules()
            if isinstance(getattr(m, "conv", None), nn.Conv2d)
            and isinstance(getattr(m, "bn", None), nn.BatchNorm2d)
            and isinstance(m, nn.Sequential)
        ]
    mods = dict(model.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and isinstance(mods.get(src.target), nn.Conv2d)
            and len(src.users) == 1
        ):
            pairs.append((src.target, node.target))
    return pairs


def fold_bn(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy of ``model`` with every Conv2d -> BatchNorm2d pair folded.

    The BN layers become ``nn.Identity``; the copy keeps the class and ``model.config``, and
    its outputs match the original's (eval mode) within float32 rounding (about 1e-6).
    """
    folded = copy.deepcopy(model).eval()
    for conv_name, bn_name in _conv_bn_pairs(folded):
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        if bn.running_mean is None or not bn.affine:
            continue
        _fold_pair(conv, bn)
        parent, _, attr = bn_name.rpartition(".")
        setattr(folded.get_submodule(parent) if parent else folded, attr, nn.Identity())
    return folded


def check_finite_weights(model: nn.Module, what: str = "model") -> None:
    """MobilenetsError naming the first parameter or buffer with a NaN or infinite value
    (a diverged or damaged checkpoint), before anything is exported or generated from it."""
    from .errors import MobilenetsError

    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise MobilenetsError(
                f"{what}: weight {name} has {bad} non-finite value(s) (NaN/inf); "
                "refusing to export it (retrain or pick an earlier checkpoint)"
            )
