"""Support for tests and benchmarks that need a random-weight network whose every layer matters.

A freshly built network has default BatchNorm statistics (mean 0, variance 1, gamma 1, beta 0):
folding them changes nothing, every channel of a layer has the same scale, and activations sit
in a narrow, symmetric range. An int8 or export test on such a network is trivially easy and
can pass with a swapped buffer, a wrong fold or a per-tensor scale where per-channel was meant.
:func:`randomize_bn` gives each channel its own statistics, so the folded weights, the
per-channel scales and the activation ranges are all non-trivial.
"""

from __future__ import annotations

import torch
from torch import nn


def randomize_bn(
    model: nn.Module,
    seed: int = 0,
    *,
    mean_std: float = 0.1,
    var_range: tuple[float, float] = (0.5, 1.5),
    beta_std: float = 0.2,
    linear_std: float | None = None,
) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, from a generator seeded with ``seed``.

    For every ``nn.BatchNorm2d``, drawn in this order: ``running_mean ~ N(0, mean_std)``,
    ``running_var ~ U(var_range)``, ``weight ~ U(0.5, 1.5)``, ``bias ~ N(0, beta_std)``. With
    ``linear_std``, every ``nn.Linear`` weight is redrawn as ``N(0, linear_std)`` (a classifier
    whose logits are not all near zero). Returns ``model`` in eval mode (the running statistics
    are what inference uses).
    """
    g = torch.Generator().manual_seed(seed)
    low, high = var_range
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * mean_std)
                m.running_var.copy_(torch.rand(n, generator=g) * (high - low) + low)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * beta_std)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * linear_std)
    return model.eval()
