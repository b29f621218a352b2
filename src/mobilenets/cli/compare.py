"""``mobilenets compare``: V1 vs V2 vs ResNet-50 vs VGG16, and the alpha x rho grids."""

from __future__ import annotations

import argparse
import json

from ..compare import collect, format_compare


def run(args: argparse.Namespace) -> int:
    d = collect()
    print(json.dumps(d) if args.json else format_compare(d))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="V1 vs V2 vs ResNet-50 vs VGG16, and the alpha x rho grids")
    p.add_argument("--json", action="store_true", help="print the tables as JSON")
    p.set_defaults(func=run)
