"""What a training run is, decided before its first step: :func:`resolve_run` -> :class:`RunPlan`.

The argument checks (one path for the CLI and :func:`mobilenets.fit`), the recipe with its
overrides, the learning rate, the model configuration, the splits and the run-length
adaptation. :attr:`RunPlan.record` is what ``run.json`` stores (``--resume`` and the study
compare it).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .config import MAX_WIDTH_MULT, MOBILENET_ONLY, MOBILENETS, ModelConfig, model_flag
from .engine import RECIPES, Recipe, adapt_to_length, derive_seed
from .errors import UsageError

PLOTS = ("end", "none")


def _cpus() -> int:
    return min(8, os.cpu_count() or 1)


@dataclass
class TrainArgs:
    """Everything a training run needs: the CLI flags, as Python values, defined once.

    ``model`` is a model name (with ``model_options``: ModelConfig fields) or a whole
    :class:`ModelConfig`. ``data`` is a ``--data`` spec or a loaded :class:`mobilenets.data.Dataset`.
    Values are checked by :func:`check_args` (the CLI parses them with plain ``int``/``float``).
    """

    model: str | ModelConfig
    data: Any  # str | Dataset
    out: str
    epochs: int
    batch_size: int | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    recipe: str = "modern"
    lr: float | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None
    ema: bool | None = None
    ema_decay: float | None = None
    ema_every: int | None = None
    seed: int = 0
    device: str | None = None
    resume: bool = False
    pretrained: str | None = None
    val_split: int = 0
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    skip_bad_images: bool = False
    sync_bn: bool = False
    compile: bool = False
    save_every: int = 1
    plots: str = "end"
    workers: int = field(default_factory=_cpus)
    quiet: bool = False
    command: list[str] = field(default_factory=list)


# Integer options: (the smallest value, whether None is allowed).
INT_OPTIONS = {
    "save_every": (1, False),
    "ema_every": (1, True),
    "val_split": (0, False),
    "max_train_samples": (1, True),
    "max_eval_samples": (1, True),
    "workers": (0, False),
}


def option_error(name: str, value: float | None) -> str | None:
    """Why ``value`` is out of range for the training option ``name`` (``None``: it is fine)."""
    if value is None:
        return None
    if name in ("label_smoothing", "ema_decay"):
        ok, rule = 0 <= value < 1, "in [0, 1)"
    elif name == "weight_decay":
        ok, rule = 0 <= value < math.inf, "a finite number >= 0"
    elif name == "width_mult":
        ok, rule = 0 < value <= MAX_WIDTH_MULT, f"in (0, {MAX_WIDTH_MULT:g}]"
    else:
        return None
    return None if ok else f"must be {rule}, got {value}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_args(a: TrainArgs, world: int = 1) -> int:
    """Refuse bad values in one line naming the flag; returns the global batch size."""
    if a.recipe not in RECIPES:
        raise UsageError(f"unknown recipe {a.recipe!r}; choose from {', '.join(RECIPES)}")
    if not _is_int(a.epochs) or a.epochs < 1 or (a.batch_size is not None and a.batch_size < 1):
        raise UsageError("--epochs and --batch-size must be >= 1")
    if a.batch_size is not None and not _is_int(a.batch_size):
        raise UsageError(f"--batch-size must be an integer >= 1, got {a.batch_size!r}")
    if a.lr is not None and not 0 < a.lr < math.inf:
        raise UsageError(f"--lr must be a finite number > 0, got {a.lr}")
    if a.plots not in PLOTS:
        raise UsageError(f"--plots must be end or none, got {a.plots!r}")
    for name, (lo, optional) in INT_OPTIONS.items():
        v = getattr(a, name)
        if not (v is None and optional) and (not _is_int(v) or v < lo):
            raise UsageError(f"--{name.replace('_', '-')} must be an integer >= {lo}, got {v!r}")
    values = {**a.model_options, **vars(a)}
    for name in ("width_mult", "weight_decay", "label_smoothing", "ema_decay"):
        err = option_error(name, values.get(name))
        if err:
            raise UsageError(f"{model_flag(name)} {err}")
    batch = a.batch_size or RECIPES[a.recipe].batch_size
    if batch % world:
        raise UsageError(f"--batch-size {batch} (global) is not divisible by {world} ranks")
    return batch


def resolve_recipe(a: TrainArgs) -> Recipe:
    """The recipe named by ``--recipe`` with the given overrides."""
    r = RECIPES[a.recipe]
    changes: dict[str, Any] = {}
    if a.weight_decay is not None:
        changes["weight_decay"] = a.weight_decay
    if a.label_smoothing is not None:
        changes["label_smoothing"] = a.label_smoothing
    if a.ema_every is not None:
        changes["ema_every"] = a.ema_every
    if a.ema is False:
        changes["ema_decay"] = None
    elif a.ema or a.ema_decay is not None:
        changes["ema_decay"] = a.ema_decay if a.ema_decay is not None else (r.ema_decay or 0.9999)
    return replace(r, **changes)


def model_config(a: TrainArgs, ds: Any) -> tuple[ModelConfig, str]:
    """The model's config and why small_input is what it is (for the log and summary)."""
    n = len(ds.class_names)
    if isinstance(a.model, ModelConfig):
        if a.model.num_classes != n:
            raise UsageError(
                f"the ModelConfig has {a.model.num_classes} classes but {ds.name} has {n}"
            )
        return a.model, "set by the given ModelConfig"
    opts = dict(a.model_options)
    if a.model not in MOBILENETS:
        wrong = [model_flag(k) for k in MOBILENET_ONLY if k in opts]
        if wrong:
            raise UsageError(f"{', '.join(wrong)} apply only to MobileNets, not to {a.model}")
    if opts.get("num_classes", n) != n:
        raise UsageError(
            f"--num-classes {opts['num_classes']} does not match {ds.name}'s {n} classes"
        )
    opts.update(num_classes=n)
    opts.setdefault("resolution", ds.resolution)
    opts.setdefault("in_chans", ds.channels)
    if "small_input" in opts:
        why = f"--{'' if opts['small_input'] else 'no-'}small-input given"
    else:
        opts["small_input"] = ds.small_input
        kind = "small-image" if ds.small_input else "full-size"
        why = f"{ds.name}'s default (a {kind} dataset), at any resolution"
    return ModelConfig(name=a.model, **opts), why


def _eval_subset(split: Any, n: int, seed: int, salt: int) -> Any:
    if n >= len(split):
        return split
    pick = torch.randperm(
        len(split), generator=torch.Generator().manual_seed(derive_seed(seed, salt))
    )
    return split.subset(pick[:n].sort().values)


def splits(a: TrainArgs, ds: Any) -> tuple[Any, Any, Any, str]:
    """(train, selection, test) splits after --val-split and the sample limits, and the
    selection split's name (``val`` or ``test``)."""
    from .data import holdout

    train_split, test_split = ds.split("train"), ds.split("test")
    val_split = None
    if a.val_split:
        train_split, val_split = holdout(train_split, a.val_split, a.seed)
    if a.max_train_samples and a.max_train_samples < len(train_split):
        gen = torch.Generator().manual_seed(derive_seed(a.seed, 1))
        pick = torch.randperm(len(train_split), generator=gen)
        train_split = train_split.subset(pick[: a.max_train_samples].sort().values)
    if a.max_eval_samples:
        test_split = _eval_subset(test_split, a.max_eval_samples, a.seed, 2)
        if val_split is not None:
            val_split = _eval_subset(val_split, a.max_eval_samples, a.seed, 3)
    if val_split is None:
        return train_split, test_split, test_split, "test"
    return train_split, val_split, test_split, "val"


@dataclass(frozen=True)
class RunPlan:
    """Everything decided before the first step (see :func:`resolve_run`)."""

    args: TrainArgs
    world: int
    batch: int  # the global batch
    recipe: Recipe  # with the overrides and the run-length adaptation
    lr: float  # the peak lr for the global batch
    augment: bool
    length_why: str
    cfg: ModelConfig
    small_why: str
    data_spec: str
    train: Any  # data.Split
    sel: Any
    test: Any
    sel_name: str

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch."""
        return self.n_train // self.batch

    @property
    def record(self) -> dict[str, Any]:
        """The values that define this run, as ``run.json`` stores them."""
        from .data import parse_spec

        a = self.args
        kind, path = parse_spec(self.data_spec)
        return {
            "model": self.cfg.to_dict(),
            "data": f"{kind}:{Path(path).resolve()}" if path else kind,
            "data_dir": str(Path(a.data_dir).resolve()) if a.data_dir else None,
            "recipe": asdict(self.recipe),
            "lr": self.lr,
            "seed": a.seed,
            "batch_size": self.batch,
            "val_split": a.val_split,
            "max_train_samples": a.max_train_samples,
            "max_eval_samples": a.max_eval_samples,
        }


def resolve_run(args: TrainArgs, dataset: Any, world: int | None = None) -> RunPlan:
    """Check ``args`` against ``dataset`` (a loaded :class:`mobilenets.data.Dataset`) and decide
    the run: recipe, lr, model config, splits. ``world``: the ranks (default: ``$WORLD_SIZE``)."""
    world = world if world is not None else int(os.environ.get("WORLD_SIZE", "1"))
    batch = check_args(args, world)
    recipe = resolve_recipe(args)
    cfg, small_why = model_config(args, dataset)
    train, sel, test, sel_name = splits(args, dataset)
    steps = len(train) // batch
    if steps == 0:
        raise UsageError(f"--batch-size {batch} is larger than the {len(train)} training images")
    given = {k for k in ("lr", "label_smoothing") if getattr(args, k) is not None}
    if args.ema is not None or args.ema_decay is not None:
        given.add("ema")
    length = adapt_to_length(recipe, args.epochs, steps * args.epochs, frozenset(given))
    recipe = length.recipe
    lr = args.lr if args.lr is not None else recipe.lr * batch / recipe.lr_batch
    lr *= length.lr_scale
    return RunPlan(
        args, world, batch, recipe, lr, length.augment, length.why, cfg, small_why,
        dataset.spec, train, sel, test, sel_name,
    )  # fmt: skip


def check_fit_types(config: Any, data: Any, epochs: Any, batch_size: Any) -> None:
    """:func:`mobilenets.fit` misuse: TypeError/ValueError naming the argument and what it takes."""
    from .data import Dataset

    if not isinstance(config, (ModelConfig, str)):
        raise TypeError(
            f"fit(config=...): expected a ModelConfig or a model name, got {type(config).__name__}"
            + (" (pass its .config, or a name)" if isinstance(config, torch.nn.Module) else "")
        )
    if not isinstance(data, (Dataset, str)):
        raise TypeError(
            f"fit(data=...): expected a mobilenets.data.Dataset or a --data spec string, "
            f"got {type(data).__name__}"
        )
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if v is None and name == "batch_size":
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"fit({name}=...): expected an integer >= 1, got {v!r}")
        if v < 1:
            raise ValueError(f"fit({name}=...): expected an integer >= 1, got {v}")
