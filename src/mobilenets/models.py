"""MobileNet V1/V2 as data (the papers' tables) with one builder, plus torchvision baselines.

Conv, BN and activation are separate submodules of :class:`ConvBNAct`, so BN folding,
int8 quantization and C code generation see each of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .config import BASELINES, ModelConfig

# Howard et al. 2017, Table 1: a 3x3 stride-2 conv with 32 filters, then 13 depthwise-separable
# blocks as (pointwise output channels c, depthwise stride s). Table 1 prints the last stride
# as 2; it is 1 (erratum, tensorflow/models#1997): only stride 1 fits the 7x7 average pool.
MOBILENET_V1_STEM = 32
MOBILENET_V1_BLOCKS: list[tuple[int, int]] = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    *[(512, 1)] * 5,
    (1024, 2),
    (1024, 1),
]

# Sandler et al. 2018, Table 2: rows of (t expansion, c output channels, n repeats, s stride).
MOBILENET_V2_STEM = 32
MOBILENET_V2_BLOCKS: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
MOBILENET_V2_HEAD = 1280


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` without dropping more than 10%.

    This is the TF-slim ``_make_divisible`` that the official V2 checkpoints, timm and
    torchvision use for every channel count.
    """
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def v1_channels(c: int, alpha: float) -> int:
    """V1 width rule as TF-slim computes it: ``max(8, int(c * alpha))``."""
    return max(8, int(c * alpha))


@dataclass(frozen=True)
class BlockSpec:
    """One block of the body, in timm's spirit: the same field names for every block type.

    kind: ``ds`` (V1 depthwise separable), ``conv`` (V1 full 3x3 conv, Table 4's Conv MobileNet)
    or ``ir`` (V2 inverted residual with linear bottleneck).
    """

    kind: str
    in_chs: int
    out_chs: int
    stride: int
    exp_chs: int = 0


def _act(name: str | None) -> nn.Module:
    if name is None or name == "linear":
        return nn.Identity()
    return {"relu": nn.ReLU, "relu6": nn.ReLU6}[name](inplace=True)


def pad_same(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """TensorFlow SAME padding for a conv that follows: ``ceil(size / stride)`` outputs, the odd
    padding row/column at the bottom/right. Computed from the input's size, so any resolution
    works. Wrapped for torch.fx: a trace shows one ``pad_same`` call, then the conv module."""
    h, w = x.shape[-2:]
    pad_h = max((-(-h // stride) - 1) * stride + kernel_size - h, 0)
    pad_w = max((-(-w // stride) - 1) * stride + kernel_size - w, 0)
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


fx.wrap("pad_same")


class SamePad2d(nn.Module):
    """TensorFlow SAME padding before a stride-2 conv (a separate, parameter-free module)."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_same(x, self.kernel_size, self.stride)


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation, kept as three named submodules.

    ``padding="same"`` puts a :class:`SamePad2d` before a stride-2 conv (whose own padding is
    then 0); stride-1 convs pad k//2 on every side, which already is TensorFlow SAME.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu6",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        if padding == "same" and stride > 1:
            self.pad = SamePad2d(kernel_size, stride)
            pad = 0
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs, eps=bn_eps, momentum=bn_momentum)
        self.act = _act(act)


class DepthwiseSeparable(nn.Module):
    """V1 block: 3x3 depthwise -> BN -> act -> 1x1 pointwise -> BN -> act."""

    def __init__(self, spec: BlockSpec, act: str, **bn: Any) -> None:
        super().__init__()
        self.dw = ConvBNAct(spec.in_chs, spec.in_chs, 3, spec.stride, spec.in_chs, act, **bn)
        self.pw = ConvBNAct(spec.in_chs, spec.out_chs, 1, 1, 1, act, **bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class FullConv(nn.Module):
    """V1 ablation block (Table 4, "Conv MobileNet"): one full 3x3 conv -> BN -> act."""

    def __init__(self, spec: BlockSpec, act: str, **bn: Any) -> None:
        super().__init__()
        self.conv = ConvBNAct(spec.in_chs, spec.out_chs, 3, spec.stride, 1, act, **bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class InvertedResidual(nn.Module):
    """V2 block: 1x1 expand -> BN -> ReLU6 -> 3x3 depthwise -> BN -> ReLU6 -> 1x1 project -> BN.

    There is no expand conv when t = 1. The projection is linear unless the Fig. 6a ablation
    asks for ReLU6. ``shortcut``: ``bottleneck`` (paper: joins the thin bottlenecks when
    stride is 1 and channels match), ``expansion`` (Fig. 6b ablation: the shortcut joins the
    expanded tensors, around the stride-1 depthwise conv) or ``none``.
    """

    def __init__(
        self, spec: BlockSpec, act: str, project_act: str, shortcut: str, **bn: Any
    ) -> None:
        super().__init__()
        hid = spec.exp_chs
        self.expand = (
            ConvBNAct(spec.in_chs, hid, 1, 1, 1, act, **bn) if hid != spec.in_chs else None
        )
        self.dw = ConvBNAct(hid, hid, 3, spec.stride, hid, act, **bn)
        self.project = ConvBNAct(hid, spec.out_chs, 1, 1, 1, project_act, **bn)
        self.bottleneck_shortcut = (
            shortcut == "bottleneck" and spec.stride == 1 and spec.in_chs == spec.out_chs
        )
        self.expansion_shortcut = shortcut == "expansion" and spec.stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x
        d = self.dw(h)
        if self.expansion_shortcut:
            d = d + h
        out = self.project(d)
        if self.bottleneck_shortcut:
            out = out + x
        return out


class MobileNet(nn.Module):
    """stem -> blocks -> head (V2's 1x1 conv) -> global average pool -> dropout -> classifier."""

    def __init__(
        self,
        config: ModelConfig,
        stem: nn.Module,
        blocks: Sequence[nn.Module],
        head: nn.Module | None,
        num_features: int,
    ) -> None:
        super().__init__()
        self.config = config
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.head = head if head is not None else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(config.drop_rate)
        self.classifier = nn.Linear(num_features, config.num_classes)
        self.num_features = num_features
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.forward_features(x)))
        return self.classifier(self.dropout(x))


def _init_weights(model: nn.Module) -> None:
    # torchvision's MobileNetV2 initialisation.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def block_specs(cfg: ModelConfig) -> tuple[int, list[BlockSpec], int | None]:
    """Expand the paper's table for ``cfg`` into (stem channels, block specs, head channels)."""
    a = cfg.width_mult
    specs: list[BlockSpec] = []
    if cfg.name == "mobilenet_v1":
        stem = v1_channels(MOBILENET_V1_STEM, a)
        in_chs, first_s2 = stem, True
        for c, s in MOBILENET_V1_BLOCKS:
            if cfg.small_input and s == 2 and first_s2:
                s, first_s2 = 1, False
            out = v1_channels(c, a)
            kind = "ds" if cfg.conv_type == "separable" else "conv"
            specs.append(BlockSpec(kind, in_chs, out, s))
            in_chs = out
        return stem, specs, None
    stem = make_divisible(MOBILENET_V2_STEM * a)
    in_chs = stem
    for t, c, n, s in MOBILENET_V2_BLOCKS:
        out = make_divisible(c * a)
        for i in range(n):
            stride = s if i == 0 else 1
            if cfg.small_input and c == 24 and i == 0:
                stride = 1
            exp = in_chs if t == 1 else make_divisible(in_chs * t)
            specs.append(BlockSpec("ir", in_chs, out, stride, exp))
            in_chs = out
    # The last 1x1 conv keeps 1280 channels when alpha < 1 (V2 paper, Sec. 5.1).
    head = make_divisible(MOBILENET_V2_HEAD * a) if a > 1.0 else MOBILENET_V2_HEAD
    return stem, specs, head


def build_mobilenet(cfg: ModelConfig) -> MobileNet:
    """The one builder: turn a config (and its paper table) into a :class:`MobileNet`."""
    bn = {"bn_eps": cfg.bn_eps, "bn_momentum": cfg.bn_momentum, "padding": cfg.padding}
    act = cfg.activation
    stem_chs, specs, head_chs = block_specs(cfg)
    stem = ConvBNAct(cfg.in_chans, stem_chs, 3, 1 if cfg.small_input else 2, 1, act, **bn)
    blocks: list[nn.Module] = []
    for spec in specs:
        if spec.kind == "ds":
            blocks.append(DepthwiseSeparable(spec, act, **bn))
        elif spec.kind == "conv":
            blocks.append(FullConv(spec, act, **bn))
        else:
            blocks.append(
                InvertedResidual(spec, act, cfg.bottleneck_activation, cfg.shortcut, **bn)
            )
    last = specs[-1].out_chs
    head = None
    if head_chs is not None:
        head = ConvBNAct(last, head_chs, 1, 1, 1, act, **bn)
        last = head_chs
    return MobileNet(cfg, stem, blocks, head, last)


def build_baseline(cfg: ModelConfig) -> nn.Module:
    """torchvision's ResNet-50 / VGG16 behind the same config (in_chans and small_input adapted)."""
    import torchvision

    if cfg.name == "resnet50":
        model = torchvision.models.resnet50(weights=None, num_classes=cfg.num_classes)
        if cfg.small_input:  # CIFAR-style stem: 3x3 stride-1 conv, no max-pool (total stride 8)
            model.conv1 = nn.Conv2d(cfg.in_chans, 64, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        elif cfg.in_chans != 3:
            model.conv1 = nn.Conv2d(cfg.in_chans, 64, 7, 2, 3, bias=False)
    else:
        model = torchvision.models.vgg16(weights=None, num_classes=cfg.num_classes)
        if cfg.in_chans != 3:
            model.features[0] = nn.Conv2d(cfg.in_chans, 64, 3, 1, 1)
        if cfg.small_input:  # drop the first two of five max-pools: total stride 8
            model.features[4] = nn.Identity()
            model.features[9] = nn.Identity()
    model.config = cfg
    return model


def build_from_config(cfg: ModelConfig) -> nn.Module:
    """Build a freshly initialised model from a :class:`ModelConfig`."""
    return build_baseline(cfg) if cfg.name in BASELINES else build_mobilenet(cfg)
