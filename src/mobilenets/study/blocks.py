"""Inverted residual (V2) against ResNet's bottleneck: params, MACs and activation memory.

Two setups, both stride 1 at 56 x 56 (ResNet-50's conv2_x stage, 256 -> 64 -> 64 -> 256):

- equal width: the inverted residual has the same 256 input/output channels (expansion x6);
- equal MACs: the inverted residual's width d (a multiple of 8) whose MACs come closest.

Memory is in elements and in KB at 16-bit activations, as V2 Table 3 counts. "Materialized" is
:func:`mobilenets.profile`'s peak (every tensor whole, buffers freed after their last reader).
The streamed (memory-efficient) figure is the whole network's, from the C generator's planner
(:mod:`mobilenets.study.structure`), not an estimate per block.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from torch import nn

SIZE = 56
RESNET_WIDTH, RESNET_MID = 256, 64
EXPANSION = 6
BYTES_PER_ELEM = 2  # V2 Table 3: 16-bit activations
KERNEL = 3


def inverted_residual(width: int) -> nn.Module:
    from ..models import BlockSpec, InvertedResidual

    block = InvertedResidual(
        BlockSpec("ir", width, width, 1, width * EXPANSION), "relu6", "linear", "bottleneck"
    )
    block.config = SimpleNamespace(
        name=f"inverted residual {width}-{width * EXPANSION}-{width}",
        resolution=SIZE,
        in_chans=width,
        small_input=True,
    )
    return block


def resnet_bottleneck() -> nn.Module:
    from torchvision.models.resnet import Bottleneck

    block = Bottleneck(RESNET_WIDTH, RESNET_MID)
    block.config = SimpleNamespace(
        name=f"ResNet bottleneck {RESNET_WIDTH}-{RESNET_MID}-{RESNET_WIDTH}",
        resolution=SIZE,
        in_chans=RESNET_WIDTH,
        small_input=True,
    )
    return block


def block_row(block: nn.Module, c_in: int, c_mid: int, c_out: int) -> dict[str, Any]:
    """One block's figures (profile for params, MACs and the materialized peak)."""
    import torch

    from ..profiling import profile

    r = profile(block, dtype=torch.float16)
    return {
        "block": block.config.name,
        "in_out_channels": c_in,
        "inner_channels": c_mid,
        "params": r.params,
        "macs": r.macs,
        "materialized_elems": r.peak_activation_elems,
        "materialized_kb": r.peak_activation_elems * BYTES_PER_ELEM / 1024,
    }


def equal_macs_width(target_macs: int) -> int:
    """The inverted residual width (multiple of 8) whose MACs are closest to ``target_macs``."""

    def macs(d: int) -> int:  # expand + depthwise + project, per V2 Table 1
        return SIZE * SIZE * (d * EXPANSION * d * 2 + KERNEL * KERNEL * d * EXPANSION)

    return min(range(8, 1025, 8), key=lambda d: abs(macs(d) - target_macs))


def compare_blocks() -> dict[str, Any]:
    """Both setups against the ResNet bottleneck (params, MACs, materialized peak)."""
    resnet = block_row(resnet_bottleneck(), RESNET_WIDTH, RESNET_MID, RESNET_WIDTH)
    d = equal_macs_width(resnet["macs"])
    setups = {
        "equal width": block_row(
            inverted_residual(RESNET_WIDTH), RESNET_WIDTH, RESNET_WIDTH * EXPANSION, RESNET_WIDTH
        ),
        "equal MACs": block_row(inverted_residual(d), d, d * EXPANSION, d),
    }
    result: dict[str, Any] = {"resnet": resnet, "setups": {}}
    for name, ir in setups.items():
        result["setups"][name] = {
            "inverted_residual": ir,
            "materialized_ratio": ir["materialized_elems"] / resnet["materialized_elems"],
        }
    return result
