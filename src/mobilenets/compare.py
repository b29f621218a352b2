"""``mobilenets compare``: V1, V2, V3, ResNet-50 and VGG16 side by side, and the alpha x rho grids,
with the papers' published figures beside ours."""

from __future__ import annotations

from typing import Any

from . import published as pub
from .factory import create_model
from .profiling import profile

V1_WIDTHS = (1.0, 0.75, 0.5, 0.25)
V1_RESOLUTIONS = (224, 192, 160, 128)
V2_WIDTHS = (1.4, 1.3, 1.0, 0.75, 0.5, 0.35)
V2_RESOLUTIONS = (224, 192, 160, 128, 96)


def baselines() -> list[dict[str, Any]]:
    """The seed comparison at 224 px: ours and the published params, MACs and top-1."""
    rows = []
    for name, (p_params, p_macs, top1, src) in pub.BASELINES.items():
        rep = profile(create_model(name))
        rows.append(
            {
                "model": name,
                "params": rep.params,
                "macs": rep.macs,
                "weights_mb_fp32": rep.params * 4 / 1e6,
                "largest_tensor_elems": rep.largest_tensor_elems,
                "peak_activation_elems": rep.peak_activation_elems,
                "published": {
                    "params_m": p_params,
                    "macs_m": p_macs,
                    "top1": top1,
                    "source": pub.SOURCES[src],
                },
            }
        )
    return rows


def grid(name: str) -> list[dict[str, Any]]:
    """Our MACs/params over the alpha x rho grid of ``name``, beside the published tables."""
    v1 = name == "mobilenet_v1"
    rows = []
    for a in V1_WIDTHS if v1 else V2_WIDTHS:
        model = create_model(name, width_mult=a)
        for r in V1_RESOLUTIONS if v1 else V2_RESOLUTIONS:
            slim = (pub.V1_SLIM if v1 else pub.V2_SLIM).get((a, r))
            if slim is None:
                continue
            rep = profile(model, resolution=r)
            row = {
                "width": a,
                "resolution": r,
                "rho": r / 224,
                "macs": rep.macs,
                "params": rep.params,
                "slim_macs_m": slim[0],
                "slim_params_m": (pub.V1_SLIM_PARAMS if v1 else pub.V2_SLIM_PARAMS)[a],
                "slim_top1": slim[1],
            }
            if v1 and (a, r) in pub.V1_PAPER:
                row["paper_macs_m"], row["paper_params_m"], row["paper_top1"] = pub.V1_PAPER[(a, r)]
            rows.append(row)
    return rows


def v3_table() -> list[dict[str, Any]]:
    """Our MobileNetV3 MACs/params at 224 px beside the paper's Table 3 and the TF-slim table."""
    rows = []
    for name, a, minimal in pub.V3_SLIM:
        rep = profile(create_model(name, width_mult=a, minimal=minimal))
        paper = pub.V3_PAPER.get((name, a)) if not minimal else None
        slim = pub.V3_SLIM[(name, a, minimal)]
        row = {"model": name, "width": a, "minimal": minimal, "macs": rep.macs}
        row.update(params=rep.params, slim_macs_m=slim[0], slim_params_m=slim[1], slim_top1=slim[2])
        if paper is not None:
            row.update(paper_macs_m=paper[0], paper_params_m=paper[1], paper_top1=paper[2])
        rows.append(row)
    return rows


def collect() -> dict[str, Any]:
    return {
        "baselines": baselines(),
        "mobilenet_v1_grid": grid("mobilenet_v1"),
        "mobilenet_v2_grid": grid("mobilenet_v2"),
        "mobilenet_v3": v3_table(),
        "sources": pub.SOURCES,
    }


def format_compare(d: dict[str, Any]) -> str:
    out = [
        "At 224x224 (ours | published):",
        f"{'model':<19} {'params M':>17} {'MACs M':>19} {'fp32 MB':>8} {'largest act.':>13} {'top-1':>6}",
    ]
    for r in d["baselines"]:
        p = r["published"]
        out.append(
            f"{r['model']:<19} {r['params'] / 1e6:>8.2f} | {p['params_m']:<6.2f} {r['macs'] / 1e6:>8.1f} | {p['macs_m']:<8} "
            f"{r['weights_mb_fp32']:>8.1f} {r['largest_tensor_elems']:>13,} {p['top1']:>6}"
        )
    for name, key, srcs in (
        ("MobileNetV1", "mobilenet_v1_grid", "paper = V1 Tables 6/7, slim = TF-slim checkpoints"),
        ("MobileNetV2", "mobilenet_v2_grid", "slim = TF-slim checkpoints"),
    ):
        out += ["", f"{name} alpha x rho grid ({srcs}):"]
        out.append(
            f"{'alpha':>5} {'res':>4} {'MACs M':>8} {'slim':>5} {'paper':>5} {'params M':>9} {'slim':>5} {'slim top-1':>10}"
        )
        for r in d[key]:
            paper = r.get("paper_macs_m", "")
            out.append(
                f"{r['width']:>5} {r['resolution']:>4} {r['macs'] / 1e6:>8.1f} {r['slim_macs_m']:>5} {paper!s:>5} "
                f"{r['params'] / 1e6:>9.2f} {r['slim_params_m']:>5} {r['slim_top1']:>10}"
            )
    out += ["", "MobileNetV3 at 224 px (paper = V3 Table 3, slim = TF-slim/Keras checkpoints):"]
    out.append(
        f"{'model':<19} {'alpha':>5} {'min':>3} {'MACs M':>8} {'paper':>5} {'slim':>5} "
        f"{'params M':>9} {'paper':>5} {'slim':>5} {'paper top-1':>11}"
    )
    for r in d["mobilenet_v3"]:
        out.append(
            f"{r['model']:<19} {r['width']:>5} {'yes' if r['minimal'] else 'no':>3} "
            f"{r['macs'] / 1e6:>8.1f} {r.get('paper_macs_m', '')!s:>5} {r['slim_macs_m']:>5} "
            f"{r['params'] / 1e6:>9.2f} {r.get('paper_params_m', '')!s:>5} {r['slim_params_m']:>5} "
            f"{r.get('paper_top1', '')!s:>11}"
        )
    out += ["", "Sources:"] + [f"  {k}: {v}" for k, v in d["sources"].items()]
    return "\n".join(out)
