"""MobileNet V1, V2 and V3 as data (the papers' tables) with one builder, plus torchvision
baselines.

Conv, BN and activation are separate submodules of :class:`ConvBNAct`, so BN folding,
int8 quantization and C code generation see each of them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .config import BASELINES, ModelConfig


@dataclass(frozen=True)
class Row:
    """One row of a family's table, the same fields for every family (timm's
    ``_efficientnet_builder`` block definitions, as data).

    kind: ``ds`` (V1 depthwise separable) or ``ir`` (inverted residual: V2, V3).
    out: output channels at alpha = 1. exp: expansion ratio t of the (rounded) input channels.
    kernel: depthwise kernel. se: squeeze-excite width as a ratio of the expanded channels
    (0: none). act: ``relu``/``hswish``, or None for the config's ``activation``.
    repeat: blocks of this row (only the first has ``stride``).
    """

    kind: str
    out: int
    stride: int = 1
    exp: float = 1.0
    kernel: int = 3
    se: float = 0.0
    act: str | None = None
    repeat: int = 1


# Howard et al. 2017, Table 1: a 3x3 stride-2 conv with 32 filters, then 13 depthwise-separable
# blocks (pointwise output channels, depthwise stride). Table 1 prints the last stride as 2; it
# is 1 (erratum, tensorflow/models#1997): only stride 1 fits the 7x7 average pool.
MOBILENET_V1_STEM = 32
MOBILENET_V1_ROWS: tuple[Row, ...] = (
    Row("ds", 64, 1),
    Row("ds", 128, 2),
    Row("ds", 128, 1),
    Row("ds", 256, 2),
    Row("ds", 256, 1),
    Row("ds", 512, 2),
    Row("ds", 512, 1, repeat=5),
    Row("ds", 1024, 2),
    Row("ds", 1024, 1),
)

# Sandler et al. 2018, Table 2: rows of (t expansion, c output channels, n repeats, s stride).
MOBILENET_V2_STEM = 32
MOBILENET_V2_ROWS: tuple[Row, ...] = (
    Row("ir", 16, 1, exp=1),
    Row("ir", 24, 2, exp=6, repeat=2),
    Row("ir", 32, 2, exp=6, repeat=3),
    Row("ir", 64, 2, exp=6, repeat=4),
    Row("ir", 96, 1, exp=6, repeat=3),
    Row("ir", 160, 2, exp=6, repeat=3),
    Row("ir", 320, 1, exp=6),
)
MOBILENET_V2_HEAD = 1280

# Howard et al. 2019 ("Searching for MobileNetV3"), Table 1 (Large) and Table 2 (Small): a 3x3
# stride-2 conv with 16 filters and hard-swish, then bneck rows (kernel, exp size, out, SE, NL,
# stride), then a 1x1 conv to 6x the last width, a pool, and a 1x1 conv with bias (1280 / 1024).
# The paper's "exp size" column is kept as the ratio to the input width, as TF-slim, Keras and
# timm do (e.g. 200 / 80 = 2.5, 184 / 80 = 2.3), so alpha rounds the input first; torchvision
# rounds exp size * alpha instead, and the two agree at alpha = 1 only.
MOBILENET_V3_STEM = 16  # not scaled by alpha (Keras; timm's fix_stem below alpha 0.75)
MOBILENET_V3_LARGE_ROWS: tuple[Row, ...] = (
    Row("ir", 16, 1, exp=1, kernel=3, act="relu"),
    Row("ir", 24, 2, exp=4, kernel=3, act="relu"),  # exp 64
    Row("ir", 24, 1, exp=3, kernel=3, act="relu"),  # exp 72
    Row("ir", 40, 2, exp=3, kernel=5, se=0.25, act="relu"),  # exp 72
    Row("ir", 40, 1, exp=3, kernel=5, se=0.25, act="relu", repeat=2),  # exp 120
    Row("ir", 80, 2, exp=6, kernel=3, act="hswish"),  # exp 240
    Row("ir", 80, 1, exp=2.5, kernel=3, act="hswish"),  # exp 200
    Row("ir", 80, 1, exp=2.3, kernel=3, act="hswish", repeat=2),  # exp 184
    Row("ir", 112, 1, exp=6, kernel=3, se=0.25, act="hswish", repeat=2),  # exp 480, 672
    Row("ir", 160, 2, exp=6, kernel=5, se=0.25, act="hswish"),  # exp 672
    Row("ir", 160, 1, exp=6, kernel=5, se=0.25, act="hswish", repeat=2),  # exp 960
)
MOBILENET_V3_SMALL_ROWS: tuple[Row, ...] = (
    Row("ir", 16, 2, exp=1, kernel=3, se=0.25, act="relu"),
    Row("ir", 24, 2, exp=72 / 16, kernel=3, act="relu"),  # exp 72
    Row("ir", 24, 1, exp=88 / 24, kernel=3, act="relu"),  # exp 88
    Row("ir", 40, 2, exp=4, kernel=5, se=0.25, act="hswish"),  # exp 96
    Row("ir", 40, 1, exp=6, kernel=5, se=0.25, act="hswish", repeat=2),  # exp 240
    Row("ir", 48, 1, exp=3, kernel=5, se=0.25, act="hswish", repeat=2),  # exp 120, 144
    Row("ir", 96, 2, exp=6, kernel=5, se=0.25, act="hswish"),  # exp 288
    Row("ir", 96, 1, exp=6, kernel=5, se=0.25, act="hswish", repeat=2),  # exp 576
)
MOBILENET_V3_HEAD_EXPANSION = 6  # the last 1x1 conv: 6x the last block's width (960 / 576)
MOBILENET_V3_PRE_LOGITS = {"mobilenet_v3_large": 1280, "mobilenet_v3_small": 1024}


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
    or ``ir`` (V2/V3 inverted residual with linear bottleneck; V2's ``conv_type="full"`` and
    ``expansion_activation`` are applied by the builder). ``se_chs``: squeeze-excite
    width (0: none); ``act``: the block's activation (None: the config's).
    """

    kind: str
    in_chs: int
    out_chs: int
    stride: int
    exp_chs: int = 0
    kernel: int = 3
    se_chs: int = 0
    act: str | None = None


def _act(name: str | None) -> nn.Module:
    if name is None or name == "linear":
        return nn.Identity()
    return {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish}[name](inplace=True)


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


class SqueezeExcite(nn.Module):
    """V3's squeeze-and-excite (Hu et al. 2018 with MobileNetV3's gates): global average pool
    -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> hard-sigmoid, scaling each channel."""

    def __init__(self, chs: int, rd_chs: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv_reduce = nn.Conv2d(chs, rd_chs, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(rd_chs, chs, 1, bias=True)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.conv_expand(self.act(self.conv_reduce(self.pool(x)))))


class InvertedResidual(nn.Module):
    """V2/V3 block: 1x1 expand -> BN -> act -> kxk depthwise -> BN -> act [-> squeeze-excite]
    -> 1x1 project -> BN.

    There is no expand conv when t = 1. The projection is linear unless the Fig. 6a ablation
    asks for ReLU6. ``shortcut``: ``bottleneck`` (paper: joins the thin bottlenecks when
    stride is 1 and channels match), ``expansion`` (Fig. 6b ablation: the shortcut joins the
    expanded tensors, around the stride-1 depthwise conv) or ``none``. A V3 block brings its
    own kernel, activation and squeeze-excite width in ``spec``. Two V2 ablations:
    ``full_conv`` makes the kxk conv (still the submodule ``dw``) a standard conv over the
    expanded channels (groups 1), ``linear_expansion`` drops the expand conv's activation.
    """

    def __init__(
        self,
        spec: BlockSpec,
        act: str,
        project_act: str,
        shortcut: str,
        full_conv: bool = False,
        linear_expansion: bool = False,
        **bn: Any,
    ) -> None:
        super().__init__()
        hid, act = spec.exp_chs, spec.act or act
        expand_act = "linear" if linear_expansion else act
        self.expand = (
            ConvBNAct(spec.in_chs, hid, 1, 1, 1, expand_act, **bn) if hid != spec.in_chs else None
        )
        groups = 1 if full_conv else hid
        self.dw = ConvBNAct(hid, hid, spec.kernel, spec.stride, groups, act, **bn)
        self.se = SqueezeExcite(hid, spec.se_chs) if spec.se_chs else None
        self.project = ConvBNAct(hid, spec.out_chs, 1, 1, 1, project_act, **bn)
        self.bottleneck_shortcut = (
            shortcut == "bottleneck" and spec.stride == 1 and spec.in_chs == spec.out_chs
        )
        self.expansion_shortcut = shortcut == "expansion" and spec.stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x
        d = self.dw(h)
        if self.se is not None:
            d = self.se(d)
        if self.expansion_shortcut:
            d = d + h
        out = self.project(d)
        if self.bottleneck_shortcut:
            out = out + x
        return out


class MobileNet(nn.Module):
    """stem -> blocks -> head (V2/V3's 1x1 conv) -> global average pool -> [pre-logits: V3's
    1x1 conv with bias and hard-swish, on the pooled vector] -> dropout -> classifier."""

    def __init__(
        self,
        config: ModelConfig,
        stem: nn.Module,
        blocks: Sequence[nn.Module],
        head: nn.Module | None,
        num_features: int,
        pre_logits: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.head = head if head is not None else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.pre_logits = pre_logits
        self.dropout = nn.Dropout(config.drop_rate)
        self.classifier = nn.Linear(num_features, config.num_classes)
        self.num_features = num_features
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.forward_features(x)))
        if self.pre_logits is not None:
            x = self.pre_logits(x)
        return self.classifier(self.dropout(x))


def _init_weights(model: nn.Module) -> None:
    # torchvision's MobileNetV2 initialisation.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:  # squeeze-excite's convs (torchvision's V3 initialisation)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _divisible(c: float, alpha: float) -> int:
    """V2/V3 width rule: every channel count ``c * alpha`` rounded by :func:`make_divisible`."""
    return make_divisible(c * alpha)


@dataclass(frozen=True)
class Family:
    """A MobileNet family as data: its table, stem, head and channel rounding."""

    rows: tuple[Row, ...]
    stem: int
    round: Callable[[float, float], int]  # (c, alpha) -> channels: V1's rule or make_divisible
    scale_stem: bool = True
    stem_act: str | None = None  # None: the config's activation
    head: int | None = None  # the last 1x1 conv's channels (V2), kept when alpha < 1
    head_expansion: int = 0  # or the last 1x1 conv as a multiple of the last width (V3)
    pre_logits: int | None = None  # V3's 1x1 conv on the pooled vector, kept when alpha < 1


FAMILIES: dict[str, Family] = {
    "mobilenet_v1": Family(MOBILENET_V1_ROWS, MOBILENET_V1_STEM, v1_channels),
    "mobilenet_v2": Family(
        MOBILENET_V2_ROWS, MOBILENET_V2_STEM, _divisible, head=MOBILENET_V2_HEAD
    ),
    **{
        name: Family(
            rows,
            MOBILENET_V3_STEM,
            _divisible,
            scale_stem=False,
            stem_act="hswish",
            head_expansion=MOBILENET_V3_HEAD_EXPANSION,
            pre_logits=MOBILENET_V3_PRE_LOGITS[name],
        )
        for name, rows in (
            ("mobilenet_v3_large", MOBILENET_V3_LARGE_ROWS),
            ("mobilenet_v3_small", MOBILENET_V3_SMALL_ROWS),
        )
    },
}


def _row_spec(row: Row, cfg: ModelConfig, in_chs: int, out: int, stride: int) -> BlockSpec:
    """The BlockSpec of one block of ``row`` (V3's minimal variant: ReLU, 3x3, no SE)."""
    if row.kind == "ds":
        return BlockSpec("ds" if cfg.conv_type == "separable" else "conv", in_chs, out, stride)
    exp = in_chs if row.exp == 1 else make_divisible(in_chs * row.exp)
    kernel, act = (3, "relu") if cfg.minimal and row.act else (row.kernel, row.act)
    se = make_divisible(exp * row.se) if row.se and not cfg.minimal else 0
    return BlockSpec("ir", in_chs, out, stride, exp, kernel, se, act)


def block_specs(cfg: ModelConfig) -> tuple[int, list[BlockSpec], int | None]:
    """Expand the family's table for ``cfg`` into (stem channels, block specs, head channels).

    ``small_input`` makes the stem and the first stride-2 block stride 1 (total stride 8)."""
    fam, a = FAMILIES[cfg.name], cfg.width_mult
    stem = fam.round(fam.stem, a) if fam.scale_stem else fam.stem
    specs: list[BlockSpec] = []
    in_chs, first_s2 = stem, cfg.small_input
    for row in fam.rows:
        out = fam.round(row.out, a)
        for i in range(row.repeat):
            stride = row.stride if i == 0 else 1
            if first_s2 and stride == 2:
                stride, first_s2 = 1, False
            specs.append(_row_spec(row, cfg, in_chs, out, stride))
            in_chs = out
    head = None
    if fam.head is not None:  # V2 keeps 1280 channels when alpha < 1 (V2 paper, Sec. 5.1)
        head = make_divisible(fam.head * a) if a > 1.0 else fam.head
    elif fam.head_expansion:
        head = make_divisible(in_chs * fam.head_expansion)
    return stem, specs, head


def _pre_logits(fam: Family, cfg: ModelConfig, chs: int) -> tuple[nn.Module | None, int]:
    """V3's last 1x1 conv with bias on the pooled vector (as a Linear) and its activation;
    its width is kept when alpha <= 1 (Keras, timm)."""
    if fam.pre_logits is None:
        return None, chs
    width = (
        make_divisible(fam.pre_logits * cfg.width_mult) if cfg.width_mult > 1 else fam.pre_logits
    )
    act = "relu" if cfg.minimal else "hswish"
    return nn.Sequential(OrderedDict(fc=nn.Linear(chs, width), act=_act(act))), width


def build_mobilenet(cfg: ModelConfig) -> MobileNet:
    """The one builder: turn a config (and its family's table) into a :class:`MobileNet`."""
    bn = {"bn_eps": cfg.bn_eps, "bn_momentum": cfg.bn_momentum, "padding": cfg.padding}
    fam, act = FAMILIES[cfg.name], cfg.activation
    if fam.stem_act is not None:  # V3: hard-swish outside the ReLU blocks, ReLU if minimal
        act = "relu" if cfg.minimal else fam.stem_act
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
                InvertedResidual(
                    spec,
                    act,
                    cfg.bottleneck_activation,
                    cfg.shortcut,
                    full_conv=cfg.conv_type == "full",
                    linear_expansion=cfg.expansion_activation == "linear",
                    **bn,
                )
            )
    last = specs[-1].out_chs
    head = None
    if head_chs is not None:
        head = ConvBNAct(last, head_chs, 1, 1, 1, act, **bn)
        last = head_chs
    pre_logits, last = _pre_logits(fam, cfg, last)
    return MobileNet(cfg, stem, blocks, head, last, pre_logits)


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
