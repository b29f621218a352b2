"""The ``mobilenets`` command. Each concern module registers its own subcommand.

Bad arguments exit with code 2; a missing or bad input file and other runtime failures exit with
code 1; each with a one-line message (``MOBILENETS_DEBUG=1`` prints the full traceback instead).
Ctrl-C exits with 130, a closed output pipe (``| head``) quietly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Sequence

from ..errors import MobilenetsError, UsageError

# (subcommand, module that defines ``register(subparsers)``); modules import lazily.
COMMANDS: list[tuple[str, str]] = [
    ("summary", "mobilenets.cli.summary"),
    ("compare", "mobilenets.cli.compare"),
    ("train", "mobilenets.cli.train"),
    ("eval", "mobilenets.cli.eval"),
    ("export", "mobilenets.cli.export"),
    ("predict", "mobilenets.cli.predict"),
    ("bench", "mobilenets.cli.bench"),
    ("codegen", "mobilenets.cli.codegen"),
    ("study", "mobilenets.cli.study"),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"mobilenets: error: {message}\n")


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
    from .._version import __version__

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
