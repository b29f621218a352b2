"""The study's outputs: ``study.json``, ``study.csv``, plots (PNG and SVG) and ``report.html``.

``report.html`` is one self-contained file: plots are embedded as data URIs and nothing is
fetched from the network. Every figure cell of a table carries ``data-values`` (the raw numbers)
and ``data-sources`` (the files, or ``profile(KEY)``, they were copied from).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from pathlib import Path
from typing import Any

from ..atomic import replace
from ..atomic import write_text as _write_atomic
from .claims import NOT_MEASURED, Evidence, Num, Section, all_sections
from .measure import write_json

VERDICT_COLORS = {"supported": "#1a7f37", "contradicted": "#cf222e", "inconclusive": "#9a6700"}


def _cell_json(x: Any) -> Any:
    return x.to_dict() if isinstance(x, Num) else x


def section_dict(s: Section) -> dict[str, Any]:
    return {
        "key": s.key,
        "title": s.title,
        "claim": s.claim,
        "verdict": s.verdict,
        "aspects": [{"aspect": a, "verdict": v, "why": w} for a, v, w in s.aspects],
        "side": [{"aspect": a, "verdict": v, "why": w} for a, v, w in s.side],
        "paper": [{"what": a, "figure": b} for a, b in s.paper],
        "columns": s.columns,
        "rows": [[_cell_json(x) for x in row] for row in s.rows],
        "notes": s.notes,
    }


def _environment(ev: Evidence) -> dict[str, Any]:
    import onnxruntime

    from ..env import hardware, versions

    return {
        "hardware": hardware(),
        "versions": {**versions(), "onnxruntime": onnxruntime.__version__},
    }


def write_report(ev: Evidence, out: Path) -> dict[str, Any]:
    """Write every output of the study into ``out``; returns what study.json holds."""
    sections = all_sections(ev)
    study = {
        "preset": ev.grid.preset,
        "data": ev.grid.training.data,
        **ev.grid.to_dict(out),
        **_environment(ev),
        "variants": {k: {"config": _config(ev, k), **c} for k, c in ev.costs.items()},
        "summaries": ev.summaries,
        "latency": ev.latencies,
        "degradation": ev.degradation,
        "collapse": {k: v for k, v in ev.collapse.items() if k in ("seeds", "points", "rows")},
        "blocks": ev.blocks,
        "structure": ev.structure,
        "memory": ev.memory,
        "budget": ev.budget,
        "timing": ev.timing,
        "sections": [section_dict(s) for s in sections],
        "summary": [
            {"claim": s.title, "verdict": s.verdict, "aspects": len(s.aspects)} for s in sections
        ]
        + [{"claim": c, "verdict": "not measurable here", "why": why} for c, why in NOT_MEASURED],
    }
    write_json(out / "study.json", study)
    _write_csv(out / "study.csv", sections)
    images = _plots(ev, sections, out / "plots")
    _write_atomic(out / "report.html", render_html(study, sections, images))
    return study


def _config(ev: Evidence, key: str) -> dict[str, Any]:
    from .cells import cost_only, imagenet_shape

    extra = cost_only(ev.grid)
    for vs in [*ev.grid.sections.values(), list(ev.grid.degradation.values()), extra]:
        for v in vs:
            for x in (v, imagenet_shape(v)):
                if x.key == key:
                    return x.config(ev.num_classes, ev.in_chans).to_dict()
    raise KeyError(key)


def _write_csv(path: Path, sections: list[Section]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["section", "row", "column", "value", "text", "sources"])
    for s in sections:
        for row in s.rows:
            for col, x in zip(s.columns[1:], row[1:], strict=False):
                if isinstance(x, Num):
                    w.writerow([s.key, row[0], col, x.mean, x.text(), " ".join(x.sources)])
                else:
                    w.writerow([s.key, row[0], col, x, x, ""])
    _write_atomic(path, buf.getvalue())


# ---------------------------------------------------------------- plots


def _plots(ev: Evidence, sections: list[Section], folder: Path) -> dict[str, str]:
    """Draw every section's plots as PNG and SVG; returns name -> PNG data URI."""
    from ..plots import _pyplot

    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    uris = {}
    for s in sections:
        for spec in s.plots:
            fig = DRAW[spec["kind"]](plt, spec, ev)
            for ext in ("png", "svg"):
                tmp = folder / f".{spec['name']}.tmp.{ext}"
                fig.savefig(tmp, dpi=110, bbox_inches="tight")
                replace(tmp, folder / f"{spec['name']}.{ext}")
            plt.close(fig)
            data = (folder / f"{spec['name']}.png").read_bytes()
            uris[spec["name"]] = "data:image/png;base64," + base64.b64encode(data).decode()
    return uris


def _spaced(xs: list[float], min_decades: float = 0.085) -> list[float]:
    """Tick positions from ``xs`` (sorted) at least ``min_decades`` apart on a log axis, the
    largest kept: their labels never overlap."""
    import math

    kept = [xs[-1]]
    for x in reversed(xs[:-1]):
        if math.log10(kept[-1] / x) >= min_decades:
            kept.append(x)
    return sorted(kept)


def _draw_loglog(plt, spec, ev):
    import numpy as np
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(6, 4))
    styles = ("o-", "s--", "^-", "v--", "D-", "x--")  # distinct markers: no series hides another
    for i, s in enumerate(spec["series"]):
        if "(published)" in s["label"]:  # the paper's points: grey, overlaid
            ax.loglog(s["x"], s["y"], "x:" if "params" in s["label"] else "+:", color="0.45",
                      ms=8, label=f"{s['label']} (slope {s['slope']:.2f})")  # fmt: skip
            continue
        ax.loglog(
            s["x"], s["y"], styles[i % len(styles)], ms=7 - i, mfc="none" if i % 2 else None,
            label=f"{s['label']} (slope {s['slope']:.2f})",
        )  # fmt: skip
    xs = sorted({x for s in spec["series"] for x in s["x"]})
    x = np.array([xs[0], xs[-1]])
    ax.loglog(x, (x / x.max()) ** 2, "k:", lw=1, label="slope 2")
    ax.xaxis.set_major_locator(FixedLocator(_spaced(xs)))  # real α / pixel values, no 3×10⁻¹
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set(title=spec["title"], xlabel=spec["xlabel"], ylabel=spec["ylabel"])
    ax.legend(fontsize=7)
    return fig


def _draw_bars(plt, spec, ev):
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, b in enumerate(spec["bars"]):
        vals = b["values"]
        if vals:
            ax.bar(i, np.mean(vals), yerr=np.std(vals, ddof=1) if len(vals) > 1 else 0, capsize=4)
            ax.plot([i] * len(vals), vals, "k.", ms=4, label="one seed" if i == 0 else None)
    ax.set_xticks(range(len(spec["bars"])), [b["label"] for b in spec["bars"]], fontsize=7)
    ax.set(title=spec["title"] + " (bars: mean ± std over seeds)", ylabel=spec["ylabel"])
    if any(b["values"] for b in spec["bars"]):
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def _draw_layers(plt, spec, ev):
    """One panel per model (its own ReLU-layer axis), one line of points per seed."""
    n = max(1, len(spec["series"]))
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], spec["series"], strict=False):
        for i, ys in enumerate(s["seeds"]):
            ax.plot(range(1, len(ys) + 1), ys, "o-", ms=3, lw=0.8, alpha=0.8, label=f"seed {i}")
        ax.set_title(f"{s['name']}\n{s['label']}", fontsize=8)
        ax.set_xlabel("ReLU layer (this model)", fontsize=8)
        top = max((max(ys) for ys in s["seeds"] if ys), default=0.0)
        ax.set_ylim(0, max(1.0, 1.1 * top))  # counts: never below 0
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel(spec["ylabel"], fontsize=8)
    fig.suptitle(spec["title"], fontsize=9, y=1.04)
    fig.tight_layout()
    return fig


def _draw_curves(plt, spec, ev):
    """Per-epoch accuracy: one colour per variant, a thin line per seed, the mean bold."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, s in enumerate(spec["series"]):
        color = f"C{i}"
        for ys in s["seeds"]:
            ax.plot(range(1, len(ys) + 1), ys, "-", color=color, lw=0.6, alpha=0.5)
        full = [ys for ys in s["seeds"] if ys]
        if full:
            n = min(len(ys) for ys in full)
            mean = np.mean([ys[:n] for ys in full], axis=0)
            ax.plot(range(1, n + 1), mean, "o-", color=color, lw=1.8, ms=3, label=s["label"])
    ax.set(title=spec["title"] + " (thin: one seed; bold: mean)", ylabel=spec["ylabel"])
    ax.set_xlabel("epoch")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def _draw_collapse(plt, spec, ev):
    c = ev.collapse
    outs = c["outputs"]
    fig, axes = plt.subplots(1, len(outs) + 1, figsize=(2.2 * (len(outs) + 1), 2.4))
    panels = [("input", c["input"])] + [(f"n = {n}", y) for n, y in outs.items()]
    for ax, (name, xy) in zip(axes, panels, strict=True):
        ax.scatter(xy[0], xy[1], c=range(xy.shape[1]), s=2, cmap="viridis")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", "datalim")
    fig.suptitle(spec["title"], fontsize=9, y=1.04)  # above the panels' titles
    return fig


DRAW = {
    "loglog": _draw_loglog,
    "bars": _draw_bars,
    "layers": _draw_layers,
    "collapse": _draw_collapse,
    "curves": _draw_curves,
}


# ---------------------------------------------------------------- HTML

CSS = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1f2328}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left}
th{background:#f6f8fa}.v{font-weight:600;color:#fff;padding:1px 6px;border-radius:4px}
img{max-width:100%;border:1px solid #d0d7de;margin:.4em 0}.note{color:#59636e;font-size:13px}
"""


def _verdict(v: str) -> str:
    return f'<span class="v" style="background:{VERDICT_COLORS[v]}">{v}</span>'


def _colour(table: str) -> str:
    """Verdict cells as coloured labels."""
    for v in VERDICT_COLORS:
        table = table.replace(f"<td>{v}</td>", f"<td>{_verdict(v)}</td>")
    return table


UNITS_NOTE = (
    "Units: KiB = 1024 bytes, MiB = 2^20 bytes; the papers' KB and MB are quoted as printed. "
    "Hover a figure for the file or profile() it was copied from."
)


def _td(x: Any) -> str:
    if isinstance(x, Num):
        vals, srcs = html.escape(json.dumps(x.values)), html.escape(json.dumps(x.sources))
        title = html.escape(" ".join(x.sources), quote=True)
        return (
            f"<td data-values='{vals}' data-sources='{srcs}' title=\"{title}\">"
            f"{html.escape(x.text())}</td>"
        )
    if isinstance(x, float):
        return f"<td data-values='[{x!r}]'>{x:.4g}</td>"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"<td data-values='[{x}]'>{x:,}</td>"
    return f"<td>{html.escape(str(x))}</td>"


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_td(x) for x in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


SOURCE_NAMES = {
    "profile": "mobilenets.profile() of each model",
    "cells": "each cell's summary.json",
    "latency": "latency/MODEL.json (mobilenets.bench)",
    "degradation": "degradation/CELL.json (dead_channels)",
    "collapse": "study.collapse.relu_collapse()",
    "memory.json": "memory.json (mobilenets.micro.planner)",
}


def _footnote(rows: list[list[Any]]) -> str:
    """The sources of a table's figures, visible under it (files and profile() calls)."""
    kinds = {
        re.split(r"[/(:]", src)[0]
        for r in rows
        for x in r
        if isinstance(x, Num)
        for src in x.sources
    }
    if not kinds:
        return ""
    names = ", ".join(SOURCE_NAMES.get(k, k) for k in sorted(kinds))
    return f'<p class="note source">Sources: {html.escape(names)}.</p>'


def accuracy_label(budget: dict[str, Any]) -> str:
    """The accuracy columns' heading: the budget each accuracy was trained with."""
    if not budget:
        return "test top-1"
    if budget["early"]:
        return f"test top-1, early training ({budget['steps']:,} steps)"
    return f"test top-1 ({budget['epochs']} epochs)"


def budget_text(budget: dict[str, Any]) -> str:
    """One line: training budget, test-set size and noise floor."""
    if not budget:
        return ""
    early = "early training: " if budget["early"] else ""
    return (
        f"Budget: {early}{budget['epochs']} epoch(s) on {budget['train_images']:,} training "
        f"images, batch {budget['batch_size']} ({budget['steps']:,} steps); accuracies on "
        f"{budget['test_images']:,} test images, noise floor ±{budget['noise_floor_pp']:.1f} pp "
        f"(binomial standard error of one accuracy at 50%)." + _selection_text(budget)
    )


def _selection_text(budget: dict[str, Any]) -> str:
    """`` Selection: N validation images ...; <lr rule>.`` (empty for older studies)."""
    if "lr_rule" not in budget:
        return ""
    val = budget.get("val_images") or 0
    where = f"{val:,} validation images held out of training" if val else "no validation split"
    return f" Selection: {where}; {budget['lr_rule']}."


def _section_html(s: Section, images: dict[str, str], budget: dict[str, Any]) -> str:
    acc = accuracy_label(budget)
    columns = [acc if c == "test top-1" else c for c in s.columns]
    parts = [
        f'<section id="{s.key}"><h2>{html.escape(s.title)} {_verdict(s.verdict)}</h2>',
        f"<p><b>Claim.</b> {html.escape(s.claim)}</p>",
        "<h3>The paper's figures</h3>",
        _table(["what", "figure"], [list(p) for p in s.paper]),
        "<h3>Our measurement</h3>",
        _table(columns, s.rows),
        _footnote(s.rows),
    ]
    if "test top-1" in s.columns and budget:
        parts.append(f'<p class="note budget">{html.escape(budget_text(budget))}</p>')
    parts += [f'<img alt="{p["name"]}" src="{images[p["name"]]}">' for p in s.plots]
    parts.append("<h3>Verdict (the claim as the source states it)</h3>")
    parts.append(_colour(_table(["aspect", "verdict", "why"], [list(a) for a in s.aspects])))
    if s.side:
        parts.append("<h3>Side aspects (listed; they do not change the verdict)</h3>")
        parts.append(_colour(_table(["aspect", "verdict", "why"], [list(a) for a in s.side])))
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in s.notes]
    return "\n".join(parts) + "</section>"


def _timing_note(t: dict[str, Any]) -> str:
    """Where the time went (cells: as recorded when each was trained)."""
    cells = t.get("cells", {})
    if not cells:
        return ""
    wall = sum(c["wall_s"] for c in cells.values())
    cpu = sum(c["cpu_s"] for c in cells.values())
    text = f". Time: {len(cells)} cells {wall:.0f} s wall / {cpu:.0f} s CPU in all"
    stages = [
        f"{name} {t[key]:.0f} s wall"
        for name, key in (("latency", "latency_wall_s"), ("dead channels", "degradation_wall_s"))
        if t.get(key, 0) >= 0.5
    ]
    if stages:  # what this call measured; stored results read back are not timed
        return text + "; in the last call " + " and ".join(stages)
    return text + "; latency and dead channels read from earlier runs"


def render_html(study: dict[str, Any], sections: list[Section], images: dict[str, str]) -> str:
    """The report: summary table on top, then one section per claim."""
    env = study["versions"]
    summary = _table(
        [
            "claim",
            "verdict (of the headline statement)",
            "headline aspects: supported / contradicted / inconclusive",
            "side aspects (never change the verdict)",
        ],
        [
            [
                s.title,
                s.verdict,
                " / ".join(str(sum(v == k for _, v, _ in s.aspects)) for k in VERDICT_COLORS),
                " / ".join(str(sum(v == k for _, v, _ in s.side)) for k in VERDICT_COLORS),
            ]
            for s in sections
        ]
        + [[claim, "not measurable here", why, "-"] for claim, why in NOT_MEASURED],
    )
    summary = _colour(summary)
    meta = (
        f"preset <b>{study['preset']}</b>, data <b>{html.escape(study['data'])}</b>, "
        f"{len(study['cells'])} trained cells; {html.escape(study['hardware'])}; "
        + ", ".join(f"{k} {html.escape(str(v))}" for k, v in env.items())
    )
    meta += _timing_note(study.get("timing", {})) + ". " + UNITS_NOTE
    budget = study.get("budget", {})
    meta = f"{html.escape(budget_text(budget))} " + meta
    body = "\n".join(_section_html(s, images, budget) for s in sections)
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        "<title>MobileNets: the claims, measured</title>"
        f"<style>{CSS}</style></head><body>"
        "<h1>MobileNets: the claims, measured</h1>"
        f'<section id="summary"><h2>Summary</h2><p class="note" id="budget">{meta}</p>'
        f"{summary}</section>"
        f"{body}</body></html>"
    )
