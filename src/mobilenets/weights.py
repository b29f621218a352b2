"""Load pretrained weights from torchvision, timm or mobilenets into a mobilenets model.

The file's layout is detected from its key names and each key is renamed by the explicit
tables below (never by zipping two key orders):

=============================  ===============================================================
layout                         saved from
=============================  ===============================================================
``mobilenets``                 our own state dicts and checkpoint folders
``timm_mobilenetv1``           timm ``mobilenetv1_100``, ``mobilenetv1_125`` (any plain width)
``timm_mobilenetv2``           timm ``mobilenetv2_035/050/075/100/140`` (any plain width)
``torchvision_mobilenet_v2``   torchvision ``mobilenet_v2`` (any ``width_mult``)
``timm_mobilenetv3``           timm ``mobilenetv3_large_075/100``, ``mobilenetv3_small_050/075/100``
                               and the ``tf_`` ports (with ``padding="same"``, ``bn_eps=1e-3``)
``torchvision_mobilenet_v3``   torchvision ``mobilenet_v3_large``/``_small`` (``bn_eps=1e-3``)
``torchvision_resnet50``       torchvision ``resnet50`` (the ``resnet50`` baseline)
``torchvision_vgg16``          torchvision ``vgg16`` (the ``vgg16`` baseline)
=============================  ===============================================================

timm's ``mobilenetv1_100h`` (an extra 1x1 head conv) and ``mobilenetv2_110d``/``120d``
(deeper stages, unscaled stem and head) have no counterpart here and are refused.

What the source networks compute (timm 1.0 ``_gen_mobilenet_v1``/``_gen_mobilenet_v2``,
torchvision ``MobileNetV2``): ReLU6 after every conv except V2's linear projection,
BatchNorm eps 1e-5, symmetric ``k // 2`` padding, and timm's V1 blocks are ``dsa`` blocks,
which have no skip connection (as in the paper and in our V1). These are our defaults. A
model built with another ``activation``, ``bn_eps``, ``conv_type``, ``bottleneck_activation``,
``expansion_activation`` or ``shortcut`` would not reproduce the source's logits, so loading is refused with a message
naming the ``create_model`` option to use (for a mobilenets checkpoint folder, the options
in its ``config.json``). ``small_input=True`` only changes strides: the weights load, with a
warning that the logits differ from the source's (a normal start for fine-tuning).

Files are ``.safetensors`` or torch files loaded with ``weights_only=True``: a file that
pickles Python objects (e.g. a timm training checkpoint with its ``args``) is refused; save its
``state_dict`` alone. Containers are unwrapped, preferring the EMA weights as timm does:
``state_dict_ema``, ``model_ema``, ``state_dict``, ``model``; a DDP ``module.`` (or
``torch.compile`` ``_orig_mod.``) prefix is stripped.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint
from .config import APPLIES_TO, MOBILENETS
from .errors import MobilenetsError

# timm EfficientNet-style keys: conv_stem/bn1, blocks.{stage}.{index}.*, conv_head/bn2, classifier.
TIMM_TOP = {
    "conv_stem": "stem.conv",
    "bn1": "stem.bn",
    "conv_head": "head.conv",
    "bn2": "head.bn",
    "classifier": "classifier",
}
TIMM_BLOCK = re.compile(r"blocks\.(\d+)\.(\d+)\.([\w.]+)")
TIMM_V1_DS = {"conv_dw": "dw.conv", "bn1": "dw.bn", "conv_pw": "pw.conv", "bn2": "pw.bn"}
# V2's first block (t = 1) is a timm DepthwiseSeparableConv; its pointwise conv is our projection.
TIMM_V2_DS = {"conv_dw": "dw.conv", "bn1": "dw.bn", "conv_pw": "project.conv", "bn2": "project.bn"}
TIMM_V2_IR = {
    "conv_pw": "expand.conv",
    "bn1": "expand.bn",
    "conv_dw": "dw.conv",
    "bn2": "dw.bn",
    "conv_pwl": "project.conv",
    "bn3": "project.bn",
}
TIMM_SE = {"se.conv_reduce": "se.conv_reduce", "se.conv_expand": "se.conv_expand"}
# V3's first block is a DepthwiseSeparableConv (Small's with squeeze-excite), the others
# InvertedResiduals with squeeze-excite, the last stage one ConvBnAct: our head.
TIMM_V3_DS = {**TIMM_V2_DS, **TIMM_SE}
TIMM_V3_IR = {**TIMM_V2_IR, **TIMM_SE}
TIMM_V3_CN = {"conv": "head.conv", "bn1": "head.bn"}
# V3's conv_head is the 1x1 conv with bias on the pooled vector: our pre_logits.fc.
TIMM_V3_TOP = {**TIMM_TOP, "conv_head": "pre_logits.fc"}
TIMM_DEPTHS = {"timm_mobilenetv1": (1, 2, 2, 6, 2), "timm_mobilenetv2": (1, 2, 3, 4, 3, 3, 1)}
TIMM_V3_FAMILY = {
    (1, 2, 3, 4, 2, 3, 1): "mobilenet_v3_large",
    (1, 2, 3, 2, 3, 1): "mobilenet_v3_small",
}

# torchvision MobileNetV2: features.0 stem, features.1..N-1 blocks, features.N head, classifier.1.
TV_TOP = {"features.0.0": "stem.conv", "features.0.1": "stem.bn", "classifier.1": "classifier"}
TV_BLOCK = re.compile(r"features\.(\d+)\.(.+)")
TV_T1 = {
    "conv.0.0": "dw.conv",
    "conv.0.1": "dw.bn",
    "conv.1": "project.conv",
    "conv.2": "project.bn",
}
TV_IR = {
    "conv.0.0": "expand.conv",
    "conv.0.1": "expand.bn",
    "conv.1.0": "dw.conv",
    "conv.1.1": "dw.bn",
    "conv.2": "project.conv",
    "conv.3": "project.bn",
}
TV_HEAD = {"0": "head.conv", "1": "head.bn"}
# torchvision MobileNetV3: features.0 stem, features.i.block.j blocks (their conv layers in
# order: [expand], depthwise, projection; squeeze-excite as fc1/fc2), the last feature the head,
# classifier.0 the pre-logits Linear and classifier.3 the classifier.
TV3_TOP = {**TV_TOP, "classifier.0": "pre_logits.fc", "classifier.3": "classifier"}
TV3_BLOCK = re.compile(r"features\.(\d+)\.block\.(\d+)\.(.+)")
TV3_SE = {"fc1": "se.conv_reduce", "fc2": "se.conv_expand"}
TV3_FAMILY = {16: "mobilenet_v3_large", 12: "mobilenet_v3_small"}  # index of the head feature

# Which model each layout fits, and the options its source network was trained with.
FAMILY = {
    "timm_mobilenetv1": "mobilenet_v1",
    "timm_mobilenetv2": "mobilenet_v2",
    "torchvision_mobilenet_v2": "mobilenet_v2",
    "torchvision_resnet50": "resnet50",
    # V3 layouts: the family follows from the stage depths / feature count (_v3_family)
    "torchvision_vgg16": "vgg16",
}
SOURCE_OPTIONS = {
    "activation": "relu6",
    "bn_eps": 1e-5,
    "conv_type": "separable",
    "bottleneck_activation": "linear",
    "expansion_activation": "nonlinear",
    "shortcut": "bottleneck",
}
# Where a layout's source network differs from SOURCE_OPTIONS (torchvision's V3 uses
# BatchNorm2d(eps=0.001)); None: not known from the file (timm's V3 files of its own models use
# eps 1e-5, its tf_ ports 1e-3 with SAME padding, under the same key names).
LAYOUT_OPTIONS = {
    "torchvision_mobilenet_v3": {"bn_eps": 1e-3},
    "timm_mobilenetv3": {"bn_eps": None},
}
STEM = {
    **{name: "stem.conv.weight" for name in MOBILENETS},
    "resnet50": "conv1.weight",
    "vgg16": "features.0.weight",
}
CLASSIFIER = {
    **{name: "classifier" for name in MOBILENETS},
    "resnet50": "fc",
    "vgg16": "classifier.6",
}
CONTAINERS = ("state_dict_ema", "model_ema", "state_dict", "model")
PREFIXES = ("module.", "_orig_mod.")


def load_pretrained(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a torchvision, timm or mobilenets weights file (or checkpoint folder) into ``model``.

    Args:
        model: a model from :func:`mobilenets.create_model` (it needs ``model.config``).
        path: a ``.safetensors`` or torch state_dict file, or a mobilenets checkpoint folder.

    Returns:
        ``{"layout": str, "reinitialised": [model keys], "adapted": [model keys]}``.

    A classifier whose class count differs is re-initialised and a stem whose input channel
    count differs is adapted (RGB filters summed for 1 channel, else repeated cyclically and
    scaled by 3/C, as timm's ``adapt_input_conv``); each with a warning. Any other difference
    raises :class:`MobilenetsError` naming the first offending key (and both shapes).
    """
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise MobilenetsError("load_pretrained needs a model built by mobilenets.create_model")
    sd, saved_cfg = _read(path)
    layout = "mobilenets" if saved_cfg is not None else _detect(sd, path)
    if saved_cfg is not None:
        family = saved_cfg.get("name")
    else:
        family = FAMILY.get(layout) or _v3_family(layout, sd) or _our_family(sd)
    if family != cfg.name:
        raise MobilenetsError(
            f"{path}: {layout} weights are for {family}, but the model is {cfg.name}"
        )
    _check_options(cfg, layout, saved_cfg, path)
    mapped, origin = _rename(sd, _renamer(layout, sd), layout, path)
    return _load(model, mapped, origin, layout, path)


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Stem filters for ``in_chans`` inputs: summed for 1, else repeated cyclically * C_src / C."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    src = weight.shape[1]
    return weight.repeat(1, math.ceil(in_chans / src), 1, 1)[:, :in_chans] * (src / in_chans)


def _read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The file's state dict, plus the model config when it is a mobilenets checkpoint folder."""
    p = Path(path)
    if not p.exists():
        raise MobilenetsError(f"pretrained weights not found: {path}")
    names = (checkpoint.WEIGHTS, checkpoint.CONFIG, checkpoint.TRAINING_STATE)
    if p.is_dir() or (p.name in names and (p.parent / checkpoint.CONFIG).is_file()):
        folder = checkpoint.resolve(p)
        return _load_safetensors(folder / checkpoint.WEIGHTS), checkpoint.read_info(folder)["model"]
    if p.suffix == ".safetensors":
        return _load_safetensors(p), None
    return _unwrap(checkpoint.safe_torch_load(p), path), None


def _load_safetensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(p)
    except Exception as e:  # safetensors raises its own error types
        raise MobilenetsError(f"{p}: unreadable safetensors file ({e})") from None


def _unwrap(obj: Any, path: str | Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, dict) and not (
        obj and all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        inner = next((obj[k] for k in CONTAINERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise MobilenetsError(f"{path}: no state dict found (top-level keys: {list(obj)[:6]})")
        obj = inner
    if not isinstance(obj, dict):
        raise MobilenetsError(f"{path}: expected a state dict, found a {type(obj).__name__}")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def _our_family(sd: dict[str, torch.Tensor]) -> str:
    """The family of a bare mobilenets state dict, from its keys."""
    if "pre_logits.fc.weight" in sd:
        n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        return "mobilenet_v3_large" if n_blocks == 15 else "mobilenet_v3_small"
    return "mobilenet_v2" if "head.conv.weight" in sd else "mobilenet_v1"


def _v3_family(layout: str, sd: dict[str, torch.Tensor]) -> str | None:
    """mobilenet_v3_large or _small for a V3 layout (stage depths / feature count), else None."""
    if layout == "timm_mobilenetv3":
        return TIMM_V3_FAMILY.get(_timm_depths(sd))
    if layout == "torchvision_mobilenet_v3":
        return TV3_FAMILY.get(max(int(m[1]) for k in sd if (m := TV_BLOCK.match(k))))
    return None


def _detect(sd: dict[str, torch.Tensor], path: str | Path) -> str:
    """The layout's name, from key names; unsupported timm variants are refused here."""
    if "stem.conv.weight" in sd:
        return "mobilenets"
    if "conv_stem.weight" in sd and "conv_head.bias" in sd:  # V3: a head conv with bias
        if _timm_depths(sd) not in TIMM_V3_FAMILY:
            raise MobilenetsError(
                f"{path}: timm_mobilenetv3 layout with stage depths {_timm_depths(sd)} (e.g. "
                "mobilenetv3_rw or _150d) is not supported; only the paper's Large and Small"
            )
        return "timm_mobilenetv3"
    if "features.1.block.0.0.weight" in sd:
        if _v3_family("torchvision_mobilenet_v3", sd) is None:
            raise MobilenetsError(f"{path}: torchvision MobileNetV3 layout of unknown depth")
        return "torchvision_mobilenet_v3"
    if "conv_stem.weight" in sd:
        layout = "timm_mobilenetv2" if any(".conv_pwl." in k for k in sd) else "timm_mobilenetv1"
        depths = _timm_depths(sd)
        if layout == "timm_mobilenetv1" and "conv_head.weight" in sd:
            raise MobilenetsError(
                f"{path}: timm_mobilenetv1 layout with a head conv (conv_head, e.g. "
                "mobilenetv1_100h) is not supported; use mobilenetv1_100 or mobilenetv1_125"
            )
        if depths != TIMM_DEPTHS[layout]:
            raise MobilenetsError(
                f"{path}: {layout} layout with stage depths {depths} (a timm depth variant such "
                f"as mobilenetv2_110d?) is not supported; only the paper's {TIMM_DEPTHS[layout]}"
            )
        return layout
    if "features.0.0.weight" in sd and "features.1.conv.0.0.weight" in sd:
        return "torchvision_mobilenet_v2"
    if "conv1.weight" in sd and "layer1.0.conv1.weight" in sd:
        if "layer1.0.conv3.weight" not in sd:  # basic blocks: resnet18/34, not bottlenecks
            depth = "resnet18" if "layer3.2.conv1.weight" not in sd else "resnet34"
            raise MobilenetsError(
                f"{path}: torchvision {depth} weights (basic blocks); only resnet50 "
                "(bottleneck blocks) is a baseline here"
            )
        return "torchvision_resnet50"
    if "features.0.weight" in sd and "classifier.6.weight" in sd:
        return "torchvision_vgg16"
    raise MobilenetsError(
        f"{path}: unrecognised weights layout (first key {next(iter(sd), None)!r}); expected a "
        "torchvision or timm MobileNet V1/V2/V3, torchvision resnet50/vgg16 or mobilenets state dict"
    )


def _timm_depths(sd: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """Blocks per stage, from ``blocks.{stage}.{index}`` keys."""
    depth: dict[int, int] = {}
    for k in sd:
        if m := TIMM_BLOCK.match(k):
            depth[int(m[1])] = max(depth.get(int(m[1]), 0), int(m[2]) + 1)
    return tuple(depth[s] for s in sorted(depth))


def _timm_v3_renamer(sd: dict[str, torch.Tensor]) -> Callable[[str], str | None]:
    """timm V3: stages of blocks, the last stage (one ConvBnAct) our head."""
    depths = _timm_depths(sd)
    offsets = [sum(depths[:s]) for s in range(len(depths))]

    def timm_v3(module: str) -> str | None:
        b = TIMM_BLOCK.fullmatch(module)
        if b is None:
            return TIMM_V3_TOP.get(module)
        stage, index, sub = int(b[1]), int(b[2]), b[3]
        if stage == len(depths) - 1:
            return TIMM_V3_CN.get(sub)
        table = TIMM_V3_IR if f"blocks.{stage}.{index}.conv_pwl.weight" in sd else TIMM_V3_DS
        return f"blocks.{offsets[stage] + index}.{table[sub]}" if sub in table else None

    return timm_v3


def _tv3_renamer(sd: dict[str, torch.Tensor]) -> Callable[[str], str | None]:
    """torchvision V3: features.i.block.j; a block's conv layers in order are [expand,] dw,
    project (its squeeze-excite is fc1/fc2), the last feature our head."""
    last = max(int(m[1]) for k in sd if (m := TV_BLOCK.match(k)))

    def convs(i: int) -> dict[str, str]:
        js = sorted({int(m[2]) for k in sd if (m := TV3_BLOCK.match(k)) and int(m[1]) == i})
        names = [j for j in js if f"features.{i}.block.{j}.0.weight" in sd]
        roles = ["expand", "dw", "project"][3 - len(names) :]
        return dict(zip([str(j) for j in names], roles, strict=True))

    def tv3(module: str) -> str | None:
        if module in TV3_TOP:
            return TV3_TOP[module]
        if (f := TV_BLOCK.fullmatch(module)) and int(f[1]) == last:
            return TV_HEAD.get(f[2])
        b = TV3_BLOCK.fullmatch(module)
        if b is None:
            return None
        i, j, sub = int(b[1]), b[2], b[3]
        if sub in TV3_SE:
            return f"blocks.{i - 1}.{TV3_SE[sub]}"
        role = convs(i).get(j)
        kind = {"0": "conv", "1": "bn"}.get(sub)
        return f"blocks.{i - 1}.{role}.{kind}" if role and kind else None

    return tv3


def _renamer(layout: str, sd: dict[str, torch.Tensor]) -> Callable[[str], str | None]:
    """A function from the file's module path to ours (None: no counterpart)."""
    if layout == "timm_mobilenetv3":
        return _timm_v3_renamer(sd)
    if layout == "torchvision_mobilenet_v3":
        return _tv3_renamer(sd)
    if layout.startswith("timm_"):
        depths = _timm_depths(sd)
        offsets = [sum(depths[:s]) for s in range(len(depths))]

        def timm(module: str) -> str | None:
            b = TIMM_BLOCK.fullmatch(module)
            if b is None:
                return TIMM_TOP.get(module)
            stage, index, sub = int(b[1]), int(b[2]), b[3]
            if layout == "timm_mobilenetv1":
                table = TIMM_V1_DS
            elif f"blocks.{stage}.{index}.conv_pwl.weight" in sd:
                table = TIMM_V2_IR
            else:
                table = TIMM_V2_DS
            return f"blocks.{offsets[stage] + index}.{table[sub]}" if sub in table else None

        return timm
    if layout == "torchvision_mobilenet_v2":
        last = max(int(m[1]) for k in sd if (m := TV_BLOCK.match(k)))

        def tv(module: str) -> str | None:
            if module in TV_TOP:
                return TV_TOP[module]
            f = TV_BLOCK.fullmatch(module)
            if f is None:
                return None
            i, sub = int(f[1]), f[2]
            if i == last:
                return TV_HEAD.get(sub)
            table = TV_IR if f"features.{i}.conv.3.weight" in sd else TV_T1
            return f"blocks.{i - 1}.{table[sub]}" if sub in table else None

        return tv
    return lambda module: module  # mobilenets and torchvision baselines: our names already


def _rename(
    sd: dict[str, torch.Tensor], rename: Callable[[str], str | None], layout: str, path: str | Path
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    mapped, origin = {}, {}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        ours = rename(module)
        if ours is None:
            raise MobilenetsError(f"{path}: unexpected key {key!r} for the {layout} layout")
        mapped[f"{ours}.{param}"], origin[f"{ours}.{param}"] = value, key
    return mapped, origin


def _check_options(cfg: Any, layout: str, saved: dict[str, Any] | None, path: str | Path) -> None:
    """Refuse model options that would change the source's logits; warn for small_input."""
    if layout == "mobilenets" and saved is None:
        return  # a bare state dict of ours does not say how it was built
    want = saved
    if want is None:
        want = {"small_input": False, **SOURCE_OPTIONS, **LAYOUT_OPTIONS.get(layout, {})}
    for field in SOURCE_OPTIONS:
        if cfg.name not in APPLIES_TO.get(field, (cfg.name,)):
            continue  # e.g. activation: V3 fixes its own per block
        if want.get(field) is not None and getattr(cfg, field) != want[field]:
            raise MobilenetsError(
                f"{path}: {layout} weights need {field}={want[field]!r} (the model has "
                f"{getattr(cfg, field)!r}); use create_model({cfg.name!r}, {field}={want[field]!r}, ...)"
            )
    if cfg.small_input != want.get("small_input", False):
        warnings.warn(
            f"{path}: the {layout} weights were trained with small_input={want.get('small_input')}"
            f" and the model has small_input={cfg.small_input}: its logits will differ from the"
            " source's (fine for fine-tuning)",
            stacklevel=3,
        )


def _load(
    model: nn.Module,
    mapped: dict[str, torch.Tensor],
    origin: dict[str, str],
    layout: str,
    path: str | Path,
) -> dict[str, Any]:
    name = model.config.name
    stem, classifier = STEM[name], CLASSIFIER[name] + "."
    new, reinit, adapted = {}, [], []
    for key, ours in model.state_dict().items():
        theirs = mapped.get(key)
        if key.startswith(classifier) and (
            theirs is None
            or (theirs.shape[0] != ours.shape[0] and theirs.shape[1:] == ours.shape[1:])
        ):
            new[key] = (
                torch.zeros_like(ours) if key.endswith("bias") else torch.randn_like(ours) * 0.01
            )
            reinit.append(key)
            continue
        if theirs is None:
            if key.endswith("num_batches_tracked"):
                new[key] = ours
                continue
            raise MobilenetsError(f"{path}: missing key {key!r} in the {layout} weights")
        if ours.is_floating_point() and not theirs.is_floating_point():
            raise MobilenetsError(
                f"{path}: {origin[key]!r} holds {str(theirs.dtype).removeprefix('torch.')} "
                "values; weights must be floating point"
            )
        src = tuple(theirs.shape)
        if theirs.dim() == 4 and ours.dim() == 2 and src[2:] == (1, 1):
            theirs = theirs.flatten(1)  # a 1x1 conv's filters as a Linear's (timm's V3 head)
        in_chans_only = src[:1] + src[2:] == tuple(ours.shape[:1] + ours.shape[2:])
        if key == stem and src != ours.shape and in_chans_only:  # (out, in, k, k): in differs
            theirs = adapt_input_conv(theirs, ours.shape[1])
            adapted.append(key)
        if theirs.shape != ours.shape:
            raise MobilenetsError(
                f"{path}: shape mismatch at {key!r} (file key {origin[key]!r}): file {src} vs "
                f"model {tuple(ours.shape)} (saved at another width_mult or architecture?)"
            )
        new[key] = theirs
    extra = next((k for k in mapped if k not in new), None)
    if extra is not None:
        raise MobilenetsError(f"{path}: unexpected key {origin[extra]!r} in the {layout} weights")
    model.load_state_dict(new)
    if reinit:
        warnings.warn(
            f"{path}: classifier re-initialised for fine-tuning ({', '.join(reinit)}; the file has "
            f"{_classes(mapped, classifier)} classes, the model {model.config.num_classes})",
            stacklevel=3,
        )
    if adapted:
        chans = model.config.in_chans
        how = "RGB filters summed" if chans == 1 else "filters repeated cyclically and rescaled"
        warnings.warn(f"{path}: {stem} adapted to in_chans={chans} ({how})", stacklevel=3)
    return {"layout": layout, "reinitialised": reinit, "adapted": adapted}


def _classes(mapped: dict[str, torch.Tensor], classifier: str) -> int | str:
    w = mapped.get(classifier + "weight")
    return w.shape[0] if w is not None else "no"
