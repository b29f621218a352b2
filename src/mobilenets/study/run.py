"""``mobilenets study``: train the grid's cells, measure, and write the report.

    mobilenets study --data fashion-mnist --out runs/study --preset quick

Order: training cells (``--jobs J`` in parallel), then latency (one model at a time, all
cores, nothing else running), then dead-channel counts, then the report. ``--plan`` prints the
cells as ``mobilenets train`` commands (and writes ``DIR/plan.json``) for any scheduler;
``--report`` trains nothing and builds the report from the finished folders (measuring the
latencies and dead channels that are missing).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .cells import PRESETS, Grid, Variant, build_grid, read_summary
from .measure import (
    DEGRADATION_VERSION,
    cost,
    dead_channels,
    degradation_path,
    latency_path,
    measure_latency,
    read_json,
    write_json,
)


def _log(text: str) -> None:
    print(f"study: {text}", file=sys.stderr, flush=True)


def run_study(
    data: str = "fashion-mnist",
    out: str | Path = "runs/study",
    preset: str = "quick",
    epochs: int | None = None,
    seeds: int | None = None,
    jobs: int = 1,
    device: str | None = None,
    plan: bool = False,
    estimate: bool = False,
    report_only: bool = False,
    grid: Grid | None = None,
    val_split: int | None = None,
) -> dict[str, Any]:
    """Run the study of the MobileNet claims and write ``out/report.html``.

    Args:
        data: a ``--data`` spec (Fashion-MNIST by default; CIFAR and ImageFolder work).
        preset: ``quick`` (CPU, ≤ 15 minutes on 2 cores) or ``paper`` (every cell; every seed
            for each cell whose ordering a verdict uses: α, ρ, baselines, conv, ablations).
        epochs, seeds: override the preset's.
        jobs: cells trained in parallel processes (spread over the visible GPUs or CPU cores).
        plan: only print the cells as ``mobilenets train`` commands; with ``estimate``, also
            time a few training steps per cell on ``device`` and extrapolate.
        report_only: train nothing; build the report from the finished cells.
        grid: a custom :class:`~mobilenets.study.cells.Grid` instead of the preset's
            (smaller studies, tests); ``preset``, ``epochs``, ``seeds``, ``device`` and
            ``val_split`` are then ignored.
        val_split: training images held out as the validation split (selection; never the
            test images); default: the preset's (quick 2,000, paper 5,000); 0: none.

    Returns:
        The plan (``plan``) or the study (what ``out/study.json`` holds).
    """
    check_arguments(data, out, preset, epochs, seeds, jobs, device, grid)
    if val_split is not None and (not _is(val_split, (int,)) or val_split < 0):
        raise UsageError(f"--val-split must be an integer >= 0, got {val_split!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; the study needs a folder")
    grid = grid or build_grid(preset, data, epochs, seeds, device, val_split)
    if plan:
        return print_plan(grid, out, estimate, jobs)
    check_cells(grid, out, report_only)
    if not report_only:
        from .runner import run_cells

        t = time.time()
        times = run_cells(grid.cells, grid.training, out, jobs, log=_log)
        if times:
            _log(f"trained {len(times)} cell(s) in {time.time() - t:.0f} s")
    from ..data import load_dataset

    dataset = load_dataset(data)
    ev = gather(grid, out, dataset)
    from .report import write_report

    return write_report(ev, out)


def _is(x: Any, kinds: tuple[type, ...]) -> bool:
    return isinstance(x, kinds) and not isinstance(x, bool)


def check_arguments(
    data: Any, out: Any, preset: Any, epochs: Any, seeds: Any, jobs: Any, device: Any, grid: Any
) -> None:
    """Refuse misuse of :func:`run_study` with a TypeError/ValueError naming the argument."""
    if not isinstance(data, str):
        raise TypeError(f"data must be a --data spec string, got {type(data).__name__}")
    if not isinstance(out, (str, Path)):
        raise TypeError(f"out must be a str or Path folder, got {type(out).__name__}")
    if not isinstance(preset, str):
        raise TypeError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    for name, x in (("epochs", epochs), ("seeds", seeds), ("jobs", jobs)):
        if x is None and name != "jobs":
            continue
        if not _is(x, (int,)):
            raise TypeError(f"{name} must be an int >= 1, got {x!r}")
        if x < 1:
            raise UsageError(f"--{name} must be >= 1, got {x}")
    if device not in (None, "cpu", "cuda"):
        raise UsageError(f"device must be None, 'cpu' or 'cuda', got {device!r}")
    if grid is not None and not isinstance(grid, Grid):
        raise TypeError(f"grid must be a mobilenets.study.cells.Grid, got {type(grid).__name__}")


def check_cells(grid: Grid, out: Path, report_only: bool = False) -> None:
    """Refuse, in one line, a study whose finished cells in ``out`` were trained with other
    settings (another --epochs, preset or version): a report must not mix them. Damaged records
    stop it too (naming the file), except a damaged ``summary.json`` when training: that cell
    is not finished and training finishes it again. ``--report`` with no finished cell at all
    (an empty, missing or training run folder) is refused before anything is measured."""
    for cell in grid.cells:
        why = cell.damage(out, summary=report_only)
        if why:
            raise UsageError(
                f"{why}; delete {cell.folder(out)} to retrain that cell, or use another --out"
            )
        if cell.done(out):
            why = cell.mismatch(grid.training, out)
            if why:
                raise UsageError(
                    f"{cell.folder(out)} was trained with {why}; use another --out, or delete "
                    f"the cells that differ to retrain them"
                )
    if report_only and not any(cell.done(out) for cell in grid.cells):
        raise UsageError(
            f"no study cells in {out} (none of the {len(grid.cells)} cells of the "
            f"{grid.preset} grid has finished); run the study without --report first"
        )


def gather(grid: Grid, out: Path, dataset: Any):
    """Measure what is missing (latency, dead channels) and collect every figure."""
    from .blocks import compare_blocks
    from .cells import cost_only
    from .claims import Evidence
    from .collapse import relu_collapse

    n_cls, chans = len(dataset.class_names), dataset.channels
    variants = [v for vs in grid.sections.values() for v in vs] + list(grid.degradation.values())
    variants += cost_only(grid)
    costs = {v.key: cost(v, n_cls, chans) for v in dict.fromkeys(variants)}
    summaries = {}
    for c in grid.cells:
        s = read_summary(c.folder(out))
        if s is not None:
            summaries[c.id] = s
    t, cpu = time.time(), time.process_time()
    latencies = {v.key: _latency(v, n_cls, chans, out) for v in grid.latency}
    _log(f"latency of {len(latencies)} models ({time.time() - t:.0f} s)")
    timing = {"latency_wall_s": time.time() - t, "latency_cpu_s": time.process_time() - cpu}
    t, cpu = time.time(), time.process_time()
    degradation = _degradation(grid, out, dataset)
    timing |= {
        "degradation_wall_s": time.time() - t,
        "degradation_cpu_s": time.process_time() - cpu,
    }
    _log(f"dead channels of {len(degradation)} cells ({time.time() - t:.0f} s)")
    cells = {c.id: read_json(c.folder(out) / "study_timing.json") for c in grid.cells}
    timing["cells"] = {k: v for k, v in cells.items() if v is not None}
    return Evidence(
        grid, out, n_cls, chans, costs, summaries, latencies, degradation,
        relu_collapse(), compare_blocks(), timing, *_structure(out), budget(grid, dataset),
        curves=_curves(grid, out),
    )  # fmt: skip


def _curves(grid: Grid, out: Path) -> dict[str, list[float]]:
    """Each finished cell's selection top-1 per epoch (``metrics.jsonl``), for Fig. 6 curves."""
    from ..runfolder import METRICS

    found = {}
    for c in grid.cells:
        try:
            rows = [json.loads(x) for x in (c.folder(out) / METRICS).read_text().splitlines() if x]
        except (OSError, ValueError):
            continue
        found[c.id] = [
            float(r["val_top1"]) for r in rows if isinstance(r, dict) and "val_top1" in r
        ]
    return found


def _structure(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The structural facts and the planner's whole-network memory (stored beside the cells:
    they depend on the code only, so a --report does not plan the networks again)."""
    from .structure import network_memory, structure_facts

    found = []
    for name, make in (("structure.json", structure_facts), ("memory.json", network_memory)):
        stored = read_json(out / name)
        if not isinstance(stored, dict):
            stored = make()
            write_json(out / name, stored)
        found.append(stored)
    return found[0], found[1]


def budget(grid: Grid, dataset: Any) -> dict[str, Any]:
    """What every cell was trained and tested on, and the test set's noise floor (the binomial
    standard error of one accuracy at 50%, its largest)."""
    n_val = grid.training.val_split or 0
    n_train = len(dataset.split("train")) - n_val
    n_train = min(n_train, grid.training.max_train_samples or n_train)
    n_test = len(dataset.split("test"))
    n_test = min(n_test, grid.training.max_eval_samples or n_test)
    steps = grid.training.epochs * -(-n_train // grid.training.batch_size)
    return {
        "epochs": grid.training.epochs,
        "train_images": n_train,
        "batch_size": grid.training.batch_size,
        "steps": steps,
        "test_images": n_test,
        "noise_floor_pp": 100 * (0.25 / n_test) ** 0.5,
        "early": grid.preset != "paper",
        "val_images": n_val,
        "lr": grid.training.lr,
        "lr_rule": lr_rule(grid),
    }


def lr_rule(grid: Grid) -> str:
    """How the learning rate was chosen (shown in the budget line)."""
    from .cells import QUICK_LR, QUICK_LR_SWEEP, QUICK_VAL_SPLIT

    if grid.training.lr is None:
        return "the recipe's learning rate (scaled with the batch), the same for every variant"
    if grid.preset == "quick" and grid.training.lr == QUICK_LR and QUICK_LR_SWEEP:
        tried = ", ".join(f"{lr:g}" for lr in sorted(QUICK_LR_SWEEP))
        return (
            f"lr {QUICK_LR:g}, one for every variant, chosen among {tried} on the validation "
            f"top-1 of {QUICK_VAL_SPLIT:,} held-out training images (seeds 100-101; no test "
            "image; cells.choose_lr)"
        )
    return f"lr {grid.training.lr:g}, the same for every variant (set by the grid)"


def _latency(v: Variant, n_cls: int, chans: int, out: Path) -> list[dict[str, Any]]:
    if not latency_path(out, v).exists():
        _log(f"latency {v.key}")
    return measure_latency(v, n_cls, chans, out)


def _degradation(grid: Grid, out: Path, dataset: Any) -> dict[str, dict[str, Any]]:
    from .cells import Cell

    found = {}
    for v in dict.fromkeys(grid.degradation.values()):
        seeds = grid.seeds if v in grid.seeded else 1
        for c in (Cell(v, s) for s in range(seeds)):
            path = degradation_path(out, c.id)
            stored = read_json(path)
            current = isinstance(stored, dict) and stored.get("version") == DEGRADATION_VERSION
            if not current and c.done(out):  # missing, or counted before the per-block totals
                n = grid.training.max_eval_samples or 10000
                write_json(path, dead_channels(c.folder(out) / "last.ckpt", dataset, n))
                stored = read_json(path)
            if stored is not None:
                found[c.id] = stored
    return found


# ---------------------------------------------------------------- plan and estimate


def print_plan(grid: Grid, out: Path, estimate: bool, jobs: int) -> dict[str, Any]:
    """Print every cell as a ``mobilenets train`` command; write ``out/plan.json``."""
    plan = grid.to_dict(out)
    for cell in plan["cells"]:
        print(cell["command"])
    if estimate:
        from .estimate import estimate_grid

        plan["estimate"] = estimate_grid(grid, jobs)
        for line in plan["estimate"]["lines"]:
            print(line)
    write_json(out / "plan.json", plan)
    print(f"# {len(plan['cells'])} cells; JSON: {out / 'plan.json'}")
    return plan
