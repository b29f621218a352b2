"""``mobilenets summary``: the per-layer cost table of a model."""

from __future__ import annotations

import argparse
import json

from ..summary import format_report, planned_int8


def run(args: argparse.Namespace) -> int:
    from ..profiling import profile
    from .args import model_from_args

    model = model_from_args(args, args.name)
    rep = profile(model)
    int8 = planned_int8(model, rep)
    if args.json:
        d = rep.to_dict()
        d["planned_int8_peak_bytes"] = int8["arena_bytes"]
        d["planned_int8_live_bytes"] = int8.get("live_bytes")
        print(json.dumps(d))
    else:
        print(format_report(rep, int8))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from .args import add_model_args

    p = sub.add_parser("summary", help="per-layer params, MACs and activation memory of a model")
    add_model_args(p, name_positional=True)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)
