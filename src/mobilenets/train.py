"""``mobilenets train``: train a model on a dataset, on one process or many (torchrun).

Single process::

    mobilenets train --model mobilenet_v2 --data fashion-mnist --epochs 10 --batch-size 256 --out runs/v2

One machine, K processes (``--batch-size`` is the global batch, split across ranks; ``--lr`` is
for the global batch)::

    torchrun --nproc_per_node K -m mobilenets train --model mobilenet_v2 --data fashion-mnist \\
        --epochs 10 --batch-size 1024 --out runs/v2

Several machines: run the same command on every node, with the same rendezvous endpoint
(``host:port`` of any one node) and a job id::

    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint node0:29400 \\
        --rdzv-id job42 -m mobilenets train --model mobilenet_v2 --data imagefolder:/data/imagenet \\
        --epochs 90 --batch-size 4096 --out /shared/runs/v2

NCCL is used on CUDA, gloo on CPU. Every rank reads a disjoint shard of each epoch (the same
seeded permutation everywhere, rank r takes its slice of every global batch); rank 0 alone logs
and writes checkpoints, so ``--out`` must be on a file system that rank 0 can write (and that
every rank can read for ``--resume``).

Outputs in ``--out``: ``metrics.jsonl`` (one line per epoch), ``curves.png``, checkpoint folders
``epoch-NNNN.ckpt`` (the last and the best epoch's) with the links ``last.ckpt`` and ``best.ckpt``,
``run.json`` (the values that define the run, checked by ``--resume``) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .config import MOBILENETS, ModelConfig
from .engine import (  # noqa: F401 - re-exported: the recipes and optimizer live in the engine
    RECIPES,
    DeviceImages,
    EpochStats,
    EvalSet,
    ModelEma,
    Recipe,
    RMSpropTF,
    RunState,
    adapt_to_length,
    bad_step_error,
    build_optimizer,
    check_finite_epoch,
    cross_entropy,
    device_batches,
    ema_decay_at,
    evaluate_split,
    lr_at,
    make_train_step,
    param_groups,
    recalibrate_bn,
    train_one_epoch,
)
from .errors import MobilenetsError, UsageError

KILL_AT_STEP = "MOBILENETS_KILL_AT_STEP"  # tests: SIGKILL the run after that optimizer step
# --compile's torch.compile backend (default inductor); CPU smoke runs use aot_eager, which
# traces the same whole step in seconds instead of minutes of C++ compilation.
COMPILE_BACKEND = "MOBILENETS_COMPILE_BACKEND"
PRECISE_BN_IMAGES = 2048  # training images that re-estimate BN statistics after each epoch


def _opt(default: Any = None, help: str | None = None, **argparse_kw: Any) -> Any:
    """A TrainArgs field with its flag's argparse keywords (the one definition of both)."""
    meta = {"help": help, **argparse_kw}
    if callable(default) and not isinstance(default, type):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def _cpus() -> int:
    return min(8, os.cpu_count() or 1)


def _types():
    from .cli.args import float_range, int_at_least, positive_float

    return float_range, int_at_least, positive_float


@dataclass
class TrainArgs:
    """Everything a training run needs: the CLI flags, as Python values, defined once.

    ``model`` is a model name (with ``model_options``: ModelConfig fields, the flags that
    :func:`mobilenets.cli.add_model_args` generates) or a whole :class:`ModelConfig`.
    ``data`` is a ``--data`` spec or an already loaded :class:`mobilenets.data.Dataset`.
    The flags of the other fields come from their metadata (see :func:`register`).
    """

    model: str | ModelConfig
    data: Any  # str | Dataset
    out: str
    epochs: int
    batch_size: int | None = _opt(
        None,
        "global batch, split across ranks (default: the recipe's, 256; fast: 1024)",
        type="int>=1",
    )
    model_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    recipe: str = _opt(
        "modern",
        "modern: SGD Nesterov, warm-up + cosine, label smoothing 0.1, EMA; long: modern + random erasing and weight decay 5e-4 for long runs on small data; fast: batch 1024, lr scaled to 0.8; paper: TF RMSprop, lr 0.045 per 96 images x0.98 per epoch",
        choices=tuple(RECIPES),
    )
    lr: float | None = _opt(
        None,
        "peak learning rate for the global batch (default: the recipe's, scaled)",
        type="positive",
    )
    weight_decay: float | None = _opt(None, ">= 0", type="weight_decay")
    label_smoothing: float | None = _opt(None, "in [0, 1)", type="label_smoothing")
    ema: bool | None = _opt(
        None, "EMA of the weights (default: per recipe)", action=argparse.BooleanOptionalAction
    )
    ema_decay: float | None = _opt(None, "in [0, 1)", type="ema_decay")
    ema_every: int | None = _opt(
        None,
        "update the EMA every K optimizer steps (default: the recipe's)",
        type="int>=1",
        metavar="K",
    )
    seed: int = _opt(0, None, type=int)
    device: str | None = None
    resume: bool = _opt(False, "continue the run in --out from last.ckpt", action="store_true")
    pretrained: str | None = _opt(
        None, "initial weights (torchvision/timm/mobilenets)", metavar="PATH"
    )
    val_split: int = _opt(
        0, "hold out N training images for model selection", type="int>=0", metavar="N"
    )
    max_train_samples: int | None = _opt(None, None, type="int>=1", metavar="N")
    max_eval_samples: int | None = _opt(
        None, "quick runs: evaluate on N images", type="int>=1", metavar="N"
    )
    skip_bad_images: bool = False
    sync_bn: bool = _opt(False, None, action="store_true")
    compile: bool = _opt(False, "torch.compile the whole training step", action="store_true")
    save_every: int = _opt(
        1, "write a checkpoint every N epochs (and after the last)", type="int>=1", metavar="N"
    )
    plots: str = _opt("end", "curves.png after the last epoch, or never", choices=("end", "none"))
    workers: int = field(default_factory=_cpus)
    quiet: bool = _opt(False, None, action="store_true")
    command: list[str] = field(default_factory=list)


# TrainArgs fields whose flags come from the CLI's shared helpers, or that are no flags.
SHARED_FLAGS = ("model", "data", "data_dir", "workers", "skip_bad_images", "device")
NOT_FLAGS = ("model_options", "command")


def _arg_type(name: str):
    float_range, int_at_least, positive_float = _types()
    if name.startswith("int>="):
        return int_at_least(int(name[5:]))
    if name == "positive":
        return positive_float
    return _option_type(name)


MAX_WIDTH = 4.0  # alpha beyond this gives layers of thousands of channels (cli.MAX_WIDTH_MULT)


def option_error(name: str, value: float | None) -> str | None:
    """Why ``value`` is out of range for the training option ``name`` (``None``: it is fine).

    One rule for the CLI flags and for :func:`fit`'s keyword arguments.
    """
    if value is None:
        return None
    if name in ("label_smoothing", "ema_decay"):
        ok, rule = 0 <= value < 1, "in [0, 1)"
    elif name == "weight_decay":
        ok, rule = 0 <= value < math.inf, "a finite number >= 0"
    elif name == "width_mult":
        ok, rule = 0 < value <= MAX_WIDTH, f"in (0, {MAX_WIDTH:g}]"
    else:
        return None
    return None if ok else f"must be {rule}, got {value}"


def _option_type(name: str):
    """An argparse ``type`` checking ``option_error`` (one line through the CLI's parser)."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        err = option_error(name, v)
        if err:
            raise argparse.ArgumentTypeError(err)
        return v

    parse.__name__ = name
    return parse


def fit(
    config: ModelConfig | str,
    data: Any,
    out: str | Path,
    epochs: int,
    batch_size: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train a model on a dataset for ``epochs``, writing checkpoints and logs to ``out``.

    Runs in-process, as many times as wanted (a grid of runs on one loaded dataset): each call
    releases its lock, threads and device memory, and restores the global settings it changed.

    Args:
        config: a :class:`ModelConfig`, or a model name (``mobilenet_v1``, ``mobilenet_v2``,
            ``resnet50``, ``vgg16``) whose options are given as ModelConfig keywords below
            (``width_mult``, ``resolution``, ``small_input``, ``conv_type``, ...; unset ones
            take the dataset's defaults).
        data: an already loaded :class:`mobilenets.data.Dataset` (``load_dataset(spec)``), or
            a spec: ``fashion-mnist``, ``cifar10:PATH``, ``cifar100:PATH``, ``imagefolder:PATH``.
        batch_size: the global batch (split across ranks under torchrun); default: the recipe's.
        options: ModelConfig fields (when ``config`` is a name) and any other :class:`TrainArgs`
            field (recipe, lr, seed, resume, val_split, max_train_samples, pretrained, ...).

    Returns:
        The run summary (also written to ``out/summary.json``); accuracies are fractions.
    """
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"name", "schema_version"}
    model_options = {k: options.pop(k) for k in list(options) if k in model_fields}
    unknown = sorted(
        set(options) - set(TrainArgs.__dataclass_fields__) | ({"model_options"} & set(options))
    )
    if unknown:
        raise UsageError(f"unknown training option(s): {', '.join(unknown)}")
    if isinstance(config, ModelConfig) and model_options:
        raise UsageError(
            f"give the model options ({', '.join(sorted(model_options))}) in the ModelConfig"
        )
    args = TrainArgs(
        model=config,
        data=data,
        out=str(out),
        epochs=epochs,
        batch_size=batch_size,
        model_options=model_options,
        **options,
    )
    return Trainer(args).run()


# ---------------------------------------------------------------- helpers


def hardware(device: torch.device | None = None) -> str:
    """A one-line description of the machine (CPU model and cores, GPU if used)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    if device is not None and device.type == "cuda":
        text = f"{torch.cuda.get_device_name(device)}; {text}"
    return text


def versions() -> dict[str, str]:
    import torchvision

    from ._version import __version__

    return {
        "mobilenets": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def _seed(*parts: int) -> int:
    """A 63-bit seed derived from integers, so each (seed, epoch, rank) stream is independent."""
    return int(
        np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1
    )


def _rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, pystate, pygauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {
            "version": version,
            "state": torch.tensor(pystate, dtype=torch.int64),
            "gauss": pygauss,
        },
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))


# ---------------------------------------------------------------- the trainer


def make_criterion(label_smoothing: float):
    """The training loss: cross-entropy with label smoothing."""
    return cross_entropy(label_smoothing)


# What a checkpoint's training_state.pt must hold to be resumed.
STATE_KEYS = (
    "epoch",
    "model",
    "optimizer",
    "scheduler",
    "ema",
    "rng",
    "best_val_top1",
    "best_epoch",
    "config",
    "global_batch",
    "train_images",
)


@dataclass
class RunData:
    """The run's data: the training split (on the device when in memory) and the eval sets."""

    train: Any  # data.Split
    train_images: DeviceImages | None
    sel: EvalSet
    test: EvalSet
    bad: Any  # data.BadImages


@dataclass
class Progress:
    """What the epoch loop has reached (restored on resume)."""

    start_epoch: int = 0
    best: float = -1.0
    best_epoch: int = 0
    best_saved: float = -1.0  # the best saved epoch's selection top-1 (best.ckpt's)
    history: list[dict[str, Any]] = field(default_factory=list)
    train_s: float = 0.0
    train_images: int = 0
    last_row: dict[str, Any] = field(default_factory=dict)
    test: dict[str, float] | None = None


class Trainer:
    """One training run; see the module docstring for the outputs."""

    def __init__(self, args: TrainArgs) -> None:
        self.args = args
        self.t0 = time.time()
        self.out = Path(args.out)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.main = self.rank == 0
        self.elapsed_before = 0.0  # wall time of the earlier processes of a resumed run
        self.lock = None  # rank 0's flock on --out/.lock

    # ---- setup

    def _device(self) -> torch.device:
        a = self.args
        kind = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if kind == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available")
        if kind == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def _check_args(self) -> None:
        a = self.args
        if a.recipe not in RECIPES:
            raise UsageError(f"unknown recipe {a.recipe!r}; choose from {', '.join(RECIPES)}")
        if a.epochs < 1 or (a.batch_size is not None and a.batch_size < 1):
            raise UsageError("--epochs and --batch-size must be >= 1")
        if a.lr is not None and not 0 < a.lr < math.inf:
            raise UsageError(f"--lr must be a finite number > 0, got {a.lr}")
        if a.plots not in ("end", "none"):
            raise UsageError(f"--plots must be end or none, got {a.plots!r}")
        for name in ("save_every", "ema_every"):
            v = getattr(a, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise UsageError(f"--{name.replace('_', '-')} must be an integer >= 1, got {v!r}")
        values = {**a.model_options, **vars(a)}
        for name in ("width_mult", "weight_decay", "label_smoothing", "ema_decay"):
            err = option_error(name, values.get(name))
            if err:
                from .cli.args import model_flag

                raise UsageError(f"{model_flag(name)} {err}")
        self.batch = a.batch_size or RECIPES[a.recipe].batch_size
        if self.batch % self.world:
            raise UsageError(
                f"--batch-size {self.batch} (global) is not divisible by {self.world} ranks"
            )

    def _resolve_recipe(self) -> Recipe:
        a, r = self.args, RECIPES[self.args.recipe]
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
            changes["ema_decay"] = (
                a.ema_decay if a.ema_decay is not None else (r.ema_decay or 0.9999)
            )
        return replace(r, **changes)

    def _model_config(self, ds) -> tuple[ModelConfig, str]:
        """The model's config and why small_input is what it is (for the log and summary)."""
        a, n = self.args, len(ds.class_names)
        if isinstance(a.model, ModelConfig):
            if a.model.num_classes != n:
                raise UsageError(
                    f"the ModelConfig has {a.model.num_classes} classes but {ds.name} has {n}"
                )
            return a.model, "set by the given ModelConfig"
        opts = dict(a.model_options)
        if a.model not in MOBILENETS:
            from .cli.args import MOBILENET_ONLY, model_flag

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

    def _build_model(self, cfg: ModelConfig) -> nn.Module:
        from .factory import create_model

        kw = {k: v for k, v in cfg.to_dict().items() if k != "schema_version"}
        return create_model(kw.pop("name"), pretrained=self.args.pretrained, **kw)

    def _record(self, cfg, recipe: Recipe, lr: float, ds) -> dict[str, Any]:
        """The values that define this run (see :mod:`mobilenets.runfolder`)."""
        from .data import parse_spec

        a = self.args
        kind, path = parse_spec(ds.spec)
        return {
            "model": cfg.to_dict(),
            "data": f"{kind}:{Path(path).resolve()}" if path else kind,
            "data_dir": str(Path(a.data_dir).resolve()) if a.data_dir else None,
            "recipe": asdict(recipe),
            "lr": lr,
            "seed": a.seed,
            "batch_size": self.batch,
            "val_split": a.val_split,
            "max_train_samples": a.max_train_samples,
            "max_eval_samples": a.max_eval_samples,
        }

    def _runtime(self) -> dict[str, Any]:
        """This process's options that may change between resumes (recorded in run.json)."""
        a = self.args
        return {
            "time": time.time(),
            "command": a.command,
            "device": self.device.type,
            "world_size": self.world,
            "workers": a.workers,
            "compile": a.compile,
            "sync_bn": a.sync_bn,
            "versions": versions(),
        }

    def _open_run(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """Lock ``--out`` (rank 0); return the verified training state to resume, or None."""
        from . import runfolder

        a = self.args
        if self.main:
            self.lock = runfolder.RunLock(self.out)
        found = runfolder.markers(self.out) if self.out.is_dir() else []
        if found and not a.resume:
            raise UsageError(
                f"{self.out} already holds a run ({', '.join(found[:3])}); pass --resume to "
                f"continue it or choose another --out"
            )
        if not found:
            if a.resume:
                self._log(f"--resume: no checkpoint in {self.out} yet, starting from scratch")
            return None
        _, state, note = runfolder.resume_point(self.out, STATE_KEYS)
        runfolder.check_record(self.out, record, a.epochs, started=True)
        if note:
            self._log(f"--resume: {note}")
        return state

    def _finished_summary(self, epoch: int) -> dict[str, Any] | None:
        """The run's summary when it has trained all its epochs and written one, else None."""
        if epoch < self.args.epochs:
            return None
        try:
            summary = json.loads((self.out / "summary.json").read_text())
        except (OSError, ValueError):
            return None  # killed before the summary was (fully) written: finish the run
        return summary if isinstance(summary, dict) else None

    def _check_state(self, state: dict[str, Any], cfg, batch: int, n_train: int) -> None:
        """Checks for runs recorded before run.json existed."""
        where = self.out / "last.ckpt"
        if state["config"] != cfg.to_dict():
            raise UsageError(f"--resume: {where} was trained with another model configuration")
        if state["global_batch"] != batch or state["train_images"] != n_train:
            raise UsageError(
                f"--resume: {where} was trained with another --batch-size or training set"
            )

    def _log(self, text: str) -> None:
        if self.main and not self.args.quiet:
            print(text, flush=True)

    # ---- the run

    def run(self) -> dict[str, Any]:
        self._check_args()
        distributed = self.world > 1
        self.device = self._device()
        created_group = distributed and not dist.is_initialized()
        if created_group:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        benchmark = torch.backends.cudnn.benchmark
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: autotuning pays after a few steps
        try:
            return self._run()
        finally:
            torch.backends.cudnn.benchmark = benchmark
            if self.lock is not None:
                self.lock.release()
            if created_group and dist.is_initialized():
                dist.destroy_process_group()

    def _run(self) -> dict[str, Any]:
        from .data import Dataset, load_dataset

        a = self.args
        self.recipe = self._resolve_recipe()
        ds = a.data if isinstance(a.data, Dataset) else load_dataset(a.data, a.data_dir)
        self.ds = ds
        cfg, small_why = self._model_config(ds)
        torch.manual_seed(a.seed)
        model = self._build_model(cfg)
        self.cfg, self.small_why = model.config, small_why
        train_split, sel_split, test_split = self._splits(ds)
        self.n_train = len(train_split)
        steps = self.n_train // self.batch
        if steps == 0:
            raise UsageError(
                f"--batch-size {self.batch} is larger than the {self.n_train} training images"
            )
        given = {k for k in ("lr", "label_smoothing") if getattr(a, k) is not None}
        if a.ema is not None or a.ema_decay is not None:
            given.add("ema")
        length = adapt_to_length(self.recipe, a.epochs, steps * a.epochs, frozenset(given))
        self.recipe, self.augment, self.length_why = length.recipe, length.augment, length.why
        self.lr = a.lr if a.lr is not None else self.recipe.lr * self.batch / self.recipe.lr_batch
        self.lr *= length.lr_scale
        self.steps = steps
        run = self._run_state(model, steps)
        record = self._record(self.cfg, self.recipe, self.lr, ds)
        state = self._open_run(record)
        progress = Progress()
        if state is not None:
            done = self._finished_summary(int(state["epoch"]))
            if done is not None:
                self._log(f"{self.out} is complete ({a.epochs} epochs); nothing to do")
                return done
            progress = self._restore(run, state)
        self._prepare_folder(record, state, progress)
        data = self._data(train_split, sel_split, test_split)
        self._wrap(run)
        self._log_start(run)
        for epoch in range(progress.start_epoch + 1, a.epochs + 1):
            self._epoch(run, data, progress, epoch)
        return self._end(run, data, progress)

    def _splits(self, ds):
        """(train, selection, test) splits after --val-split and the sample limits."""
        from .data import holdout

        a = self.args
        train_split, test_split = ds.split("train"), ds.split("test")
        val_split = None
        if a.val_split:
            train_split, val_split = holdout(train_split, a.val_split, a.seed)
        if a.max_train_samples and a.max_train_samples < len(train_split):
            pick = torch.randperm(
                len(train_split), generator=torch.Generator().manual_seed(_seed(a.seed, 1))
            )
            train_split = train_split.subset(pick[: a.max_train_samples].sort().values)
        if a.max_eval_samples:
            test_split = self._eval_subset(test_split, a.max_eval_samples, 2)
            if val_split is not None:
                val_split = self._eval_subset(val_split, a.max_eval_samples, 3)
        self.sel_name = "val" if val_split is not None else "test"
        return train_split, (val_split if val_split is not None else test_split), test_split

    def _preprocess(self, crop_pct: float):
        from .preprocess import Preprocess

        cfg = self.cfg
        if not hasattr(self, "_stats"):
            self._stats = self.ds.stats(cfg.in_chans)
        mean, std = self._stats
        return Preprocess(cfg.resolution, cfg.in_chans, mean, std, crop_pct)

    def _run_state(self, model: nn.Module, steps: int) -> RunState:
        a, dev = self.args, self.device
        # channels-last on the CPU too: oneDNN's kernels train V1 alpha 0.25 at 28 px in
        # 3.0-3.2 instead of 4.0-4.8 ms of CPU time per image (batch 128, one thread)
        model.to(dev).to(memory_format=torch.channels_last)
        recipe = self.recipe
        compiled_sgd = a.compile and recipe.optimizer == "sgd"
        ema = None
        if recipe.ema_decay is not None:
            ema = ModelEma(model, recipe.ema_decay, recipe.ema_every)
        return RunState(
            model=model,
            net=model,
            optimizer=build_optimizer(model, recipe, self.lr, tensor_lr=compiled_sgd),
            criterion=make_criterion(recipe.label_smoothing),
            recipe=recipe,
            peak_lr=self.lr,
            steps_per_epoch=steps,
            total_steps=steps * a.epochs,
            device=dev,
            ema=ema,
            amp=dev.type == "cuda",
            world=self.world,
            # On CPU every step is checked for a non-finite loss; on CUDA that would stall the
            # GPU, so the first bad step is kept on the device and read every 50 steps.
            check_every=1 if dev.type == "cpu" else 50,
            kill_at_step=int(os.environ.get(KILL_AT_STEP) or 0),
        )

    def _restore(self, run: RunState, state: dict[str, Any]) -> Progress:
        """Load a verified training state into ``run``; the progress it had reached."""
        self._check_state(state, self.cfg, self.batch, self.n_train)
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.step = int(state["scheduler"].get("last_epoch", 0))  # optimizer steps taken
        if run.ema is not None and state.get("ema") is not None:
            run.ema.load_state_dict(state["ema"])
        _set_rng_state(state["rng"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        p = Progress(int(state["epoch"]), float(state["best_val_top1"]), int(state["best_epoch"]))
        p.best_saved = float(state.get("best_saved", p.best))
        self._log(f"resuming {self.out} after epoch {p.start_epoch}")
        return p

    def _prepare_folder(self, record, state, progress: Progress) -> None:
        """Rank 0: remove leftovers, record the run, keep the metrics of the resumed epochs."""
        if not self.main:
            return
        from . import runfolder

        runfolder.clean_leftovers(self.out)
        runfolder.write_record(self.out, record, self.args.epochs, self._runtime())
        if state is not None:
            progress.history = runfolder.read_metrics(self.out, progress.start_epoch)
            runfolder.write_metrics(self.out, progress.history)
            progress.train_s = sum(h.get("train_s", 0.0) for h in progress.history)
            progress.train_images = sum(h.get("train_images", 0) for h in progress.history)

    def _data(self, train_split, sel_split, test_split) -> RunData:
        """Check the evaluation images, move in-memory data to the device (normalized once)."""
        from .data import BadImages, check_images

        a, dev = self.args, self.device
        bad = BadImages(a.skip_bad_images)
        for split in {id(s): s for s in (sel_split, test_split)}.values():
            check_images(split, bad, a.workers)  # before an epoch is spent training
        train_images = None
        if train_split.images is not None:
            prep = self._preprocess(1.0)
            train_images = DeviceImages(
                train_split.images, train_split.labels, prep, self.ds.pad, dev
            )
        sel = self._eval_set(self.sel_name, sel_split, bad)
        test = sel if test_split is sel_split else self._eval_set("test", test_split, bad)
        return RunData(train_split, train_images, sel, test, bad)

    def _eval_set(self, name: str, split, bad) -> EvalSet:
        from .data import eval_batches
        from .transforms import preprocess_images

        prep, dev = self._preprocess(self.ds.crop_pct), self.device
        if split.images is not None:
            x = torch.cat([preprocess_images(prep, c.to(dev)) for c in split.images.split(4096)])
            x = x.contiguous(memory_format=torch.channels_last)
            return EvalSet(name, len(split), x, split.labels.to(dev))
        workers = self.args.workers

        def batches(idx: torch.Tensor):
            return eval_batches(split, prep, 512, dev, idx, workers, bad)

        return EvalSet(name, len(split), batches=batches)

    def _wrap(self, run: RunState) -> None:
        """Sync-BN, DDP and --compile around the model."""
        a, dev = self.args, self.device
        net: nn.Module = run.model
        if a.sync_bn:
            if dev.type != "cuda":
                raise UsageError(
                    "--sync-bn needs CUDA (PyTorch's SyncBatchNorm does not run on CPU)"
                )
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        if self.world > 1:
            net = nn.parallel.DistributedDataParallel(
                net, device_ids=[dev.index] if dev.type == "cuda" else None
            )
        run.net = net
        run.train_step = make_train_step(run)
        if a.compile:  # the whole step: forward, loss, backward and the optimizer update
            backend = os.environ.get(COMPILE_BACKEND, "inductor")
            run.train_step = torch.compile(run.train_step, backend=backend)

    def _log_start(self, run: RunState) -> None:
        cfg, a = self.cfg, self.args
        self._log(
            f"{cfg.name} alpha={cfg.width_mult} {cfg.resolution}px in_chans={cfg.in_chans} "
            f"small_input={cfg.small_input} ({self.small_why}) | {self.ds.name}: {self.n_train} "
            f"train | recipe {self.recipe.name}, lr {self.lr:.4g}, batch {self.batch} "
            f"({self.world} x {self.batch // self.world}), {a.epochs} epochs, {self.device.type}"
        )
        if self.length_why:
            self._log(f"run length: {self.length_why}")

    # ---- one epoch

    def _epoch_batches(self, run: RunState, data: RunData, epoch: int):
        """This rank's augmented batches of ``epoch`` (a function of seed, epoch and rank)."""
        from .data import train_batches

        a, dev, B = self.args, self.device, self.batch
        b = B // self.world
        torch.manual_seed(_seed(a.seed, epoch, self.rank))  # dropout: a function of the epoch
        perm = torch.randperm(
            self.n_train, generator=torch.Generator().manual_seed(_seed(a.seed, epoch))
        )
        steps = run.steps_per_epoch
        if data.train_images is None:  # image files: a DataLoader decodes and augments
            batches = [
                perm[s * B + self.rank * b : s * B + (self.rank + 1) * b] for s in range(steps)
            ]
            self._debug_shard(epoch, batches)
            gen = torch.Generator().manual_seed(_seed(a.seed, epoch, self.rank, 1))
            prep = self._preprocess(self.ds.crop_pct)
            return train_batches(
                self.ds, data.train, batches, prep, gen, dev, None, a.workers, data.bad
            )
        perm = perm[: steps * B].view(steps, self.world, b)[:, self.rank].to(dev)
        self._debug_shard(epoch, list(perm))
        gen = torch.Generator(device=dev).manual_seed(_seed(a.seed, epoch, self.rank, 1))
        return device_batches(
            data.train_images, list(perm), gen, self.recipe.random_erasing, self.augment
        )

    def _epoch(self, run: RunState, data: RunData, p: Progress, epoch: int) -> None:
        a = self.args
        batches = self._epoch_batches(run, data, epoch)
        bar = self._bar(epoch, run.steps_per_epoch)
        stats = train_one_epoch(
            run, batches, epoch, self._check_finite, self._progress(bar, run.steps_per_epoch)
        )
        if bar is not None:
            bar.close()
        p.train_s += stats.seconds
        p.train_images += stats.images
        eval_model = run.ema.module if run.ema is not None else run.model
        if data.train_images is not None:  # 2,048 fixed training images (Precise BN)
            n = min(len(data.train_images), PRECISE_BN_IMAGES)
            x = data.train_images.x[:n].contiguous(memory_format=torch.channels_last)
            recalibrate_bn(eval_model, x, self.batch // self.world)
        sel = self._evaluate(eval_model, data.sel)
        if epoch == a.epochs:
            p.test = sel if data.test is data.sel else self._evaluate(eval_model, data.test)
        losses = [(f"{self.sel_name} (selection)", sel)]
        if p.test is not None and p.test is not sel:
            losses.append(("test", p.test))
        what = check_finite_epoch(run.model, run.ema, losses)
        if what:
            raise MobilenetsError(
                f"{', '.join(what)} at epoch {epoch}; stopped before saving it ({self._last_good()})"
            )
        if sel["top1"] > p.best:
            p.best, p.best_epoch = sel["top1"], epoch
        row = self._row(epoch, stats, sel, data.bad)
        p.last_row = row
        if self.main:
            p.history.append(row)
            if epoch % a.save_every == 0 or epoch == a.epochs:
                # best.ckpt: the best of the saved epochs (all of them without --save-every)
                improved = sel["top1"] > p.best_saved
                p.best_saved = max(p.best_saved, sel["top1"])
                self.save_epoch(epoch, run, p, improved)
        self._log(
            f"epoch {epoch}/{a.epochs}  train loss {row['train_loss']:.4f} top-1 "
            f"{100 * row['train_top1']:.2f}%  {self.sel_name} loss {row['val_loss']:.4f} top-1 "
            f"{100 * row['val_top1']:.2f}% top-5 {100 * row['val_top5']:.2f}%  lr {row['lr']:.4g}"
            f"  {row['images_per_s']:.0f} img/s  {row['elapsed_s']:.0f}s"
        )

    def _evaluate(self, model: nn.Module, split: EvalSet) -> dict[str, float]:
        cuda = self.device.type == "cuda"
        return evaluate_split(
            model,
            split,
            self.cfg.num_classes,
            self.device,
            cuda,
            self.rank,
            self.world,
            batch_size=1024 if cuda else 128,
        )

    def _row(self, epoch: int, stats: EpochStats, sel: dict[str, float], bad) -> dict[str, Any]:
        row = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_top1": stats.top1,
            "val_loss": sel["loss"],
            "val_top1": sel["top1"],
            "val_top5": sel["top5"],
            "eval_set": self.sel_name,
            "lr": stats.lr,
            "images_per_s": stats.images / max(stats.seconds, 1e-9),
            "train_s": stats.seconds,
            "train_images": stats.images,
            "elapsed_s": self.elapsed_before + time.time() - self.t0,
            "time": time.time(),
        }
        if len(bad):
            row["skipped_images"] = len(bad)
        return row

    def _progress(self, bar, steps: int):
        if bar is None:
            return None
        t0 = time.time()

        def show(step: int, sums: torch.Tensor) -> None:
            if step % 10 == 0 or step == steps:
                s = sums.tolist()
                rate = s[2] * self.world / max(time.time() - t0, 1e-9)
                bar.set_postfix(
                    loss=f"{s[0] / s[2]:.3f}", acc=f"{100 * s[1] / s[2]:.1f}%", img_s=f"{rate:.0f}"
                )
                bar.update(step - bar.n)

        return show

    def _check_finite(self, first_bad: torch.Tensor, epoch: int) -> None:
        flag = first_bad.clone()
        if self.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops together
        step = int(flag)
        if step >= 0:
            raise bad_step_error(epoch, step, self.steps, self._last_good())

    # ---- checkpoints and the summary

    def save_epoch(self, epoch: int, run: RunState, p: Progress, improved: bool) -> None:
        """Checkpoint folder, then metrics.jsonl, best.ckpt, last.ckpt: each step atomic."""
        from . import checkpoint as ck
        from . import runfolder

        row = p.history[-1]
        state = {
            "epoch": epoch,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": {"last_epoch": run.step},  # optimizer steps taken (LambdaLR's name)
            "ema": run.ema.state_dict() if run.ema is not None else None,
            "rng": _rng_state(),
            "best_val_top1": p.best,
            "best_epoch": p.best_epoch,
            "best_saved": p.best_saved,
            "config": self.cfg.to_dict(),
            "global_batch": self.batch,
            "train_images": self.n_train,
            "elapsed_s": row["elapsed_s"],
        }
        meta = {
            "epoch": epoch,
            "data": self.ds.spec,
            "data_dir": self.args.data_dir,
            "val_split": self.args.val_split,
            "split_seed": self.args.seed,
            "recipe": self.recipe.name,
            "ema": run.ema is not None,
            "metrics": {k: row[k] for k in ("val_top1", "val_top5", "val_loss", "eval_set")},
        }
        weights = run.ema.module.state_dict() if run.ema is not None else None
        folder = self.out / f"epoch-{epoch:04d}.ckpt"
        try:
            ck.save_checkpoint(
                folder,
                run.model,
                self.ds.class_names,
                meta=meta,
                training_state=state,
                state_dict=weights,
                preprocess=self._preprocess(self.ds.crop_pct),
            )
            runfolder.write_metrics(self.out, p.history)
            if improved:
                ck.point_link(self.out / "best.ckpt", folder)
            ck.point_link(self.out / "last.ckpt", folder)
            self._debug_event(f"checkpoint {folder.name}")
            self._prune()
        except OSError as e:
            cause = e.strerror or str(e)
            raise MobilenetsError(
                f"could not write {folder.name} at epoch {epoch}: {cause}"
                f"{f' ({e.filename})' if e.filename else ''}; stopped ({self._last_good()})"
            ) from None

    # ---- small pieces

    def _eval_subset(self, split, n: int, salt: int):
        if n >= len(split):
            return split
        pick = torch.randperm(
            len(split), generator=torch.Generator().manual_seed(_seed(self.args.seed, salt))
        )
        return split.subset(pick[:n].sort().values)

    def _bar(self, epoch: int, steps: int):
        if not self.main or self.args.quiet or not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        return tqdm(total=steps, desc=f"epoch {epoch}/{self.args.epochs}", unit="step", leave=False)

    def _last_good(self) -> str:
        last = self.out / "last.ckpt"
        if last.is_symlink() and last.exists():
            return f"last good checkpoint: {last} -> {os.readlink(last)}"
        return "no checkpoint was written yet"

    def _debug_shard(self, epoch: int, batches: list[torch.Tensor]) -> None:
        """With ``MOBILENETS_DEBUG_SHARDS=DIR`` each rank records the sample indices it trains on."""
        folder = os.environ.get("MOBILENETS_DEBUG_SHARDS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            idx = torch.cat(batches).tolist()
            (Path(folder) / f"rank{self.rank}-epoch{epoch}.json").write_text(json.dumps(idx))

    def _debug_event(self, text: str) -> None:
        """With ``MOBILENETS_DEBUG_SHARDS=DIR`` each rank also logs what it wrote to ``--out``."""
        folder = os.environ.get("MOBILENETS_DEBUG_SHARDS")
        if folder:
            with open(Path(folder) / f"rank{self.rank}.log", "a") as f:
                f.write(text + "\n")

    def _prune(self) -> None:
        keep = {
            (self.out / n).resolve() for n in ("last.ckpt", "best.ckpt") if (self.out / n).exists()
        }
        for folder in self.out.glob("epoch-*.ckpt"):
            if folder.resolve() not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def _end(self, run: RunState, data: RunData, p: Progress) -> dict[str, Any]:
        """Plots, the test figures of a run killed before its summary, then the summary."""
        if p.test is None:  # killed after the last checkpoint, before summary.json
            eval_model = run.ema.module if run.ema is not None else run.model
            p.last_row = p.history[-1] if p.history else {}
            p.test = self._evaluate(eval_model, data.test)
        if self.main and self.args.plots == "end" and p.history:
            from .plots import plot_curves

            try:
                plot_curves(p.history, self.out / "curves.png")
            except OSError as e:
                self._log(f"curves.png not written: {e}")
        if len(data.bad):
            self._log(
                f"skipped {len(data.bad)} unreadable image(s), e.g. {sorted(data.bad.paths)[0]}"
            )
        return self._finish(p, len(data.bad), data.sel.n, data.test.n)

    def _finish(self, p: Progress, skipped: int, n_sel: int, n_test: int) -> dict[str, Any]:
        a, row, test, history = self.args, p.last_row, p.test, p.history
        summary = {
            "final_val_top1": row.get("val_top1", history[-1]["val_top1"] if history else None),
            "final_val_top5": row.get("val_top5", history[-1]["val_top5"] if history else None),
            "final_test_top1": test["top1"] if test else None,
            "final_test_top5": test["top5"] if test else None,
            "best_val_top1": p.best,
            "best_epoch": p.best_epoch,
            "eval_set": self.sel_name,
            "eval_images": {self.sel_name: n_sel, "test": n_test},
            "epochs": a.epochs,
            "wall_s": self.elapsed_before + time.time() - self.t0,
            "train_s": p.train_s,
            "images_per_s": p.train_images / p.train_s if p.train_s else None,
            "world_size": self.world,
            "global_batch": self.batch,
            "lr": self.lr,
            "recipe": asdict(self.recipe),
            "data": self.ds.spec,
            "small_input": {"value": self.cfg.small_input, "why": self.small_why},
            "run_length": {"augment": self.augment, "why": self.length_why},
            "skipped_images": skipped,
            "hardware": hardware(self.device),
            "versions": versions(),
            "config": self.cfg.to_dict(),
            "command": a.command,
        }
        if self.main:
            from .runfolder import write_atomic

            write_atomic(self.out / "summary.json", json.dumps(summary, indent=2))
            if test:
                self._log(
                    f"final test top-1 {100 * test['top1']:.2f}% top-5 {100 * test['top5']:.2f}% "
                    f"(best {self.sel_name} top-1 {100 * p.best:.2f}% at epoch {p.best_epoch}); "
                    f"{self.out}"
                )
        if self.world > 1:
            dist.barrier()
        return summary


# ---------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand: model flags from ModelConfig, the rest from TrainArgs."""
    from .cli.args import add_data_args, add_device_args, add_model_args

    p = subparsers.add_parser(
        "train",
        help="train a model (also under torchrun)",
        description="Train a model on a dataset, in one process or many (torchrun).",
        epilog="Multi-process and multi-node: see `python -c 'import mobilenets.train; help(mobilenets.train)'`.",
    )
    add_model_args(p, name_flag=True)
    add_data_args(p, required=True, workers_default=_cpus())
    add_device_args(p)
    p.add_argument("--epochs", type=_types()[1](1), required=True)
    p.add_argument("--out", required=True, metavar="DIR")
    for f in dataclasses.fields(TrainArgs):
        if f.name in (*SHARED_FLAGS, *NOT_FLAGS, "epochs", "out"):
            continue
        kw = dict(f.metadata)
        if isinstance(kw.get("type"), str):
            kw["type"] = _arg_type(kw["type"])
        p.add_argument("--" + f.name.replace("_", "-"), default=f.default, **kw)
    p.set_defaults(func=_main)


def args_from_namespace(ns: argparse.Namespace, command: list[str]) -> TrainArgs:
    """The TrainArgs of a parsed ``train`` command line."""
    from .cli.args import given_model_args

    fields = set(TrainArgs.__dataclass_fields__) - {"command", "model_options"}
    kw = {k: v for k, v in vars(ns).items() if k in fields}
    return TrainArgs(**kw, model_options=given_model_args(ns), command=command)


def _main(args: argparse.Namespace) -> int:
    summary = Trainer(args_from_namespace(args, ["mobilenets", *sys.argv[1:]])).run()
    return 0 if summary else 1
