"""The argparse pieces shared by the commands: number types, the model flags generated from
:class:`~mobilenets.config.ModelConfig`, and the data, device and runtime options."""

from __future__ import annotations

import argparse
import math

from ..config import (  # noqa: F401 - re-exported
    APPLIES_TO,
    BASELINES,
    MAX_WIDTH_MULT,
    MOBILENET_ONLY,
    model_flag,
)
from ..env import usable_cpus
from ..errors import UsageError


def _finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def positive_float(text: str) -> float:
    """A finite number > 0 (argparse type)."""
    v = _finite_float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def float_range(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    """An argparse type accepting finite numbers in [lo, hi] (open ends when asked).

    E.g. ``float_range(0, 1, hi_open=True)`` for a label smoothing or an EMA decay in [0, 1).
    """

    def parse(text: str) -> float:
        v = _finite_float(text)
        if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return v

    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    parse.__name__ = f"number in {interval}"
    return parse


def width_mult(text: str) -> float:
    """The width multiplier alpha: a number in (0, MAX_WIDTH_MULT]."""
    return float_range(0, MAX_WIDTH_MULT, lo_open=True)(text)


def thread_count(text: str) -> int:
    """An intra-op thread count: 1 .. the usable cores (more segfaults or hangs onnxruntime)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    n = usable_cpus()
    if not 1 <= v <= n:
        raise argparse.ArgumentTypeError(f"must be in 1..{n} (the usable CPU cores), got {v}")
    return v


def int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    parse.__name__ = f"integer >= {lo}"
    return parse


def int_range(lo: int, hi: int):
    """An argparse type accepting integers in lo..hi."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be in {lo}..{hi}, got {v}")
        return v

    parse.__name__ = f"integer in {lo}..{hi}"
    return parse


# Help text per ModelConfig field; a field without one still gets a flag.
MODEL_HELP = {
    "width_mult": f"width multiplier alpha in (0, {MAX_WIDTH_MULT:g}] (MobileNets; default 1)",
    "resolution": "input size in px",
    "num_classes": "output classes",
    "in_chans": "input channels",
    "small_input": "total stride 8 (not 32) for 28-64 px data",
    "activation": "MobileNets (default relu6)",
    "bn_eps": "BatchNorm epsilon",
    "bn_momentum": "BatchNorm running-statistics momentum (PyTorch's convention)",
    "drop_rate": "dropout before the classifier, in [0, 1)",
    "conv_type": "MobileNetV1: depthwise separable or full convolutions (paper Table 4); "
    "MobileNetV2: the block's 3x3 depthwise or a standard 3x3 over the expanded channels",
    "bottleneck_activation": "MobileNetV2: linear bottlenecks or ReLU6 (paper Fig. 6a)",
    "expansion_activation": "MobileNetV2: the expansion 1x1 conv keeps the model's activation "
    "(nonlinear, default) or has none (linear)",
    "shortcut": "MobileNetV2: shortcut between bottlenecks, expansions or none (paper Fig. 6b)",
    "minimal": "MobileNetV3: the minimalistic variant (ReLU, 3x3 kernels, no squeeze-excite)",
}


def model_options() -> list[str]:
    """The ModelConfig fields that are flags: all but ``name`` and ``schema_version``."""
    import dataclasses

    from ..config import ModelConfig

    return [
        f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("name", "schema_version")
    ]


def _model_option_type(option: str, default) -> dict:
    """argparse keywords for one ModelConfig field, from its default and its choices."""
    from ..config import _CHOICES

    if option in _CHOICES:
        return {"choices": _CHOICES[option]}
    if isinstance(default, bool):
        return {"action": argparse.BooleanOptionalAction}
    special = {
        "width_mult": width_mult,
        "drop_rate": float_range(0, 1, hi_open=True),
        "bn_momentum": float_range(0, 1),
    }
    if option in special:
        return {"type": special[option]}
    if isinstance(default, int):
        return {"type": int_at_least(1)}
    if isinstance(default, float):
        return {"type": positive_float}
    return {"type": str}


def add_model_args(
    p: argparse.ArgumentParser, name_positional: bool = False, name_flag: bool = False
) -> None:
    """One flag per :class:`ModelConfig` field, generated from the fields so the two cannot drift.

    The flag is the field name with dashes (``width_mult`` is ``--width``; ``name`` is the
    positional NAME or ``--model``); booleans get ``--x/--no-x``; the schema version is no
    flag. Every flag defaults to None ("not given"), so commands can tell given options apart.
    """
    import dataclasses

    from ..config import MODEL_NAMES, ModelConfig

    if name_positional:
        p.add_argument("name", metavar="NAME", help=f"one of {', '.join(MODEL_NAMES)}")
    if name_flag:
        p.add_argument("--model", required=True, choices=MODEL_NAMES)
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    for option in model_options():
        p.add_argument(
            model_flag(option),
            dest=option,
            default=None,
            help=MODEL_HELP.get(option, f"ModelConfig.{option} (default {defaults[option]})"),
            **_model_option_type(option, defaults[option]),
        )


def given_model_args(args: argparse.Namespace) -> dict:
    """The ModelConfig fields given on the command line, as ``{field: value}``."""
    return {k: getattr(args, k) for k in model_options() if getattr(args, k, None) is not None}


def given_model_options(args: argparse.Namespace) -> list[str]:
    """The add_model_args flags given on the command line."""
    return [model_flag(k) for k in given_model_args(args)]


def refuse_model_options(args: argparse.Namespace, why: str) -> None:
    """UsageError naming the model options given where they do not apply (``why``)."""
    given = given_model_options(args)
    if given:
        raise UsageError(f"{', '.join(given)} do(es) not apply to {why}")


def add_data_args(
    p: argparse.ArgumentParser,
    *,
    required: bool = False,
    flag: str = "--data",
    help: str = "fashion-mnist | cifar10:PATH | cifar100:PATH | imagefolder:PATH",
    workers: bool = True,
    workers_default: int = 0,
    skip_bad_images: bool = True,
) -> None:
    """The dataset options: ``--data SPEC``, ``--data-dir``, ``--workers``, ``--skip-bad-images``."""
    p.add_argument(flag, required=required, metavar="SPEC", help=help)
    p.add_argument("--data-dir", metavar="DIR", help="where the dataset's files are")
    if workers:
        p.add_argument(
            "--workers",
            type=int_at_least(0),
            default=workers_default,
            help=f"DataLoader workers (ImageFolder; default {workers_default})",
        )
    if skip_bad_images:
        p.add_argument(
            "--skip-bad-images", action="store_true", help="skip undecodable images, count them"
        )


def device_name(text: str) -> str:
    """``cpu`` or ``cuda`` (refused when no CUDA device is available)."""
    if text not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"choose from cpu, cuda, got {text!r}")
    if text == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError("cuda: no CUDA device is available")
    return text


def add_device_args(p: argparse.ArgumentParser) -> None:
    """``--device cpu|cuda`` (default: cuda when available)."""
    p.add_argument(
        "--device", type=device_name, default=None, help="cpu or cuda (default: cuda if available)"
    )


def add_runtime_args(p: argparse.ArgumentParser, *, spin: bool = True) -> None:
    """onnxruntime options: ``--threads N`` (1..usable cores) and ``--spin/--no-spin``."""
    p.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        help=f"intra-op threads, 1..{usable_cpus()} (default: all usable cores)",
    )
    if spin:
        p.add_argument(
            "--spin",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="onnxruntime threads busy-wait between ops (fastest on an idle machine); "
            "--no-spin on a busy or shared machine",
        )


def add_batch_size_arg(p: argparse.ArgumentParser, default: int) -> None:
    """``--batch-size N`` (N >= 1)."""
    p.add_argument("--batch-size", type=int_at_least(1), default=default, metavar="N")


def model_from_args(args: argparse.Namespace, name: str, **defaults):
    """create_model from the shared options; ``defaults`` fill the options left unset."""
    from ..factory import create_model

    given = given_model_args(args)
    wrong = [model_flag(k) for k, models in APPLIES_TO.items() if k in given and name not in models]
    if wrong and name in BASELINES:
        raise UsageError(f"{', '.join(wrong)} apply only to MobileNets, not to {name}")
    if wrong:
        raise UsageError(f"{', '.join(wrong)} do(es) not apply to {name}")
    kw = {**defaults, **given}
    kw.setdefault("resolution", 224)
    return create_model(name, **kw)
