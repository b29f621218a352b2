"""``mobilenets summary``: the per-layer cost table and totals of one model."""

from __future__ import annotations

from .profiling import WEIGHT_KINDS, Report

_SHOWN = (*WEIGHT_KINDS, "pool", "add")


def format_report(rep: Report, int8: dict | None = None) -> str:
    """A readable per-layer table (conv/linear/pool/add rows; BN and activations run in place).

    ``int8``: the planned int8 memory (:func:`planned_int8`); adds the column of bytes live in
    the arena while each op runs, and the planned peak (``MN_ARENA_BYTES`` of ``codegen``).
    """
    live = (int8 or {}).get("live_bytes", {})
    head = f"{'layer':<28} {'kind':<10} {'input':>16} {'output':>16} {'params':>11} {'MACs':>14}"
    head += f" {'int8 live':>10}"
    lines = [head, "-" * len(head)]
    for row in rep.layers:
        if row["kind"] not in _SHOWN:
            continue
        shape_in = "x".join(map(str, row["in_shape"]))
        shape_out = "x".join(map(str, row["out_shape"]))
        planned = live.get(row["name"])
        lines.append(
            f"{row['name'][:28]:<28} {row['kind']:<10} {shape_in:>16} {shape_out:>16} "
            f"{row['params']:>11,} {row['macs']:>14,} "
            + (f"{planned:>10,}" if planned is not None else f"{'-':>10}")
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
    if int8 and int8.get("arena_bytes"):
        lines.append(
            f"  planned int8 peak: {int8['arena_bytes']:,} B arena (row bands; peak at "
            f"{int8['peak_op']}), {int8['layer_by_layer_bytes']:,} B layer by layer"
        )
    elif int8:
        lines.append(f"  planned int8 peak: n/a ({int8.get('reason')})")
    lines.append("  share by layer kind (conv/FC weights, as V1 paper Table 2): MACs / params")
    for kind, k in rep.by_kind.items():
        lines.append(
            f"    {kind:<10} {100 * k['macs_share']:6.2f}% / {100 * k['params_share']:6.2f}%"
        )
    return "\n".join(lines)


# Planning lowers the model with one real forward pass for its shapes: above this many
# activation elements (16 MiB int8) no microcontroller could hold the model, so it is skipped.
PLAN_MAX_ACTIVATION_ELEMS = 16 * 2**20


def planned_int8(model, rep: Report | None = None) -> dict:
    """The C generator's static int8 memory plan of ``model`` (see ``micro.planner``)."""
    from .errors import MobilenetsError
    from .micro.planner import plan_model

    if rep is not None and rep.peak_activation_elems > PLAN_MAX_ACTIVATION_ELEMS:
        return {"arena_bytes": None, "reason": "over 16 MiB of int8 activations: not planned"}
    try:
        plan = plan_model(model)
    except MobilenetsError as e:  # baselines: max pooling is not planned
        return {"arena_bytes": None, "reason": str(e)}
    live: dict[str, int] = {}
    for s in plan.stages:
        live[s.op.name] = max(live.get(s.op.name, 0), plan.stage_live_bytes[s.index])
    return {
        "arena_bytes": plan.arena_bytes,
        "peak_op": plan.peak_op,
        "layer_by_layer_bytes": plan.layer_by_layer_bytes,
        "live_bytes": live,
    }
