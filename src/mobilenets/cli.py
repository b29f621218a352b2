"""The ``mobilenets`` command. Each concern module registers its own subcommand.

Bad arguments exit with code 2 and runtime failures with code 1, each with a one-line message.
"""

from __future__ import annotations

import argparse
import importlib
import sys
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
    ("codegen", "mobilenets.micro.codegen"),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"mobilenets: error: {message}\n")


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
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


def add_model_args(p: argparse.ArgumentParser, name_positional: bool = False) -> None:
    """The model options shared by summary, train and bench."""
    from .config import MODEL_NAMES

    if name_positional:
        p.add_argument("name", metavar="NAME", help=f"one of {', '.join(MODEL_NAMES)}")
    p.add_argument("--width", type=positive_float, default=1.0, help="width multiplier alpha")
    p.add_argument("--resolution", type=int_at_least(1), default=None, help="input size in px")
    p.add_argument("--small-input", action="store_true", help="total stride 8 for 28-64 px data")
    p.add_argument("--in-chans", type=int_at_least(1), default=None)
    p.add_argument("--num-classes", type=int_at_least(1), default=None)
    p.add_argument("--activation", choices=("relu", "relu6"), default="relu6")
    p.add_argument(
        "--padding",
        choices=("symmetric", "same"),
        default="symmetric",
        help="MobileNets: symmetric (PyTorch, default) or same (TensorFlow SAME: exports to "
        ".tflite without PAD ops, less TFLite Micro arena)",
    )


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
        opts["width_mult"] = args.width
        opts["activation"] = args.activation
        opts["padding"] = getattr(args, "padding", "symmetric")
    elif getattr(args, "padding", "symmetric") != "symmetric":
        raise UsageError(f"--padding same applies to MobileNets only, not {name}")
    elif args.width != 1.0:
        raise UsageError(f"--width does not apply to {name}")
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


def main(argv: Sequence[str] | None = None) -> int:
    warnings.showwarning = _one_line_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except UsageError as e:
        print(f"mobilenets: error: {e}", file=sys.stderr)
        return 2
    except MobilenetsError as e:
        print(f"mobilenets: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # unreadable or unwritable files named by the user
        print(f"mobilenets: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mobilenets: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
