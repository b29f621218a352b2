"""One function per claim of the source document: its figures, the paper's, and a verdict.

Verdict rules (issue 11):

- a cost claim is *supported* when the fitted log-log exponent is within ±0.25 of 2, else
  *contradicted*;
- an ordering (accuracy, or any other per-seed measurement) is decided only with ≥ 3 values per
  group and a gap between neighbours larger than twice the larger standard deviation (ddof 1);
  otherwise it is *inconclusive*.

Every number is a :class:`Num` that names its source, so the report can prove it copied it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import published
from .cells import Cell, Grid, Variant

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
EXPONENT_TOLERANCE = 0.25
MIN_SEEDS = 3


@dataclass
class Num:
    """A figure: raw ``values`` (one per seed, or one), where each came from, and its display."""

    values: list[float]
    sources: list[str]
    scale: float = 1.0
    unit: str = ""
    digits: int = 2

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0

    def text(self) -> str:
        m = f"{self.mean * self.scale:.{self.digits}f}"
        if len(self.values) > 1:
            return (
                f"{m} ± {self.std * self.scale:.{self.digits}f}{self.unit} (n={len(self.values)})"
            )
        return f"{m}{self.unit}"

    def to_dict(self) -> dict[str, Any]:
        return {"values": self.values, "sources": self.sources, "text": self.text()}


Cell_ = Num | str | float | int | None


@dataclass
class Section:
    """A claim's section of the report."""

    key: str
    title: str
    claim: str
    columns: list[str]
    rows: list[list[Cell_]]
    paper: list[tuple[str, str]]  # (what, figure with its source)
    aspects: list[tuple[str, str, str]] = field(default_factory=list)  # (aspect, verdict, why)
    notes: list[str] = field(default_factory=list)
    plots: list[dict[str, Any]] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        verdicts = [v for _, v, _ in self.aspects]
        if CONTRADICTED in verdicts:
            return CONTRADICTED
        return INCONCLUSIVE if INCONCLUSIVE in verdicts or not verdicts else SUPPORTED


# ---------------------------------------------------------------- the rules


def fit_exponent(xs: list[float], ys: list[float]) -> float:
    """The slope p of log y = p log x + c (least squares)."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def exponent_verdict(p: float, target: float = 2.0) -> str:
    return SUPPORTED if abs(p - target) <= EXPONENT_TOLERANCE else CONTRADICTED


def ordering_verdict(groups: list[tuple[str, list[float]]]) -> tuple[str, str]:
    """Is ``groups`` (expected best first) in decreasing order of mean? (verdict, why)."""
    few = [name for name, v in groups if len(v) < MIN_SEEDS]
    if few:
        return INCONCLUSIVE, f"fewer than {MIN_SEEDS} seeds for {', '.join(few)}"
    stats = [(n, float(np.mean(v)), float(np.std(v, ddof=1))) for n, v in groups]
    undecided = []
    for (a, ma, sa), (b, mb, sb) in zip(stats, stats[1:], strict=False):
        if abs(ma - mb) <= 2 * max(sa, sb):
            undecided.append(f"{a} vs {b}: gap {abs(ma - mb):.4g} <= 2 x std {max(sa, sb):.4g}")
        elif mb > ma:
            return CONTRADICTED, f"{b} beats {a} by {mb - ma:.4g} > 2 x std {max(sa, sb):.4g}"
    if undecided:
        return INCONCLUSIVE, "; ".join(undecided)
    return SUPPORTED, "every gap exceeds twice the larger standard deviation"


def small_drop_verdict(
    mobile: list[float], reference: list[float], max_drop: float
) -> tuple[str, str]:
    """Is the accuracy drop of ``mobile`` against ``reference`` at most ``max_drop`` (fraction)?"""
    if len(mobile) < MIN_SEEDS or len(reference) < MIN_SEEDS:
        return INCONCLUSIVE, f"fewer than {MIN_SEEDS} seeds"
    drop = float(np.mean(reference) - np.mean(mobile))
    noise = 2 * max(np.std(mobile, ddof=1), np.std(reference, ddof=1))
    if drop <= max_drop:
        return SUPPORTED, f"drop {100 * drop:.2f} pp <= {100 * max_drop:g} pp"
    if drop > max_drop + noise:
        return CONTRADICTED, f"drop {100 * drop:.2f} pp > {100 * max_drop:g} pp + 2 x std"
    return INCONCLUSIVE, f"drop {100 * drop:.2f} pp within noise of {100 * max_drop:g} pp"


# ---------------------------------------------------------------- the evidence


@dataclass
class Evidence:
    """Everything measured, keyed as the grid names it; files are read by the caller."""

    grid: Grid
    out: Path
    num_classes: int
    in_chans: int
    costs: dict[str, dict[str, Any]]
    summaries: dict[str, dict[str, Any]]
    latencies: dict[str, list[dict[str, Any]]]
    degradation: dict[str, dict[str, Any]]
    collapse: dict[str, Any]
    blocks: dict[str, Any]
    timing: dict[str, Any] = field(default_factory=dict)  # this call's stages, each cell's

    def cells_of(self, v: Variant) -> list[Cell]:
        n = self.grid.seeds if v in self.grid.seeded else 1
        return [Cell(v, s) for s in range(n)]

    def accuracy(self, v: Variant) -> Num | str:
        if v not in self.grid.trained:
            return f"not trained in {self.grid.preset}"
        done = [c for c in self.cells_of(v) if c.id in self.summaries]
        if not done:
            return "not finished"
        return Num(
            [self.summaries[c.id]["final_test_top1"] for c in done],
            [f"cells/{c.id}/summary.json:final_test_top1" for c in done],
            100.0,
            "%",
            1,
        )

    def accuracies(self, v: Variant) -> list[float]:
        a = self.accuracy(v)
        return a.values if isinstance(a, Num) else []

    def cost(self, v: Variant, what: str) -> Num:
        scale = 1e-6 if what in ("macs", "params") else 1 / 1024  # columns say M or KB
        return Num([self.costs[v.key][what]], [f"profile({v.key}):{what}"], scale, "", 3)

    def latency(self, v: Variant, runtime: str, what: str = "median_ms") -> Num | str:
        rows = self.latencies.get(v.key)
        if v not in self.grid.latency:
            return f"not timed in {self.grid.preset}"
        if not rows:
            return "not measured"
        i = next(i for i, r in enumerate(rows) if r["runtime"] == runtime)
        scale, unit = (1e-6, " MB") if what == "bytes" else (1.0, "")  # columns say ms
        return Num([rows[i][what]], [f"latency/{v.key}.json:{i}.{what}"], scale, unit, 2)


def _latency_cols(ev: Evidence, v: Variant) -> list[Cell_]:
    return [ev.latency(v, "onnx"), ev.latency(v, "onnx-int8")]


def _label(v: Variant) -> str:
    names = {"mobilenet_v1": "MobileNetV1", "mobilenet_v2": "MobileNetV2"}
    base = names.get(v.model, {"resnet50": "ResNet-50", "vgg16": "VGG16"}.get(v.model, v.model))
    if v.model in names:
        base += f" α={v.width:g}"
    extra: list[str] = []
    if v.conv_type == "full":
        extra = ["full conv"]
    elif v.bottleneck_activation == "relu6":
        extra = ["ReLU6 bottleneck"]
    elif v.shortcut != "bottleneck":
        extra = [f"shortcut: {v.shortcut}"]
    return " ".join([base, f"{v.resolution}px", *extra])


COST_COLUMNS = ["model", "M MACs", "M params", "test top-1", "fp32 ms", "int8 ms"]


def _cost_row(ev: Evidence, v: Variant) -> list[Cell_]:
    return [
        _label(v),
        ev.cost(v, "macs"),
        ev.cost(v, "params"),
        ev.accuracy(v),
        *_latency_cols(ev, v),
    ]


def _exponent_aspect(name: str, xs, ys, target: float = 2.0) -> tuple[str, str, str]:
    p = fit_exponent(xs, ys)
    return (
        name,
        exponent_verdict(p, target),
        f"fitted exponent {p:.3f} (target {target:g} ± 0.25)",
    )


def _loglog(name: str, title: str, xlabel: str, series: list[tuple[str, list, list]]) -> dict:
    return {
        "name": name,
        "kind": "loglog",
        "title": title,
        "xlabel": xlabel,
        "ylabel": "relative to the largest",
        "series": [
            {"label": lab, "x": xs, "y": [y / max(ys) for y in ys], "slope": fit_exponent(xs, ys)}
            for lab, xs, ys in series
        ],
    }


def claim_alpha(ev: Evidence) -> Section:
    vs = ev.grid.sections["alpha"]
    fams = {m: [v for v in vs if v.model == m] for m in ("mobilenet_v1", "mobilenet_v2")}
    aspects, series = [], []
    for m, fam in fams.items():
        xs = [v.width for v in fam]
        for what in ("macs", "params"):
            ys = [ev.costs[v.key][what] for v in fam]
            aspects.append(_exponent_aspect(f"{_label(fam[0]).split()[0]} {what} ∝ α²", xs, ys))
            series.append((f"{m} {what}", xs, ys))
    for m, fam in fams.items():
        v, why = ordering_verdict([(_label(x), ev.accuracies(x)) for x in fam])
        aspects.append((f"{m}: wider is more accurate", v, why))
    return Section(
        "alpha",
        "1. Width multiplier α",
        "α scales computation and parameters by about α².",
        COST_COLUMNS,
        [_cost_row(ev, v) for v in vs],
        [
            (
                f"V1 α={a:g} (224 px, ImageNet)",
                f"{m} M MACs, {p} M params, {t}% top-1 [{published.SOURCES['v1_paper']}]",
            )
            for (a, r), (m, p, t) in published.V1_PAPER.items()
            if r == 224
        ]
        + [
            (
                f"V2 α={a:g} (224 px, ImageNet)",
                f"{published.V2_SLIM[(a, 224)][0]} M MACs, {p} M params, {published.V2_SLIM[(a, 224)][1]}% top-1 [{published.SOURCES['v2_slim']}]",
            )
            for a, p in published.V2_SLIM_PARAMS.items()
            if (a, 224) in published.V2_SLIM and a in {v.width for v in fams["mobilenet_v2"]}
        ],
        aspects,
        [
            "V2's parameters (and, at small inputs, its MACs) fall slower than α²: its last 1×1 "
            "conv keeps 1280 channels for α < 1 (V2 paper §5.1), so that conv (linear in α) and "
            "the 1280-input classifier (constant) hold a share that does not shrink as α².",
            "Latency: onnxruntime, batch 1, all cores, after every training cell (median of the runs).",
        ],
        [_loglog("alpha_cost", "Cost against α (log-log)", "width multiplier α", series)],
    )


def claim_rho(ev: Evidence) -> Section:
    vs = ev.grid.sections["rho"]
    xs = [v.resolution for v in vs]
    macs = [ev.costs[v.key]["macs"] for v in vs]
    params = [ev.costs[v.key]["params"] for v in vs]
    acc_v, acc_why = ordering_verdict([(_label(v), ev.accuracies(v)) for v in vs])
    aspects = [
        _exponent_aspect("MACs ∝ ρ²", xs, macs),
        (
            "parameters scale with ρ (the source's claim)",
            CONTRADICTED if len(set(params)) == 1 else SUPPORTED,
            "parameters are identical at every resolution"
            if len(set(params)) == 1
            else "parameters change",
        ),
        ("higher resolution is more accurate", acc_v, acc_why),
    ]
    return Section(
        "rho",
        "2. Resolution multiplier ρ",
        "ρ scales computation by about ρ² (the source also says parameters).",
        [*COST_COLUMNS, "small_input"],
        [[*_cost_row(ev, v), v.small_input] for v in vs],
        [
            (
                f"V1 α=1, {r} px",
                f"{m} M MACs, {p} M params, {t}% top-1 [{published.SOURCES['v1_paper']}]",
            )
            for (a, r), (m, p, t) in published.V1_PAPER.items()
            if a == 1.0
        ],
        aspects,
        [
            "small_input is pinned for every cell (recorded in each cell's summary.json config): "
            "resolution never changes the network's strides.",
            "At 16-28 px with total stride 8 the last feature maps are 2-4 px wide, so rounding of "
            "the strided convolutions' output sizes bends the MAC curve away from ρ².",
        ],
        [
            _loglog(
                "rho_cost",
                "MACs and params against resolution (log-log)",
                "resolution (px)",
                [("MACs", xs, macs), ("params", xs, params)],
            )
        ],
    )


SPEED_FACTOR = 3.0  # "much faster": at least 3x lower fp32 latency
MAX_DROP = 0.02  # "little accuracy drop": at most 2 percentage points
VGG16_SOURCE_MB, VGG16_SOURCE_S = 512, 1.0  # the source document: "512 MB, ~1 s per image"


def _baseline_row(ev: Evidence, v: Variant) -> list[Cell_]:
    return [
        _label(v) + (", 1000 classes" if v.imagenet else ""),
        ev.accuracy(v) if not v.imagenet else "-",
        ev.cost(v, "params"),
        ev.latency(v, "onnx", "bytes"),
        ev.latency(v, "onnx-int8", "bytes"),
        ev.cost(v, "macs"),
        *_latency_cols(ev, v),
    ]


def _faster(ev: Evidence, fast: Variant, slow: Variant) -> tuple[str, str, str]:
    a, b = ev.latency(fast, "onnx"), ev.latency(slow, "onnx")
    name = f"{_label(fast)} ≥ {SPEED_FACTOR:g}x faster than {_label(slow)}"
    if not isinstance(a, Num) or not isinstance(b, Num):
        return name, INCONCLUSIVE, "latency not measured"
    ratio = b.mean / a.mean
    return (
        name,
        SUPPORTED if ratio >= SPEED_FACTOR else CONTRADICTED,
        f"fp32 latency ratio {ratio:.1f}x",
    )


def claim_baselines(ev: Evidence) -> Section:
    vs, big = ev.grid.sections["baselines"], ev.grid.sections["imagenet"][:4]
    aspects = [_faster(ev, m, r) for m in vs[:2] for r in vs[2:]]
    for m in vs[:2]:
        for r in vs[2:]:
            v, why = small_drop_verdict(ev.accuracies(m), ev.accuracies(r), MAX_DROP)
            aspects.append((f"{_label(m)} within {100 * MAX_DROP:g} pp of {_label(r)}", v, why))
    vgg = big[3]
    size = ev.latency(vgg, "onnx", "bytes")
    if isinstance(size, Num):
        mb = size.mean / 2**20
        ok = abs(mb - VGG16_SOURCE_MB) <= 0.1 * VGG16_SOURCE_MB
        aspects.append(
            (
                "VGG16 is 512 MB",
                SUPPORTED if ok else CONTRADICTED,
                f"fp32 ONNX file {mb:.0f} MiB (±10% allowed)",
            )
        )
    lat = ev.latency(vgg, "onnx")
    if isinstance(lat, Num):
        aspects.append(
            (
                "VGG16 takes ~1 s per image on a phone",
                INCONCLUSIVE,
                f"{lat.mean:.0f} ms here, on this CPU (not a phone)",
            )
        )
    return Section(
        "baselines",
        "3. MobileNets against ResNet-50 and VGG16",
        "MobileNets are much faster than ResNet and VGG with little accuracy drop; VGG16 is 512 MB and takes about 1 s per image on a phone.",
        [
            "model",
            "test top-1",
            "M params",
            "fp32 file",
            "int8 file",
            "M MACs",
            "fp32 ms",
            "int8 ms",
        ],
        [_baseline_row(ev, v) for v in vs + big],
        [
            (name, f"{p:g} M params, {m} M MACs, {t}% ImageNet top-1 [{published.SOURCES[src]}]")
            for name, (p, m, t, src) in published.BASELINES.items()
        ]
        + [
            (
                "VGG16 (the source document)",
                f"{VGG16_SOURCE_MB} MB, about {VGG16_SOURCE_S:g} s per image on a phone",
            )
        ],
        aspects,
        [
            f"'Much faster' is read as ≥ {SPEED_FACTOR:g}x lower fp32 latency; 'little accuracy drop' as ≤ {100 * MAX_DROP:g} pp (decided with ≥ 3 seeds).",
            "Rows marked 1000 classes are the ImageNet shape (224 px, 3 channels) the papers and the source measure.",
        ],
    )


def claim_conv(ev: Evidence) -> Section:
    sep, full = ev.grid.sections["conv"]
    isep, ifull = ev.grid.sections["imagenet"][0], ev.grid.sections["imagenet"][4]
    aspects = []
    for a, b, where in ((sep, full, f"{sep.resolution} px"), (isep, ifull, "224 px, 1000 classes")):
        for what in ("macs", "params"):
            r = ev.costs[b.key][what] / ev.costs[a.key][what]
            aspects.append(
                (
                    f"separable {what} a fraction (≤ 1/4) of full, {where}",
                    SUPPORTED if r >= 4 else CONTRADICTED,
                    f"full / separable = {r:.2f}",
                )
            )
    v, why = small_drop_verdict(ev.accuracies(sep), ev.accuracies(full), MAX_DROP)
    aspects.append((f"separable within {100 * MAX_DROP:g} pp of full", v, why))
    pm, pp, pt = published.V1_PAPER_FULL_CONV
    m, p, t = published.V1_PAPER[(1.0, 224)]
    return Section(
        "conv",
        "4. Depthwise separable against full convolution",
        "Depthwise separable convolution costs a fraction of a full convolution for nearly the same accuracy (V1 Table 4).",
        COST_COLUMNS,
        [_cost_row(ev, x) for x in (sep, full, isep, ifull)],
        [
            (
                "Conv MobileNet (full)",
                f"{pm} M MACs, {pp} M params, {pt}% top-1 [{published.SOURCES['v1_paper']}, Table 4]",
            ),
            (
                "MobileNet (separable)",
                f"{m} M MACs, {p} M params, {t}% top-1 (ratio {pm / m:.2f}x MACs, {pp / p:.2f}x params)",
            ),
        ],
        aspects,
    )


def claim_collapse(ev: Evidence) -> Section:
    c = ev.collapse
    rows = c["rows"]
    per_seed = {r["n"]: r["shape_errors"] for r in rows}
    hi, lo = max(per_seed), min(per_seed)
    v, why = ordering_verdict(
        [(f"n={n}", [-e for e in per_seed[n]]) for n in (hi, lo)]  # lower error ranks first
    )
    table = [
        [
            r["n"],
            Num([r["error"]], [f"collapse:{r['n']}.error"], 1, "", 3),
            Num(r["shape_errors"], [f"collapse:{r['n']}.shape_errors"], 1, "", 3),
        ]
        for r in rows
    ]
    return Section(
        "collapse",
        "5. ReLU in low dimensions collapses data",
        "ReLU applied in a low-dimensional embedding loses information; in high dimensions it is kept (V2 Fig. 1), hence the linear bottleneck.",
        [
            "n",
            "error ||pinv(T) ReLU(T X) - X|| / ||X||",
            "error after best scale (mean ± std over T)",
        ],
        table,
        [
            (
                "V2 Fig. 1",
                "n = 2, 3 lose information; n = 15 to 30 keep the spiral (figure only, no numbers)",
            )
        ],
        [(f"the spiral is kept better at n = {hi} than at n = {lo} (error after scale)", v, why)],
        [
            f"{c['points']} spiral points, {c['seeds']} random T per n. pinv(T) ReLU(T x) tends to x/2 for large n "
            "(ReLU keeps half of the random directions), so the shape is judged after the best single scale.",
        ],
        [
            {
                "name": "relu_collapse",
                "kind": "collapse",
                "title": "pinv(T) ReLU(T X) for a random T (V2 Fig. 1)",
            }
        ],
    )


# The bars of the V2 ablation plot, in the order of the grid's ablation section.
ABLATION_BARS = (
    "linear bottleneck,\nbottleneck shortcut\n(the paper's block)",
    "ReLU6 bottleneck",
    "shortcut between\nexpansions",
    "no shortcut",
)


def claim_ablation(ev: Evidence) -> Section:
    base, relu6, expansion, none = ev.grid.sections["ablation"]
    act_v, act_why = ordering_verdict([(_label(x), ev.accuracies(x)) for x in (base, relu6)])
    sc_v, sc_why = ordering_verdict(
        [(_label(x), ev.accuracies(x)) for x in (base, expansion, none)]
    )
    return Section(
        "ablation",
        "6. Linear bottleneck and shortcut ablations",
        "A linear bottleneck beats a ReLU6 bottleneck (Fig. 6a); shortcuts between bottlenecks beat shortcuts between expansions, which beat none (Fig. 6b).",
        COST_COLUMNS,
        [_cost_row(ev, v) for v in (base, relu6, expansion, none)],
        [
            (
                "V2 Fig. 6a, 6b",
                "linear > ReLU6; bottleneck shortcut > expansion shortcut > none (curves only, no final numbers)",
            )
        ],
        [
            ("linear bottleneck > ReLU6 bottleneck", act_v, act_why),
            ("shortcut: bottleneck > expansion > none", sc_v, sc_why),
        ],
        [f"mean ± std over {ev.grid.seeds} seed(s) (test top-1 of each cell's summary.json)."],
        [
            {
                "name": "ablation",
                "kind": "bars",
                "title": "V2 ablations: test top-1",
                "ylabel": "test top-1 (%)",
                "bars": [
                    {"label": label, "values": [100 * a for a in ev.accuracies(x)]}
                    for label, x in zip(ABLATION_BARS, (base, relu6, expansion, none), strict=True)
                ],
            }
        ],
    )


def shortcut_degradation_verdict(dead: dict[str, list[float]]) -> tuple[str, str]:
    """Does "V2, no shortcut" have more dead channels than "V2" (``dead``: fractions per seed)?
    The expected order is most dead first: the variant without shortcuts, then V2."""
    if "V2" not in dead or "V2, no shortcut" not in dead:
        return INCONCLUSIVE, "no data"
    return ordering_verdict([(k, dead[k]) for k in ("V2, no shortcut", "V2")])


def claim_degradation(ev: Evidence) -> Section:
    rows, series, per_seed = [], [], {}
    for name, v in ev.grid.degradation.items():
        done = [c for c in ev.cells_of(v) if c.id in ev.degradation]
        per_seed[name] = [ev.degradation[c.id]["dead_fraction"] for c in done]
        if not done:
            rows.append([name, _label(v), "not finished", "-"])
            continue
        d = ev.degradation[done[0].id]
        rows.append(
            [
                name,
                _label(v),
                Num(
                    per_seed[name],
                    [f"degradation/{c.id}.json:dead_fraction" for c in done],
                    100,
                    "%",
                    2,
                ),
                len(d["layers"]),
            ]
        )
        series.append({"label": name, "y": [100 * r["dead_fraction"] for r in d["layers"]]})
    verdict, why = shortcut_degradation_verdict(per_seed)
    return Section(
        "degradation",
        "7. Feature degradation: dead ReLU channels",
        "ReLU units that die stop learning (feature degradation); shortcuts between the thin bottlenecks help (Fig. 6b).",
        ["model", "variant", "channels never positive on the test images", "ReLU layers"],
        rows,
        [("V2 §6.1 and Fig. 6b", "qualitative: no figure of dead units is given")],
        [("V2 without shortcuts has more dead channels than V2 with them", verdict, why)],
        [
            "A channel is dead when its ReLU/ReLU6 output is never > 0 over all test images and positions (seed 0 per layer in the plot)."
        ],
        [
            {
                "name": "degradation",
                "kind": "layers",
                "title": "Dead ReLU channels per layer",
                "ylabel": "channels never positive (%)",
                "series": series,
            }
        ],
    )


def claim_blocks(ev: Evidence) -> Section:
    b = ev.blocks
    rows = []
    for setup, s in b["setups"].items():
        for blk in (s["inverted_residual"], b["resnet"]):
            rows.append(
                [
                    setup,
                    blk["block"],
                    blk["params"],
                    blk["macs"],
                    blk["materialized_kb"],
                    blk["streamed_kb"],
                ]
            )
    aspects = [
        (
            f"{setup}: streamed inverted residual needs less memory than the ResNet bottleneck",
            SUPPORTED if s["claim_holds"] else CONTRADICTED,
            f"streamed {s['streamed_ratio']:.2f}x, materialized {s['materialized_ratio']:.2f}x the ResNet bottleneck",
        )
        for setup, s in b["setups"].items()
    ]
    return Section(
        "blocks",
        "8. Inverted residual against ResNet bottleneck",
        "The inverted residual expands ×6 and projects back, where ResNet's bottleneck reduces ×0.25 and expands; with the inner tensor streamed (V2 §5.1) its memory is set by the thin bottlenecks.",
        [
            "setup",
            "block (in-inner-out channels)",
            "params",
            "MACs",
            "peak KB, all materialized",
            "peak KB, inner streamed",
        ],
        rows,
        [
            ("ResNet bottleneck", "256 → 64 → 64 → 256 (1x1 reduce ×0.25, 3x3, 1x1 expand)"),
            (
                "V2 §5.1 / Table 3",
                "max 400 KB for V2 against 1600 KB for V1 (16-bit), inner tensor never materialized",
            ),
        ],
        aspects,
        [
            "56 x 56, stride 1, 16-bit activations. Params, MACs and the materialized peak come from mobilenets.profile(); "
            "the streamed peak is the band estimate in mobilenets/study/blocks.py (the C generator's planner, on another branch, will replace it)."
        ],
    )


CLAIMS = (
    claim_alpha,
    claim_rho,
    claim_baselines,
    claim_conv,
    claim_collapse,
    claim_ablation,
    claim_degradation,
    claim_blocks,
)


def all_sections(ev: Evidence) -> list[Section]:
    """Every claim's section, in the issue's order."""
    return [claim(ev) for claim in CLAIMS]
