"""The study's grid: model variants (cost and latency) and cells (one trained run each).

A *variant* is a model configuration the study profiles and times. A *cell* is one trained
run of a variant with one seed: a run folder made by the same ``fit()`` the ``train`` command
uses, done when its ``summary.json`` exists. Every cell is also printed by ``study --plan`` as an
independent ``mobilenets train ...`` command, derived from the same options that
:func:`run_cell` passes to ``fit()``.

:func:`run_cell` is the study's ONLY contact with training (see its docstring).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig, current_dict
from ..errors import UsageError
from ..runfolder import RECORD

PRESETS = ("quick", "paper")
V1_ALPHAS = (1.0, 0.75, 0.5, 0.25)
V2_ALPHAS = (1.4, 1.0, 0.75, 0.5, 0.35)
# V2 paper Fig. 6: (bottleneck_activation, shortcut); the first is the paper's own block.
ABLATIONS = (
    ("linear", "bottleneck"),
    ("relu6", "bottleneck"),
    ("linear", "expansion"),
    ("linear", "none"),
)
SHORT = {"mobilenet_v1": "v1", "mobilenet_v2": "v2", "resnet50": "resnet50", "vgg16": "vgg16"}


@dataclass(frozen=True)
class Variant:
    """One model configuration of the study (a ModelConfig without the dataset's sizes)."""

    model: str
    width: float = 1.0
    resolution: int = 28
    small_input: bool = True
    conv_type: str = "separable"
    bottleneck_activation: str = "linear"
    shortcut: str = "bottleneck"
    expansion_activation: str = "nonlinear"  # "linear": no ReLU6 after V2's expansion
    imagenet: bool = False  # 3 channels and 1000 classes (the papers' ImageNet shape)

    @property
    def key(self) -> str:
        parts = [SHORT[self.model]]
        if self.model in ("mobilenet_v1", "mobilenet_v2"):
            parts.append(f"a{self.width:g}")
        parts.append(f"r{self.resolution}")
        if self.conv_type != "separable":
            parts.append(self.conv_type)
        if self.bottleneck_activation != "linear":
            parts.append(f"{self.bottleneck_activation}-bottleneck")
        if self.shortcut != "bottleneck":
            parts.append(f"shortcut-{self.shortcut}")
        if self.expansion_activation != "nonlinear":
            parts.append(f"{self.expansion_activation}-expansion")
        if self.imagenet:
            parts.append("imagenet")
        return "-".join(parts)

    def options(self) -> dict[str, Any]:
        """The model options as ``fit()`` keywords (defaults left out)."""
        kw: dict[str, Any] = {"resolution": self.resolution, "small_input": self.small_input}
        if self.model in ("mobilenet_v1", "mobilenet_v2"):
            kw["width_mult"] = self.width
        for k in ("conv_type", "bottleneck_activation", "shortcut", "expansion_activation"):
            default = Variant.__dataclass_fields__[k].default
            if getattr(self, k) != default:
                kw[k] = getattr(self, k)
        return kw

    def config(self, num_classes: int, in_chans: int) -> ModelConfig:
        """The ModelConfig this variant trains (or, for ``imagenet``, the papers' shape)."""
        if self.imagenet:
            num_classes, in_chans = 1000, 3
        extra = self.options()
        return ModelConfig(name=self.model, num_classes=num_classes, in_chans=in_chans, **extra)


@dataclass(frozen=True)
class Training:
    """The training settings every cell of a study shares."""

    data: str
    epochs: int
    batch_size: int
    max_train_samples: int | None
    max_eval_samples: int | None
    recipe: str = "modern"
    lr: float | None = None
    ema: bool | None = None
    device: str | None = None
    val_split: int | None = None  # training images held out for selection (--val-split)

    def options(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"recipe": self.recipe}
        for k in ("lr", "ema", "max_train_samples", "max_eval_samples", "val_split", "device"):
            if getattr(self, k) is not None:
                kw[k] = getattr(self, k)
        return kw


@dataclass(frozen=True)
class Cell:
    """One trained run: a variant, a seed, and where its run folder lives."""

    variant: Variant
    seed: int

    @property
    def id(self) -> str:
        return f"{self.variant.key}-s{self.seed}"

    def folder(self, out: str | Path) -> Path:
        return Path(out) / "cells" / self.id

    def fit_kwargs(self, training: Training, out: str | Path) -> dict[str, Any]:
        """Everything ``fit()`` receives for this cell (also the source of the plan command)."""
        return {
            "model": self.variant.model,
            "data": training.data,
            "out": str(self.folder(out)),
            "epochs": training.epochs,
            "batch_size": training.batch_size,
            **self.variant.options(),
            **training.options(),
            "seed": self.seed,
            "resume": True,
            "quiet": True,
        }

    def command(self, training: Training, out: str | Path) -> list[str]:
        """The same run as one ``mobilenets train ...`` command line."""
        cmd = ["mobilenets", "train"]
        for k, v in self.fit_kwargs(training, out).items():
            flag = "--width" if k == "width_mult" else "--" + k.replace("_", "-")
            if v is True:
                cmd.append(flag)
            elif v is not False and v is not None:
                cmd += [flag, f"{v:g}" if isinstance(v, float) else str(v)]
        return cmd

    def done(self, out: str | Path) -> bool:
        """Finished: its ``summary.json`` parses as a run summary with a test accuracy (a
        damaged one is not finished: ``fit(resume=True)`` finishes the run again)."""
        return read_summary(self.folder(out)) is not None

    def damage(self, out: str | Path, summary: bool = True) -> str | None:
        """Why this cell's records in ``out`` cannot be used (a ``run.json``, or with
        ``summary`` a ``summary.json``, that exists but does not parse as one); None when they
        are fine or absent."""
        folder = self.folder(out)
        path = folder / "summary.json"
        if summary and path.exists() and read_summary(folder) is None:
            return f"{path} is damaged (not a run summary with final_test_top1)"
        record = folder / RECORD
        if record.exists():
            try:
                stored = json.loads(record.read_text())
                ok = isinstance(stored, dict) and isinstance(stored.get("defining"), dict)
            except (OSError, ValueError):
                ok = False
            if not ok:
                return f"{record} is damaged (not a run record with 'defining' values)"
        return None

    def mismatch(self, training: Training, out: str | Path, dataset: Any = None) -> str | None:
        """What differs between this cell's finished run in ``out`` (its ``run.json``) and the
        run this study would train: the epochs, then the whole run record
        (:attr:`mobilenets.runplan.RunPlan.record`: model, data, recipe, lr, seed, batch,
        splits); None when they agree or nothing was recorded yet. ``dataset``: the loaded
        ``training.data`` (loaded here when not given)."""
        from ..runplan import TrainArgs, resolve_run

        try:
            stored = json.loads((self.folder(out) / RECORD).read_text())
        except (OSError, ValueError):
            return None  # not started, or resume reports the damage
        stored = stored if isinstance(stored, dict) else {}
        if stored.get("epochs") != training.epochs:  # first: the lr and EMA follow from it
            return f"epochs {stored.get('epochs')} (this study: {training.epochs})"
        kw, options = self.fit_kwargs(training, out), self.variant.options()
        args = TrainArgs(**{k: v for k, v in kw.items() if k not in options}, model_options=options)
        record = resolve_run(args, dataset or _load_dataset(training.data), world=1).record
        old = stored.get("defining")
        old = old if isinstance(old, dict) else {}
        old = {**old, "model": current_dict(old.get("model"))}  # older config schemas upgrade
        for key, new in record.items():
            if old.get(key) != new:
                return _differs(key, old.get(key), new)
        return None


def read_summary(folder: Path) -> dict[str, Any] | None:
    """A run folder's ``summary.json`` when it parses as a dict with a numeric
    ``final_test_top1`` in [0, 1]; None when it is missing or damaged."""
    try:
        s = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(s, dict):
        return None
    acc = s.get("final_test_top1")
    ok = isinstance(acc, (int, float)) and not isinstance(acc, bool) and 0 <= acc <= 1
    return s if ok else None


@dataclass
class Grid:
    """Every variant by section, and the cells to train."""

    preset: str
    training: Training
    seeds: int
    sections: dict[str, list[Variant]] = field(default_factory=dict)
    trained: set[Variant] = field(default_factory=set)  # variants with cells
    seeded: set[Variant] = field(default_factory=set)  # variants trained with every seed
    latency: list[Variant] = field(default_factory=list)
    degradation: dict[str, Variant] = field(default_factory=dict)

    @property
    def cells(self) -> list[Cell]:
        seen: dict[str, Cell] = {}
        for section in self.sections.values():
            for v in section:
                if v not in self.trained:
                    continue
                for s in range(self.seeds if v in self.seeded else 1):
                    seen.setdefault(Cell(v, s).id, Cell(v, s))
        return list(seen.values())

    def to_dict(self, out: str | Path) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "training": asdict(self.training),
            "seeds": self.seeds,
            "cells": [
                {
                    "id": c.id,
                    "variant": c.variant.key,
                    "seed": c.seed,
                    "out": c.folder(".").as_posix(),  # relative to the study folder
                    "command": shlex.join(c.command(self.training, out)),
                }
                for c in self.cells
            ],
        }


def imagenet_shape(v: Variant) -> Variant:
    """``v`` in the papers' ImageNet shape: 224 px, 3 channels, 1000 classes."""
    return replace(v, resolution=224, small_input=False, imagenet=True)


RHO_224 = (224, 192, 160, 128)  # the V1 paper's Table 7 resolutions


def rho_224(grid: Grid) -> list[Variant]:
    """V1 α=1 at the V1 paper's Table 7 resolutions, 3 channels, 1000 classes (costs only)."""
    v = imagenet_shape(replace(grid.sections["rho"][0], width=1.0))
    return [replace(v, resolution=r) for r in RHO_224]


def cost_only(grid: Grid) -> list[Variant]:
    """Variants measured by ``profile()`` only (never trained): the α grid of V1 and V2 and
    the ρ grid, in the papers' ImageNet shape."""
    return [imagenet_shape(v) for v in grid.sections["alpha"]] + rho_224(grid)


def data_shape(spec: str) -> tuple[int, bool, tuple[int, ...]]:
    """(native resolution, small_input, the ρ grid) for a ``--data`` spec, without loading it."""
    from ..data import parse_spec

    kind, _ = parse_spec(spec)
    if kind == "imagefolder":
        return 224, False, (224, 192, 160, 128)
    res = 28 if kind == "fashion-mnist" else 32
    return res, True, (res, res - 4, res - 8, res - 12)


def preset_training(
    preset: str, data: str, epochs: int | None, device: str | None, val_split: int | None = None
) -> Training:
    """The training settings of ``preset`` (quick: see QUICK_* below). ``val_split``: the
    training images held out for selection (default: the preset's; 0: none)."""
    quick = preset == "quick"
    if val_split is None:
        val_split = QUICK_VAL_SPLIT if quick else PAPER_VAL_SPLIT
    return Training(
        data=data,
        epochs=epochs or (1 if quick else 10),
        batch_size=QUICK_BATCH if quick else 256,
        max_train_samples=QUICK_TRAIN_SAMPLES if quick else None,
        max_eval_samples=QUICK_EVAL_SAMPLES if quick else None,
        lr=QUICK_LR if quick else None,
        ema=False if quick else None,
        device=device,
        val_split=val_split or None,
    )


def build_grid(
    preset: str,
    data: str,
    epochs: int | None = None,
    seeds: int | None = None,
    device: str | None = None,
    val_split: int | None = None,
) -> Grid:
    """The cells and variants of ``preset`` for ``data`` (sections named as in the report)."""
    if preset not in PRESETS:
        raise UsageError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    quick = preset == "quick"
    res, small, rhos = data_shape(data)
    training = preset_training(preset, data, epochs, device, val_split)
    g = Grid(preset, training, seeds or (QUICK_SEEDS if quick else 3))
    v = variant_factory(res, small)
    a_small = 0.25 if quick else 1.0  # α of the ρ grid and the V1 degradation model
    a_v2 = 0.35 if quick else 1.0  # α of the V2 ablations
    g.sections["alpha"] = [v("mobilenet_v1", a) for a in V1_ALPHAS] + [
        v("mobilenet_v2", a) for a in V2_ALPHAS
    ]
    g.sections["rho"] = [replace(v("mobilenet_v1", a_small), resolution=r) for r in rhos]
    g.sections["baselines"] = [
        v("mobilenet_v1", 1.0),
        v("mobilenet_v2", 1.0),
        v("resnet50", 1.0),
        v("vgg16", 1.0),
    ]
    g.sections["imagenet"] = [
        replace(x, resolution=224, small_input=False, imagenet=True)
        for x in g.sections["baselines"] + [v("mobilenet_v1", 1.0, conv_type="full")]
    ]
    g.sections["conv"] = [v("mobilenet_v1", 1.0), v("mobilenet_v1", 1.0, conv_type="full")]
    g.sections["ablation"] = [
        v("mobilenet_v2", a_v2, bottleneck_activation=b, shortcut=s) for b, s in ABLATIONS
    ]
    v2_sections(g, v("mobilenet_v2", a_v2))
    if not quick:
        g.trained = set(g.sections["alpha"]) | set(g.sections["baselines"])
        g.trained |= set(g.sections["conv"]) | set(g.sections["dwconv"][:2])
        # every cell whose ordering a verdict uses gets every seed (α and ρ included)
        g.seeded = set(g.sections["baselines"]) | set(g.sections["conv"])
        g.seeded |= set(g.sections["alpha"]) | set(g.sections["rho"])
        g.seeded |= set(g.sections["dwconv"][:2])
    g.trained |= set(g.sections["rho"]) | set(g.sections["ablation"])
    g.trained |= set(g.sections["expansion"])
    g.seeded |= set(g.sections["ablation"]) | set(g.sections["expansion"])
    g.degradation = {
        "V1": v("mobilenet_v1", a_small),
        "V2": v("mobilenet_v2", a_v2),
        "V2, no shortcut": v("mobilenet_v2", a_v2, shortcut="none"),
    }
    # Latency: every variant in paper; in quick only the models a verdict uses: the baselines
    # ("much faster") and VGG16 in the source's shape (its file size, "512 MB"). Each timing
    # exports to ONNX (torch.export: ~10 s per model) and calibrates int8.
    if quick:
        g.latency = [*g.sections["baselines"], g.sections["imagenet"][3]]
    else:
        timed = ("alpha", "rho", "baselines", "conv", "imagenet")
        g.latency = list(dict.fromkeys(x for k in timed for x in g.sections[k]))
    return g


def v2_sections(g: Grid, v2: Variant) -> None:
    """The two V2 block ablations beside Fig. 6, around ``v2`` (the ablations' V2):
    ``dwconv``: V2 and V2 with a standard 3x3 in every block at the data's shape (trained in
    paper only: ~16x the MACs at α=0.35, 28 px), then both at 224 px with 1000 classes (cost
    only); ``expansion``: V2 and V2 without the expansion's ReLU6 (trained in both presets)."""
    full = replace(v2, conv_type="full")
    big = replace(v2, width=1.0)
    g.sections["dwconv"] = [v2, full, imagenet_shape(big), imagenet_shape(replace(full, width=1.0))]
    g.sections["expansion"] = [v2, replace(v2, expansion_activation="linear")]


# quick: 4,096 training images (drawn after holding out 2,000 for validation), the full
# 10,000-image test set, batch 32 without EMA, 1 epoch, 5 seeds of the V2 ablation cells
# (Fig. 6's four and V2 without the expansion's ReLU6, which was not in the sweep: it trains at
# the same lr as every other variant).
# The learning rate is chosen on the VALIDATION split only, by one rule for every variant
# (choose_lr: the candidate with the highest mean over variants of their mean validation top-1),
# from the sweep below: fit(..., val_split=2000, max_train_samples=4096, batch 32, 1 epoch,
# ema False) on Fashion-MNIST, seeds 100 and 101 (not the study's seeds 0-4), for the four
# ablation variants (V2 α=0.35) and the ρ cells' V1 α=0.25, all at 28 px. No test image was used.
QUICK_TRAIN_SAMPLES = 4096
QUICK_EVAL_SAMPLES = None  # the full test set
QUICK_VAL_SPLIT = 2000
PAPER_VAL_SPLIT = 5000
QUICK_BATCH = 32
QUICK_SEEDS = 5
# lr -> variant key -> validation top-1 of seeds 100, 101 (mean over variants: 0.1 -> 65.5%,
# 0.05 -> 73.5%, 0.025 -> 69.9%; V1 α=0.25 alone would prefer 0.1, the rule does not tune per variant)
QUICK_LR_SWEEP: dict[float, dict[str, list[float]]] = {
    0.1: {
        "v2-a0.35-r28": [0.642, 0.6655],
        "v2-a0.35-r28-relu6-bottleneck": [0.702, 0.6875],
        "v2-a0.35-r28-shortcut-expansion": [0.6025, 0.609],
        "v2-a0.35-r28-shortcut-none": [0.6055, 0.584],
        "v1-a0.25-r28": [0.7225, 0.7255],
    },
    0.05: {
        "v2-a0.35-r28": [0.746, 0.7505],
        "v2-a0.35-r28-relu6-bottleneck": [0.739, 0.766],
        "v2-a0.35-r28-shortcut-expansion": [0.731, 0.7205],
        "v2-a0.35-r28-shortcut-none": [0.7105, 0.738],
        "v1-a0.25-r28": [0.71, 0.7405],
    },
    0.025: {
        "v2-a0.35-r28": [0.74, 0.7615],
        "v2-a0.35-r28-relu6-bottleneck": [0.714, 0.673],
        "v2-a0.35-r28-shortcut-expansion": [0.7425, 0.7165],
        "v2-a0.35-r28-shortcut-none": [0.675, 0.7305],
        "v1-a0.25-r28": [0.611, 0.627],
    },
}
QUICK_LR = 0.05


def choose_lr(sweep: dict[float, dict[str, list[float]]]) -> float:
    """The learning rate whose validation top-1, averaged per variant and then over variants
    (every variant weighs the same), is highest; ties go to the smaller lr. Every variant is
    trained at the chosen lr: no variant gets its own tuning."""
    if not sweep or any(not per or not all(per.values()) for per in sweep.values()):
        raise ValueError("choose_lr needs, for every lr, every variant's validation top-1")
    names = {frozenset(per) for per in sweep.values()}
    if len(names) != 1:
        raise ValueError("choose_lr needs the same variants at every lr")
    score = {
        lr: round(float(np.mean([np.mean(v) for v in per.values()])), 9)
        for lr, per in sweep.items()
    }
    return max(sorted(score), key=lambda lr: (score[lr], -lr))


def variant_factory(res: int, small: bool):
    """A Variant factory pinned to the data's resolution and ``small_input``."""

    def make(model: str, width: float = 1.0, **kw: Any) -> Variant:
        return Variant(model, width, res, small, **kw)

    return make


# ---------------------------------------------------------------- the adapter to training


def run_cell(cell: Cell, training: Training, out: str | Path, dataset: Any) -> dict[str, Any]:
    """Train one cell with ``mobilenets.fit`` on an already loaded ``dataset``; its summary.

    A cell whose folder holds a checkpoint but no summary resumes from it.
    """
    from ..train import fit

    kw = cell.fit_kwargs(training, out)
    kw.pop("data")  # the spec: the plan's commands load it; here it is already loaded
    return fit(kw.pop("model"), dataset, kw.pop("out"), **kw)


def _load_dataset(spec: str) -> Any:
    """The dataset of ``spec``, loaded once per process (the cells of a study share it)."""
    if spec not in _DATASETS:
        from ..data import load_dataset

        _DATASETS[spec] = load_dataset(spec)
    return _DATASETS[spec]


_DATASETS: dict[str, Any] = {}


def _differs(key: str, old: Any, new: Any) -> str:
    """``key old (this study: new)``, naming the first differing field of a dict value."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                return f"{key} {k} {old.get(k)} (this study: {new.get(k)})"
    return f"{key} {old} (this study: {new})"
