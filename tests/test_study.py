"""``mobilenets study``: verdict rules, the plan, a tiny study whose report numbers equal their
sources, resume after a kill, and the report rendered in headless Chromium."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from mobilenets import run_study
from mobilenets.errors import UsageError
from mobilenets.study import claims
from mobilenets.study.cells import Cell, build_grid

sys.path.insert(0, str(Path(__file__).parent))
from study_tiny import tiny_grid  # noqa: E402

S, C, UNDECIDED = claims.SUPPORTED, claims.CONTRADICTED, claims.INCONCLUSIVE
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


# ---------------------------------------------------------------- verdict rules


def test_exponent_rule():
    xs = [1.0, 0.75, 0.5, 0.25]
    assert claims.fit_exponent(xs, [x**2 for x in xs]) == pytest.approx(2.0)
    assert claims.exponent_verdict(2.24) == S
    assert claims.exponent_verdict(1.76) == S
    assert claims.exponent_verdict(1.74) == C
    assert claims.exponent_verdict(2.3) == C
    assert claims.exponent_verdict(claims.fit_exponent(xs, [x**1.5 for x in xs])) == C


def test_ordering_rule():
    a, b = [0.90, 0.91, 0.92], [0.80, 0.81, 0.82]  # std 0.01 each, gap 0.10
    assert claims.ordering_verdict([("a", a), ("b", b)])[0] == S
    assert claims.ordering_verdict([("b", b), ("a", a)])[0] == C
    assert claims.ordering_verdict([("a", a[:2]), ("b", b[:2])])[0] == UNDECIDED  # < 3 seeds
    noisy = [0.80, 0.95, 0.875]  # std 0.075: the gap to b must exceed 0.15
    verdict, why = claims.ordering_verdict([("noisy", noisy), ("b", b)])
    assert verdict == UNDECIDED and "2 x std" in why
    assert claims.ordering_verdict([("a", a), ("b", b), ("c", [0.4, 0.41, 0.42])])[0] == S


def test_shortcut_degradation_verdict_needs_counts_and_an_effect_size():
    # counts in the compared layers; no shortcut: more dead (the V2 paper's claim) -> supported
    more, fewer = [30, 32, 28], [2, 0, 1]
    verdict = claims.shortcut_degradation_verdict
    assert verdict({"V2": fewer, "V2, no shortcut": more}, 1000)[0] == S
    assert verdict({"V2": more, "V2, no shortcut": fewer}, 1000)[0] == C
    assert verdict({"V2": fewer, "V2, no shortcut": more[:2]}, 1000)[0] == UNDECIDED
    assert verdict({"V2": fewer}, 1000) == (UNDECIDED, "no data")
    # 1 vs 14 dead channels of 19,488 (the old quick study): consistent, but below 1% -> undecided
    v, why = verdict({"V2": [0, 1, 0], "V2, no shortcut": [14, 15, 13]}, 19488)
    assert v == UNDECIDED and "below the threshold" in why and "194.9" in why
    assert verdict({"V2": [0, 1, 0], "V2, no shortcut": [14, 15, 13]}, 1000)[0] == S


def _dead_file(layers):
    """A degradation record from (layer, channels, dead, identity_block) rows."""
    rows = [
        {"layer": n, "channels": c, "dead": d, "dead_fraction": d / c, "identity_block": i}
        for n, c, d, i in layers
    ]
    ident = [r for r in rows if r["identity_block"]]
    return {
        "version": 2,
        "layers": rows,
        "dead": sum(r["dead"] for r in rows),
        "channels": sum(r["channels"] for r in rows),
        "dead_fraction": 0.0,
        "identity_dead": sum(r["dead"] for r in ident),
        "identity_channels": sum(r["channels"] for r in ident),
    }


def test_degradation_compares_only_the_layers_where_the_variants_differ():
    ev = _crafted()
    first_block = [("blocks.0.dw.act", 100, 0, False), ("blocks.4.dw.act", 200, 0, True)]
    dead_first = [("blocks.0.dw.act", 100, 40, False), ("blocks.4.dw.act", 200, 0, True)]
    for name, v in ev.grid.degradation.items():
        for s in range(3):
            layers = dead_first if name == "V2, no shortcut" else first_block
            ev.degradation[Cell(v, s).id] = _dead_file(layers)
    s = claims.claim_degradation(ev)
    # 40 dead channels in the first block (no shortcut in either variant) decide nothing
    assert s.verdict == UNDECIDED and "without shortcuts" in s.aspects[0][0]
    assert s.side[0][1] == S  # over all layers it would pass: a side aspect, never the headline
    assert "none in any compared layer" in s.notes[1]
    row = next(r for r in s.rows if r[0] == "V2, no shortcut")
    assert row[2].values == [40, 40, 40] and row[4].values == [0, 0, 0] and row[5] == 200
    shortcut_block = [("blocks.0.dw.act", 100, 0, False), ("blocks.4.dw.act", 200, 20, True)]
    for s_ in range(3):
        v = ev.grid.degradation["V2, no shortcut"]
        ev.degradation[Cell(v, s_).id] = _dead_file(
            shortcut_block[:1] + [(*shortcut_block[1][:2], 20 + s_, True)]
        )
    s = claims.claim_degradation(ev)
    assert s.verdict == S, s.aspects
    assert "blocks.4.dw.act 21.0/200" in s.notes[1]


def test_small_drop_rule():
    ref = [0.90, 0.91, 0.92]
    assert claims.small_drop_verdict([0.89, 0.90, 0.91], ref, 0.02)[0] == S
    assert claims.small_drop_verdict([0.80, 0.81, 0.82], ref, 0.02)[0] == C
    assert claims.small_drop_verdict([0.89], ref, 0.02)[0] == UNDECIDED


def test_choose_lr_treats_every_variant_alike_and_uses_validation_only():
    from mobilenets.study.cells import QUICK_LR, QUICK_LR_SWEEP, choose_lr

    sweep = {
        0.1: {"a": [0.9, 0.9], "b": [0.5, 0.5]},  # best for a alone: mean 0.70
        0.05: {"a": [0.8, 0.8], "b": [0.7, 0.7]},  # best on average: 0.75
        0.025: {"a": [0.74, 0.74], "b": [0.74, 0.74]},
    }
    assert choose_lr(sweep) == 0.05
    assert choose_lr({0.1: {"a": [0.75]}, 0.05: {"a": [0.75]}}) == 0.05  # a tie: the smaller
    with pytest.raises(ValueError, match="same variants"):
        choose_lr({0.1: {"a": [0.9]}, 0.05: {"b": [0.8]}})
    # the quick preset's lr is the rule applied to its recorded validation sweep
    assert QUICK_LR_SWEEP and choose_lr(QUICK_LR_SWEEP) == QUICK_LR
    assert len({frozenset(v) for v in QUICK_LR_SWEEP.values()}) == 1


def test_quick_preset_full_test_set_validation_split_and_five_seeds():
    g = build_grid("quick", "fashion-mnist")
    assert g.training.max_eval_samples is None and g.training.val_split == 2000
    assert g.seeds >= 5 and set(g.sections["ablation"]) <= g.seeded
    assert set(g.sections["expansion"]) <= g.seeded  # V2 without the expansion's ReLU6
    assert not set(g.sections["dwconv"][1:]) & g.trained  # the standard 3x3: ~16x the MACs
    assert g.latency == [*g.sections["baselines"], g.sections["imagenet"][3]]  # verdicts' only
    cell = Cell(g.sections["ablation"][0], 0)
    assert "--val-split 2000" in " ".join(cell.command(g.training, "o"))
    assert build_grid("quick", "fashion-mnist", val_split=0).training.val_split is None


def test_alpha_and_rho_side_aspects_measure_v2s_body_and_the_papers_shape():
    def macs(v):
        return (v.width**2 if v.model == "mobilenet_v1" else v.width**1.2) * v.resolution**2

    ev = _crafted(macs=macs)
    from mobilenets.study.cells import rho_224

    for v in rho_224(ev.grid):
        ev.costs[v.key] = {"macs": v.resolution**2, "params": 1.0, "body_macs": v.resolution**2}
    s = claims.claim_alpha(ev)
    names = {a for a, _, _ in s.side}
    assert {
        "MobileNetV2 body macs ∝ α²",
        "MobileNetV2 body params ∝ α² at 224 px, 1000 classes",
    } <= names
    assert "MobileNetV1 macs ∝ α² at 224 px, 1000 classes" in names and s.verdict == S
    r = claims.claim_rho(ev)
    got = {a: v for a, v, _ in r.side}
    assert got["V1 α=1 MACs ∝ ρ² at 224-128 px, 1000 classes"] == S
    assert r.verdict == S  # side aspects never flip the headline


def test_ordering_compares_every_pair_with_a_confidence_interval():
    base, mid, low = [0.78, 0.76, 0.77], [0.70, 0.79, 0.74], [0.69, 0.70, 0.71]
    verdict, why = claims.ordering_verdict([("a", base), ("b", mid), ("c", low)], 100, " pp")
    # a > c is decided (gap 7 pp > 2 x std 1 pp); the neighbours a/b and b/c are not (std 4.5)
    assert verdict == UNDECIDED and "a > c" in why and why.count("95% CI") == 3
    d, lo, hi, how = claims.diff_ci(base, low)
    diffs = np.subtract(base, low)
    half = 4.303 * np.std(diffs, ddof=1) / np.sqrt(3)  # t(0.975, df 2)
    assert how == "paired t" and d == pytest.approx(diffs.mean())
    assert (lo, hi) == pytest.approx((d - half, d + half))
    assert claims.diff_ci([1.0, 2.0], [1.0, 2.0, 3.0])[3] == "Welch t"


# ---------------------------------------------------------------- headlines on crafted results


def _crafted(
    macs=lambda v: v.width**2 * v.resolution**2,
    params=lambda v: v.width**2,
    acc=lambda v, seed: 0.8,
    memory=None,
):
    """Evidence for the tiny grid with 3 seeds of every variant and made-up measurements."""
    from dataclasses import replace

    from mobilenets.study.cells import imagenet_shape

    g = tiny_grid(seeds=3)
    every = {v for vs in g.sections.values() for v in vs} | set(g.degradation.values())
    every |= {imagenet_shape(v) for v in g.sections["alpha"]}
    g.trained, g.seeded = set(every), set(every)
    full = {v.key: 9.0 if v.conv_type == "full" else 1.0 for v in every}
    costs = {
        v.key: {"macs": macs(v) * full[v.key], "params": params(v) * full[v.key]} for v in every
    }
    for c in costs.values():  # the body: the whole network here (no head to leave out)
        c["body_macs"], c["body_params"] = c["macs"], c["params"]
    sums = {Cell(v, s).id: {"final_test_top1": acc(v, s)} for v in every for s in range(3)}
    ir = {"block": "ir", "params": 1, "macs": 1}
    blocks = {
        "resnet": ir,
        "setups": {
            "equal width": {"inverted_residual": ir, "materialized_ratio": 1.5},
            "equal MACs": {"inverted_residual": ir, "materialized_ratio": 0.9},
        },
    }
    memory = memory or {
        "mobilenet_v1": {
            "streamed_arena_bytes": 400,
            "layer_by_layer_arena_bytes": 10,
            "peak_op": "a",
        },
        "mobilenet_v2": {
            "streamed_arena_bytes": 100,
            "layer_by_layer_arena_bytes": 20,
            "peak_op": "b",
        },
        "resnet50": {"error": "the planner refuses it: pad"},
    }
    ev = claims.Evidence(g, Path("."), 10, 1, costs, sums, {}, {}, {}, blocks, {}, {}, memory, {})
    return replace(ev)


def _side(section, verdict):
    return [a for a, v, _ in section.side if v == verdict]


def test_alpha_headline_is_v1_and_v2s_head_never_flips_it():
    v2_head = lambda v: v.width**2 if v.model == "mobilenet_v1" else v.width**1.2  # noqa: E731
    s = claims.claim_alpha(_crafted(params=v2_head))
    assert s.verdict == S and {a for a, _, _ in s.aspects} == {
        "MobileNetV1 macs ∝ α²",
        "MobileNetV1 params ∝ α²",
    }
    assert "MobileNetV2 params ∝ α²" in _side(s, C)
    # the published V1 Table 6 params (4.2 .. 0.5 M) give 1.53: contradicted, on the side only
    paper = next(w for a, _, w in s.side if a == "V1 paper Table 6: params ∝ α² (published)")
    assert "fitted exponent 1.5" in paper
    v1_linear = lambda v: v.width**1.5  # noqa: E731
    assert claims.claim_alpha(_crafted(params=v1_linear)).verdict == C


def test_rho_headline_is_computation_and_constant_params_never_flip_it():
    s = claims.claim_rho(_crafted(params=lambda v: 1.0))
    assert s.verdict == S and [a for a, _, _ in s.aspects] == ["MACs ∝ ρ²"]
    assert any(a.startswith("parameters scale with ρ") for a in _side(s, C))
    assert claims.claim_rho(_crafted(macs=lambda v: v.resolution**1.2)).verdict == C


def test_conv_headline_is_the_papers_shape():
    small = lambda v: v.width**2 * v.resolution**2 / (3.0 if v.resolution < 224 else 1.0)  # noqa: E731
    ev = _crafted(macs=small, params=small)
    ev.costs = {
        k: ({m: x / (3 if "full" in k and "r224" not in k else 1) for m, x in c.items()})
        for k, c in ev.costs.items()
    }  # full / separable = 3 at 16 px, 9 at 224 px
    s = claims.claim_conv(ev)
    assert s.verdict == S, s.aspects
    assert len(_side(s, C)) == 2 and all("224 px" in a for a, _, _ in s.aspects[:2])


def test_ablation_decides_each_pair_on_its_own():
    means = {("linear", "bottleneck"): 0.77, ("relu6", "bottleneck"): 0.70}
    means |= {("linear", "expansion"): 0.74, ("linear", "none"): 0.70}
    spread = {("linear", "expansion"): 0.04}  # noisy: expansion vs either side undecided

    def acc(v, seed):
        k = (v.bottleneck_activation, v.shortcut)
        return means.get(k, 0.8) + (seed - 1) * spread.get(k, 0.005)

    s = claims.claim_ablation(_crafted(acc=acc))
    got = {a: v for a, v, _ in s.aspects}
    assert got["bottleneck shortcut > no shortcut (Fig. 6b)"] == S
    assert got["linear bottleneck > ReLU6 bottleneck (Fig. 6a)"] == S
    assert got["bottleneck shortcut > expansion shortcut (Fig. 6b)"] == UNDECIDED
    assert s.verdict == UNDECIDED and all("95% CI" in w for _, _, w in s.aspects)


def test_dwconv_headline_is_224px_cost_and_accuracy_and_the_small_shape_is_a_side():
    # crafted: a standard 3x3 costs 9x at every shape and the accuracies are equal
    s = claims.claim_dwconv(_crafted())
    assert s.verdict == S, s.aspects
    assert [a for a, _, _ in s.aspects] == [
        "depthwise V2 macs a fraction (≤ 1/4) of standard-3x3 V2, 224 px, 1000 classes",
        "depthwise V2 params a fraction (≤ 1/4) of standard-3x3 V2, 224 px, 1000 classes",
        "depthwise within 2 pp of a standard 3x3",
    ]
    assert all("16 px" in a for a in _side(s, S)) and len(s.side) == 2
    # only 3x cheaper at the small shape: contradicted there, a side aspect only
    ev = _crafted()
    for v in ev.grid.sections["dwconv"][1:2]:
        ev.costs[v.key] = {k: x / 3 for k, x in ev.costs[v.key].items()}
    s = claims.claim_dwconv(ev)
    assert s.verdict == S and len(_side(s, C)) == 2
    # a standard 3x3 5 pp more accurate: the headline's accuracy aspect contradicts it
    full5 = lambda v, seed: 0.85 + seed / 1000 if v.conv_type == "full" else 0.8 + seed / 1000  # noqa: E731
    s = claims.claim_dwconv(_crafted(acc=full5))
    assert s.verdict == C and "95% CI" in s.aspects[2][2]
    # not trained (quick): the accuracy aspect is inconclusive, and so is the headline
    ev = _crafted()
    ev.grid.trained -= {ev.grid.sections["dwconv"][1]}
    s = claims.claim_dwconv(ev)
    assert s.verdict == UNDECIDED and s.rows[1][3] == "not trained in tiny"
    assert (
        s.aspects[2][2] == "MobileNetV2 α=0.2 16px standard 3x3 in the block: not trained in tiny"
    )


def test_expansion_relu_verdict_is_the_paired_ordering_of_the_two_variants():
    def acc(gap):
        return lambda v, seed: (
            0.75 + seed / 200 - (gap if v.expansion_activation == "linear" else 0)
        )

    s = claims.claim_expansion(_crafted(acc=acc(0.05)))  # 5 pp lower without the ReLU6
    assert s.verdict == S and "+5.00 pp" in s.aspects[0][2] and "paired t" in s.aspects[0][2]
    assert [r[0] for r in s.rows] == [
        "MobileNetV2 α=0.2 16px",
        "MobileNetV2 α=0.2 16px linear expansion",
    ]
    assert claims.claim_expansion(_crafted(acc=acc(-0.05))).verdict == C  # linear is better
    assert claims.claim_expansion(_crafted(acc=acc(0.001))).verdict == UNDECIDED  # within noise


def test_ablation_curves_per_epoch_only_when_cells_run_several_epochs():
    from dataclasses import replace

    from mobilenets.plots import _pyplot
    from mobilenets.study.report import DRAW

    ev = _crafted()
    assert [p["name"] for p in claims.claim_ablation(ev).plots] == ["ablation"]  # 1 epoch
    ev.grid.training = replace(ev.grid.training, epochs=2, val_split=100)
    v = ev.grid.sections["ablation"][0]
    ev.curves = {Cell(v, s).id: [0.5, 0.6 + s / 100] for s in range(3)}
    spec = claims.claim_ablation(ev).plots[1]
    assert spec["kind"] == "curves" and "validation top-1 per epoch" in spec["title"]
    assert spec["series"][0]["seeds"] == [[50.0, 60.0], [50.0, 61.0], [50.0, 62.0]]
    assert spec["series"][1]["seeds"] == []  # no metrics: nothing drawn, nothing invented
    plt = _pyplot()
    plt.close(DRAW["curves"](plt, spec, ev))


def test_memory_headline_is_the_whole_network_from_the_planner():
    s = claims.claim_blocks(_crafted())  # V2 100 < V1 400; the equal-width block is worse
    assert s.verdict == S and "equal width: inverted residual materializes less" in " ".join(
        _side(s, C)
    )
    assert any("not measurable here" in w for _, _, w in s.side)
    worse = {
        "mobilenet_v1": {
            "streamed_arena_bytes": 100,
            "layer_by_layer_arena_bytes": 1,
            "peak_op": "a",
        },
        "mobilenet_v2": {
            "streamed_arena_bytes": 110,
            "layer_by_layer_arena_bytes": 1,
            "peak_op": "b",
        },
    }
    assert claims.claim_blocks(_crafted(memory=worse)).verdict == C


def test_baselines_vgg_facts_are_side_aspects():
    ev = _crafted()
    timed = ev.grid.sections["baselines"] + ev.grid.sections["imagenet"]
    ev.grid.latency = timed
    row = {"runtime": "onnx", "median_ms": 10.0, "bytes": 600 * 2**20}  # VGG16 "512 MB": no
    fast = {**row, "median_ms": 1.0}
    int8 = {**row, "runtime": "onnx-int8"}
    mobile = {v.key for v in timed[:2]}  # the baselines section: 2 mobile, then 2 references
    ev.latencies = {v.key: [fast if v.key in mobile else row, int8] for v in timed}
    s = claims.claim_baselines(ev)
    assert "VGG16 is 512 MB" in _side(s, C) and all("VGG16" not in a for a, _, _ in s.aspects)
    assert s.verdict == S, s.aspects  # 10x faster, equal accuracy


# ---------------------------------------------------------------- the plan


def test_plan_prints_runnable_train_commands(tmp_path, capsys):
    from mobilenets.cli import build_parser, main

    assert (
        main(["study", "--preset", "paper", "--seeds", "3", "--out", str(tmp_path), "--plan"]) == 0
    )
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("mobilenets train")]
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [c["command"] for c in plan["cells"]] == lines
    grid = build_grid("paper", "fashion-mnist", seeds=3)
    assert len(lines) == len(grid.cells) == len({c["id"] for c in plan["cells"]})
    ablation = [c for c in plan["cells"] if c["variant"].startswith("v2-a1-r28")]
    assert len(ablation) == 6 * 3  # 4 Fig. 6 variants, standard 3x3, linear expansion x 3 seeds
    # every cell whose ordering a verdict uses has every seed: the α and ρ cells too
    ordered = grid.sections["alpha"] + grid.sections["rho"]
    assert {c.seed for c in grid.cells if c.variant in ordered} == {0, 1, 2}
    assert sum(c.variant in ordered for c in grid.cells) == 3 * len(set(ordered))
    parser = build_parser()
    for line in lines:  # each is a valid `mobilenets train` command with the cell's options
        args = parser.parse_args(shlex.split(line)[1:])
        assert args.small_input and args.resume and args.out.startswith(str(tmp_path))
    full = [parser.parse_args(shlex.split(x)[1:]) for x in lines if "--conv-type full" in x]
    assert {(a.model, a.seed) for a in full if a.conv_type == "full"} == {
        (m, s) for m in ("mobilenet_v1", "mobilenet_v2") for s in range(3)
    }  # V1 Table 4's full conv and V2 with a standard 3x3: every seed, in paper only
    linear = [x for x in lines if "--expansion-activation linear" in x]
    assert len(linear) == 3 and all("--model mobilenet_v2" in x for x in linear)


# ---------------------------------------------------------------- a tiny study


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, worker_id):
    """The tiny study, built once for all xdist workers (the first one builds it under a file
    lock; the others read its study.json)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent
    out = root / "tiny_study"
    with FileLock(str(root / "tiny_study.lock")):
        if not (out / "study.json").exists():
            built = run_study(out=out, grid=tiny_grid(), jobs=1)
            assert json.loads((out / "study.json").read_text())["sections"] == built["sections"]
    return out, json.loads((out / "study.json").read_text())


class _Cells(HTMLParser):
    """Every <td> with data-values, its sources and text; ids of sections; img sources."""

    def __init__(self) -> None:
        super().__init__()
        self.cells, self.sections, self._open = [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a["id"])
        if tag == "td" and "data-values" in a:
            self._open = [json.loads(a["data-values"]), json.loads(a.get("data-sources", "[]")), ""]

    def handle_data(self, data):
        if self._open is not None:
            self._open[2] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._open is not None:
            self.cells.append(tuple(self._open))
            self._open = None


@functools.cache
def _profile(config_json: str):
    from mobilenets import ModelConfig, profile
    from mobilenets.models import build_from_config

    return profile(build_from_config(ModelConfig.from_json(config_json)))


def _source_value(out: Path, study: dict, source: str):
    from mobilenets.study.collapse import relu_collapse

    where, key = source.rsplit(":", 1)
    if where.startswith("profile("):
        config = study["variants"][where[8:-1]]["config"]
        report = _profile(json.dumps(config, sort_keys=True))
        if key.startswith("body_"):  # the stem and the blocks: no head conv, no classifier
            body = [op for op in report.ops if op.name.startswith(("stem.", "blocks."))]
            return sum(getattr(op, key[5:]) for op in body)
        return getattr(report, key)
    if where == "collapse":
        n, field = key.split(".")
        return next(r for r in relu_collapse()["rows"] if r["n"] == int(n))[field]
    obj = json.loads((out / where).read_text())
    for part in key.split("."):
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


def test_every_report_number_equals_its_source(tiny_study):
    out, study = tiny_study
    page = _Cells()
    page.feed((out / "report.html").read_text())
    sourced = [c for c in page.cells if c[1]]
    kinds = {re.split(r"[/(:]", s)[0] for _, srcs, _ in sourced for s in srcs}
    assert {"profile", "cells", "latency", "degradation", "collapse"} <= kinds
    for values, sources, _text in sourced:
        found = [_source_value(out, study, s) for s in sources]
        flat = [x for f in found for x in (f if isinstance(f, list) else [f])]
        assert flat == values, sources
    # the displayed text is those values, formatted (mean ± std for several seeds)
    acc = next(c for c in sourced if c[1][0].endswith("final_test_top1"))
    assert acc[2] == f"{100 * acc[0][0]:.1f}% (one seed)"  # never a bare single number
    body = next(c for c in sourced if c[1][0].endswith(":body_macs"))
    assert 0 < body[0][0] and body[2] == f"{body[0][0] / 1e6:.3f}"
    rho224 = [c for c in sourced if c[1][0].startswith("profile(v1-a1-r") and "imagenet" in c[1][0]]
    assert {re.search(r"-r(\d+)-", c[1][0]).group(1) for c in rho224} >= {"224", "128"}
    mac = next(c for c in sourced if c[1][0].endswith(":macs"))
    assert mac[2] == f"{mac[0][0] / 1e6:.3f}"
    # cell folders in study.json are relative to the study folder (it can be moved)
    assert all(c["out"] == f"cells/{c['id']}" for c in study["cells"])
    # study.json and study.csv hold the same numbers
    sec = {s["key"]: s for s in study["sections"]}
    assert json.loads((out / "study.json").read_text())["sections"] == study["sections"]
    row = sec["alpha"]["rows"][0]
    assert row[1]["values"] == [study["variants"][tiny_grid().sections["alpha"][0].key]["macs"]]
    csv_text = (out / "study.csv").read_text()
    assert f"{row[1]['values'][0]}" in csv_text or f"{float(row[1]['values'][0])}" in csv_text
    page_text = (out / "report.html").read_text()
    assert "not trained in tiny" in page_text
    # the budget line: steps, test images and the noise floor (binomial SE at 50%)
    b = study["budget"]
    assert (b["train_images"], b["test_images"], b["steps"]) == (128, 100, 4)
    assert b["noise_floor_pp"] == pytest.approx(5.0)
    assert "early training (4 steps)" in page_text and "noise floor ±5.0 pp" in page_text
    assert "Selection: no validation split" in page_text and b["val_images"] == 0
    # every claim of the source document is in the summary, measured or "not measurable here"
    assert sum(r["verdict"] == "not measurable here" for r in study["summary"]) == 1
    # the V2 block ablations: the standard 3x3's cost at 224 px, the linear expansion's accuracy
    sources = {src for _, srcs, _ in sourced for src in srcs}
    assert {
        "profile(v2-a1-r224-full-imagenet):macs",
        "profile(v2-a0.2-r16-full):params",
        "cells/v2-a0.2-r16-linear-expansion-s0/summary.json:final_test_top1",
    } <= sources
    assert (
        study["summaries"]["v2-a0.2-r16-linear-expansion-s0"]["config"]["expansion_activation"]
        == "linear"
    )
    assert {s["key"] for s in study["sections"]} >= {"dwconv", "expansion"}
    structure = sec["structure"]
    assert structure["verdict"] == S and study["structure"]["v1"]["layers"] == 28
    assert study["structure"]["expansion"]["resnet50"][0] == 0.25
    # the cells were trained with the model options and the pinned small_input they name
    cfg = study["summaries"]["v2-a0.2-r16-shortcut-none-s0"]["config"]
    assert cfg["shortcut"] == "none" and cfg["width_mult"] == 0.2 and cfg["resolution"] == 16
    assert all(s["config"]["small_input"] for s in study["summaries"].values())


def test_cells_trained_with_other_settings_are_refused(tiny_study, capsys):
    from dataclasses import replace

    from mobilenets import cli

    out, _ = tiny_study
    grid = tiny_grid()
    assert all(c.mismatch(grid.training, out) is None for c in grid.cells)
    longer = replace(grid, training=replace(grid.training, epochs=2))
    cell = grid.cells[0]
    assert cell.mismatch(longer.training, out) == "epochs 1 (this study: 2)"
    with pytest.raises(UsageError, match=r"was trained with epochs 1 \(this study: 2\)"):
        run_study(out=out, grid=longer, report_only=True)
    # the CLI: one line, exit 2, nothing trained (a quick-preset folder asked for 3 epochs)
    _fake_quick_cell(out / "q")
    assert cli.main(["study", "--out", str(out / "q"), "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained with epochs 1 (this study: 3)" in err[0], err


def test_cells_recorded_with_an_older_config_schema_are_the_same_cells(tiny_study, tmp_path):
    """A cell trained before ``expansion_activation`` existed (schema 3) built the same model:
    it is not retrained or refused; a model that really differs still is."""
    out, _ = tiny_study
    grid = tiny_grid()
    cell = next(c for c in grid.cells if c.variant.model == "mobilenet_v2")
    shutil.copytree(cell.folder(out), cell.folder(tmp_path))
    path = cell.folder(tmp_path) / "run.json"
    record = json.loads(path.read_text())
    model = record["defining"]["model"]
    del model["expansion_activation"]
    path.write_text(
        json.dumps(
            {**record, "defining": {**record["defining"], "model": {**model, "schema_version": 3}}}
        )
    )
    assert cell.mismatch(grid.training, tmp_path) is None
    model["shortcut"] = "none"
    path.write_text(json.dumps({**record, "defining": {**record["defining"], "model": model}}))
    assert cell.mismatch(grid.training, tmp_path) == "model shortcut none (this study: bottleneck)"


def _fake_quick_cell(out: Path, summary: str | None = None, record: str | None = None) -> Path:
    """The first quick-preset cell's folder in ``out`` with the given (or valid) records."""
    folder = build_grid("quick", "fashion-mnist").cells[0].folder(out)
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(summary or json.dumps({"final_test_top1": 0.5}))
    (folder / "run.json").write_text(record or json.dumps({"epochs": 1, "defining": {}}))
    return folder


def _one_line_error(capsys, argv: list[str], code: int = 2) -> str:
    from mobilenets import cli

    assert cli.main(argv) == code
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and captured.out == "", (err, captured.out)
    return err[0]


@pytest.mark.parametrize("damage", ["{not json", "[1, 2]", '{"final_test_top1": "high"}'])
def test_report_refuses_a_finished_cell_whose_summary_is_damaged(tmp_path, capsys, damage):
    folder = _fake_quick_cell(tmp_path, summary=damage)
    err = _one_line_error(capsys, ["study", "--out", str(tmp_path), "--report"])
    assert f"{folder / 'summary.json'} is damaged" in err and "delete" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells"]  # nothing measured


@pytest.mark.parametrize("report", [True, False])
def test_finished_cell_with_a_damaged_run_json_is_refused(tmp_path, capsys, report):
    folder = _fake_quick_cell(tmp_path, record='{"epochs": 1, "defin')
    argv = ["study", "--out", str(tmp_path)] + (["--report"] if report else [])
    err = _one_line_error(capsys, argv)
    assert f"{folder / 'run.json'} is damaged" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells"]


def test_damaged_summary_is_not_finished_and_training_finishes_the_cell_again(tiny_study, tmp_path):
    from mobilenets.study.runner import run_cells

    out, study = tiny_study
    grid = tiny_grid()
    cell = next(c for c in grid.cells if c.id in study["summaries"])
    shutil.copytree(cell.folder(out), cell.folder(tmp_path))
    (cell.folder(tmp_path) / "summary.json").write_text('{"final_test_top1": 0.7')  # cut short
    assert cell.done(out) and not cell.done(tmp_path)
    assert cell.damage(tmp_path) and cell.damage(tmp_path, summary=False) is None
    times = run_cells([cell], grid.training, tmp_path, log=lambda s: None)
    assert list(times) == [cell.id] and cell.done(tmp_path)
    again = json.loads((cell.folder(tmp_path) / "summary.json").read_text())
    assert again["final_test_top1"] == study["summaries"][cell.id]["final_test_top1"]


@pytest.mark.parametrize("kind", ["empty", "missing", "training run"])
def test_report_without_study_cells_is_refused_before_measuring(tmp_path, capsys, kind):
    folder = tmp_path / "dir"
    if kind != "missing":
        folder.mkdir()
    if kind == "training run":
        (folder / "summary.json").write_text(json.dumps({"final_test_top1": 0.9}))
        (folder / "run.json").write_text(json.dumps({"epochs": 1, "defining": {}}))
    before = sorted(p.name for p in folder.iterdir()) if folder.exists() else None
    err = _one_line_error(capsys, ["study", "--out", str(folder), "--report"])
    assert f"no study cells in {folder}" in err, err
    after = sorted(p.name for p in folder.iterdir()) if folder.exists() else None
    assert after == before  # no latency/, no report written into the user's folder


def test_plan_into_a_file_fails_before_printing_the_plan(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("mine")
    err = _one_line_error(capsys, ["study", "--out", str(target), "--plan"])
    assert f"--out {target} is a file" in err and target.read_text() == "mine"


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"data": None}, TypeError, "data must be a --data spec string"),
        ({"out": None}, TypeError, "out must be a str or Path"),
        ({"preset": 3}, TypeError, "preset must be one of quick, paper"),
        ({"preset": "huge"}, ValueError, "--preset must be one of quick, paper"),
        ({"epochs": "2"}, TypeError, "epochs must be an int"),
        ({"seeds": 0}, ValueError, "--seeds must be >= 1"),
        ({"jobs": 1.5}, TypeError, "jobs must be an int"),
        ({"jobs": True}, TypeError, "jobs must be an int"),
        ({"device": "tpu"}, ValueError, "device must be None, 'cpu' or 'cuda'"),
        ({"grid": "tiny"}, TypeError, "grid must be a mobilenets.study.cells.Grid"),
    ],
)
def test_run_study_misuse_names_the_argument(tmp_path, kwargs, error, words):
    args = {"out": tmp_path / "s", "plan": True, **kwargs}
    with pytest.raises(error, match=re.escape(words)):
        run_study(**args)
    assert not (tmp_path / "s").exists()


def test_report_opens_in_headless_chromium(tiny_study):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it as root)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed (test extra)"
    )
    out, study = tiny_study
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((out / "report.html").resolve().as_uri())
            ids = page.eval_on_selector_all("section", "els => els.map(e => e.id)")
            widths = page.eval_on_selector_all(
                "img", "els => els.map(e => e.complete ? e.naturalWidth : 0)"
            )
            overflow = page.evaluate("document.documentElement.scrollWidth")
            shot = page.screenshot(path=str(out / "screenshot-1280.png"), full_page=True)
        finally:
            browser.close()
    keys = ["summary"] + [s["key"] for s in study["sections"]]
    assert ids == keys and len(keys) == 12
    assert len(widths) == 5 and all(w > 0 for w in widths), widths
    assert overflow <= 1280 and len(shot) > 10_000  # nothing wider than a 1280 px window
    assert errors == []


# ---------------------------------------------------------------- resume after a kill

_RUN = """
import sys
sys.path.insert(0, {tests!r})
from study_tiny import tiny_grid
from mobilenets.study.runner import run_cells
g = tiny_grid()
cells = [c for c in g.cells][:3]
times = run_cells(cells, g.training, {out!r}, jobs=1, log=lambda s: None)
print(sorted(times))
"""


def test_killed_study_finishes_only_the_missing_cells(tmp_path):
    g = tiny_grid()
    cells: list[Cell] = g.cells[:3]
    code = _RUN.format(tests=str(Path(__file__).parent), out=str(tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE)
    first = cells[0].folder(tmp_path) / "summary.json"
    deadline = time.time() + 90
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists()
    done_before = {c.id for c in cells if c.done(tmp_path)}
    assert done_before and len(done_before) < 3
    stamp = first.stat().st_mtime_ns
    rerun = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    trained = set(eval(rerun.stdout.strip().splitlines()[-1]))  # a list of cell ids
    assert trained == {c.id for c in cells} - done_before
    assert all(c.done(tmp_path) for c in cells) and first.stat().st_mtime_ns == stamp


def test_timing_note_never_prints_0_s_for_results_read_back():
    from mobilenets.study.report import _timing_note

    cells = {"a": {"wall_s": 10.0, "cpu_s": 9.0}}
    reread = _timing_note({"cells": cells, "latency_wall_s": 0.01, "degradation_wall_s": 0.0})
    assert " 0 s" not in reread and "read from earlier runs" in reread
    measured = _timing_note({"cells": cells, "latency_wall_s": 12.0, "degradation_wall_s": 0.0})
    assert "latency 12 s wall" in measured and "dead channels" not in measured


def test_log_axis_ticks_are_the_real_values_and_never_crowd():
    from mobilenets.study.report import _spaced

    assert _spaced([0.25, 0.35, 0.5, 0.75, 1.0]) == [0.25, 0.35, 0.5, 0.75, 1.0]
    ticks = _spaced([16, 20, 24, 28, 128, 160, 192, 224])
    assert ticks[-1] == 224 and 16 in ticks and 128 in ticks
    assert all(np.log10(b / a) >= 0.085 for a, b in zip(ticks, ticks[1:], strict=False))


def test_collapse_loses_the_spiral_in_low_dimensions():
    from mobilenets.study.collapse import relu_collapse

    rows = {r["n"]: r for r in relu_collapse()["rows"]}
    assert np.mean(rows[30]["shape_errors"]) < np.mean(rows[2]["shape_errors"]) / 2
    assert rows[2]["error"] > rows[30]["error"]
