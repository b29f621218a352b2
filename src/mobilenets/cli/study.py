"""``mobilenets study``: measure the MobileNet claims and write report.html."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from ..errors import UsageError
from ..study.run import run_study


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``study`` subcommand."""
    from ..study.cells import PRESETS
    from .args import int_at_least

    p = subparsers.add_parser(
        "study",
        help="measure the MobileNet claims; write report.html",
        description="Train the study's cells, measure cost and latency, and write a report "
        "with a verdict per claim (study.json, study.csv, plots, report.html).",
    )
    p.add_argument("--data", default="fashion-mnist", metavar="SPEC")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--preset", choices=PRESETS, default="quick")
    p.add_argument("--epochs", type=int_at_least(1))
    p.add_argument("--seeds", type=int_at_least(1), help="seeds of the cells a verdict orders")
    p.add_argument("--jobs", type=int_at_least(1), default=1, help="cells trained in parallel")
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument(
        "--val-split",
        type=int_at_least(0),
        metavar="N",
        help="training images held out for selection (default: quick 2000, paper 5000; 0: none)",
    )
    p.add_argument("--plan", action="store_true", help="print the cells as train commands")
    p.add_argument("--estimate", action="store_true", help="with --plan: time per cell")
    p.add_argument("--report", action="store_true", help="train nothing; build the report")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.estimate and not args.plan:
        raise UsageError("--estimate goes with --plan")
    if args.plan and args.report:
        raise UsageError("--plan and --report exclude each other")
    result = run_study(
        args.data, args.out, args.preset, args.epochs, args.seeds, args.jobs, args.device,
        args.plan, args.estimate, args.report, val_split=args.val_split,
    )  # fmt: skip
    if not args.plan:
        print(json.dumps(result["summary"], indent=1))
        print(f"report: {shlex.quote(str(Path(args.out) / 'report.html'))}")
    return 0
