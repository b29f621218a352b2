"""Every ``mobilenets`` command in the README's ```bash blocks runs as written after the Quick start.

Each command line is parsed by the real argument parser (``mobilenets.cli.build_parser()``;
nothing is executed), and each path under ``runs/`` that it reads must be a run folder that
``scripts/demo.sh`` (the Quick start) or an earlier README command's ``--out`` creates.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from mobilenets.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PROGRAMS = ("mobilenets", ".venv/bin/mobilenets")


def bash_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, body) of each ```bash block, indented ones (in lists) included."""
    blocks = []
    for m in re.finditer(r"^( *)```bash\n(.*?)^\1```", text, re.M | re.S):
        line = text.count("\n", 0, m.start()) + 2
        body = "\n".join(ln[len(m.group(1)) :] for ln in m.group(2).splitlines())
        blocks.append((line, body))
    return blocks


def mobilenets_argv(command: str) -> list[str] | None:
    """The arguments after ``mobilenets`` / ``.venv/bin/mobilenets`` / ``python -m mobilenets``
    (also ``torchrun ... -m mobilenets``) in one shell command, or None for other commands."""
    words = shlex.split(command, comments=True)
    for i, w in enumerate(words):
        if w in PROGRAMS and i == 0:
            return words[1:]
        if w == "-m" and words[i + 1 : i + 2] == ["mobilenets"]:
            return words[i + 2 :]
    return None


def readme_commands() -> list[tuple[int, list[str]]]:
    """(README line, argv) of every mobilenets command, in README order; ``&&``, ``;`` and
    pipes split a line into commands, a trailing backslash joins lines."""
    out = []
    for first, body in bash_blocks(README.read_text()):
        joined = re.sub(r"\\\n", " ", body)
        for n, line in enumerate(joined.splitlines()):
            for part in re.split(r"&&|;|\|", line.split(" #")[0]):
                argv = mobilenets_argv(part)
                if argv is not None:
                    out.append((first + n, argv))
    return out


def demo_out() -> str:
    """The run folder ``scripts/demo.sh`` writes by default (``out="${1:-runs/demo}"``)."""
    m = re.search(r'out="\$\{1:-([^}]+)\}"', (ROOT / "scripts" / "demo.sh").read_text())
    assert m, "scripts/demo.sh no longer names its default run folder"
    return m.group(1)


COMMANDS = readme_commands()


def test_readme_has_mobilenets_commands_to_check():
    commands = {argv[0] for _, argv in COMMANDS}
    assert {"train", "eval", "export", "predict", "codegen", "study"} <= commands


@pytest.mark.parametrize("argv", [a for _, a in COMMANDS], ids=[f"L{n}" for n, _ in COMMANDS])
def test_readme_command_parses_with_the_real_parser(argv):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"mobilenets {shlex.join(argv)}: exit {e.code}: {err.getvalue().strip()}")
    assert args.command == argv[0]


def test_readme_commands_read_only_run_folders_made_before_them():
    """``runs/X/...`` an argument reads must come from the Quick start or an earlier --out."""
    made = {demo_out()}
    wrong = []
    for line, argv in COMMANDS:
        outs = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out"}
        for a in argv:
            if a.startswith("runs/") and a not in outs:
                folder = "/".join(Path(a).parts[:2])
                if folder not in made:
                    wrong.append(f"README line {line}: {a} (made so far: {sorted(made)})")
        made |= {o for o in outs if o.startswith("runs/")}
    assert not wrong, "\n".join(wrong)
