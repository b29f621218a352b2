"""``mobilenets summary``: the per-layer cost table and totals of one model."""

from __future__ import annotations

import argparse
import json

from .profiling import WEIGHT_KINDS, Report

_SHOWN = (*WEIGHT_KINDS, "pool", "add")


def format_report(rep: Report) -> str:
    """A readable per-layer table (conv/linear/pool/add rows; BN and activations run in place)."""
    head = f"{'layer':<28} {'kind':<10} {'input':>16} {'output':>16} {'params':>11} {'MACs':>14}"
    lines = [head, "-" * len(head)]
    for row in rep.layers:
        if row["kind"] not in _SHOWN:
            continue
        shape_in = "x".join(map(str, row["in_shape"]))
        shape_out = "x".join(map(str, row["out_shape"]))
        lines.append(
            f"{row['name'][:28]:<28} {row['kind']:<10} {shape_in:>16} {shape_out:>16} "
            f"{row['params']:>11,} {row['macs']:>14,}"
        )
    lines.append("-" * len(head))
    lines.append(f"{rep.model} at {rep.resolution}x{rep.resolution}x{rep.in_chans}")
    lines.append(
        f"  params: {rep.params:,} ({rep.params / 1e6:.2f} M, {rep.params * 4 / 2**20:.1f} MiB fp32)"
    )
    lines.append(f"  MACs:   {rep.macs:,} ({rep.macs / 1e6:.1f} M)")
    lines.append(f"  largest tensor: {rep.largest_tensor_elems:,} elements")
    lines.append(
        f"  peak activations: {rep.peak_activation_elems:,} elements "
        f"({rep.peak_activation_elems / 1024:.0f} KiB int8, {rep.peak_activation_elems * 4 / 2**20:.2f} MiB fp32)"
    )
    lines.append("  share by layer kind (conv/FC weights, as V1 paper Table 2): MACs / params")
    for kind, k in rep.by_kind.items():
        lines.append(
            f"    {kind:<10} {100 * k['macs_share']:6.2f}% / {100 * k['params_share']:6.2f}%"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .cli import model_from_args
    from .profiling import profile

    model = model_from_args(args, args.name)
    rep = profile(model)
    print(json.dumps(rep.to_dict()) if args.json else format_report(rep))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from .cli import add_model_args

    p = sub.add_parser("summary", help="per-layer params, MACs and activation memory of a model")
    add_model_args(p, name_positional=True)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)
