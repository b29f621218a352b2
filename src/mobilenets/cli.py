"""The ``mobilenets`` command. Each concern module registers its own subcommand.

Bad arguments exit with code 2; a missing or bad input file and other runtime failures exit with
code 1; each with a one-line message (``MOBILENETS_DEBUG=1`` prints the full traceback instead).
Ctrl-C exits with 130, a closed output pipe (``| head``) quietly.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import traceback
import warnings
from collections.abc import Sequence

from .errors import MobilenetsError, UsageError

# (subcommand, module that defines ``register(subparsers)``); modules import lazily.
COMMANDS: list[tuple[str, str]] = [
    ("summary", "mobilenets.summary"),
    ("compare", "mobilenets.compare"),
    ("train", "mobilenets.train"),
    ("eval", "mobilenets.evaluation"),
    ("export", "mobilenets.export"),
    ("predict", "mobilenets.predict"),
    ("bench", "mobilenets.bench"),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"mobilenets: error: {message}\n")


MAX_WIDTH_MULT = 4.0


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


def usable_cpus() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


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


# The options add_model_args defines, and their "not given" values.
MODEL_OPTIONS = {
    "width_mult": None,
    "resolution": None,
    "small_input": False,
    "in_chans": None,
    "num_classes": None,
    "activation": None,
}
MOBILENET_ONLY = ("width_mult", "activation")


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


def add_model_args(p: argparse.ArgumentParser, name_positional: bool = False) -> None:
    """The model options shared by summary, train and bench (``--width`` is ``width_mult``)."""
    from .config import MODEL_NAMES

    if name_positional:
        p.add_argument("name", metavar="NAME", help=f"one of {', '.join(MODEL_NAMES)}")
    p.add_argument(
        "--width",
        dest="width_mult",
        type=width_mult,
        default=None,
        help=f"width multiplier alpha in (0, {MAX_WIDTH_MULT:g}] (MobileNets; default 1)",
    )
    p.add_argument("--resolution", type=int_at_least(1), default=None, help="input size in px")
    p.add_argument("--small-input", action="store_true", help="total stride 8 for 28-64 px data")
    p.add_argument("--in-chans", type=int_at_least(1), default=None)
    p.add_argument("--num-classes", type=int_at_least(1), default=None)
    p.add_argument(
        "--activation", choices=("relu", "relu6"), default=None, help="MobileNets (default relu6)"
    )


def _flag(option: str) -> str:
    return "--width" if option == "width_mult" else "--" + option.replace("_", "-")


def given_model_options(args: argparse.Namespace) -> list[str]:
    """The add_model_args flags given on the command line."""
    return [
        _flag(k) for k, unset in MODEL_OPTIONS.items() if getattr(args, k, unset) not in (unset,)
    ]


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
    from .models import create_model

    kw = dict(defaults)
    for key, attr in (
        ("resolution", "resolution"),
        ("in_chans", "in_chans"),
        ("num_classes", "num_classes"),
    ):
        if getattr(args, attr, None) is not None:
            kw[key] = getattr(args, attr)
    kw.setdefault("resolution", 224)
    opts = {"small_input": args.small_input or kw.pop("small_input", False)}
    if name in ("mobilenet_v1", "mobilenet_v2"):
        opts["width_mult"] = args.width_mult if args.width_mult is not None else 1.0
        opts["activation"] = args.activation or "relu6"
    else:
        given = [_flag(k) for k in MOBILENET_ONLY if getattr(args, k, None) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} apply only to MobileNets, not to {name}")
    return create_model(name, **kw, **opts)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mobilenets", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for _, module in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                continue  # not built yet
            raise
        mod.register(sub)
    return parser


def _version() -> str:
    from . import __version__

    return f"mobilenets {__version__}"


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"mobilenets: warning: {message}", file=sys.stderr)


def debug() -> bool:
    """``MOBILENETS_DEBUG=1``: errors print their full traceback."""
    return os.environ.get("MOBILENETS_DEBUG", "") not in ("", "0")


def _fail(message: str, code: int) -> int:
    if debug():
        traceback.print_exc()
    print(f"mobilenets: error: {message}", file=sys.stderr)
    return code


def _quiet_broken_pipe() -> int:
    """The reader of stdout went away (``| head``): stop quietly, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no real file (tests capture it)
        pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv``; returns the exit code."""
    warnings.showwarning = _one_line_warning
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # argparse: a usage error (2), --help or --version (0)
            return e.code if isinstance(e.code, int) else 2
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except UsageError as e:
        return _fail(str(e), 2)
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except (MobilenetsError, OSError) as e:  # OSError: unreadable or unwritable files
        return _fail(str(e), 1)
    except KeyboardInterrupt:
        if debug():
            traceback.print_exc()
        print("mobilenets: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return _fail(
            f"unexpected {type(e).__name__}: {first} (MOBILENETS_DEBUG=1 shows the traceback)", 1
        )
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
