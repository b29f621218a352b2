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
import copy
import functools
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

from .errors import MobilenetsError, UsageError


@dataclass(frozen=True)
class Recipe:
    """Training hyperparameters; ``lr`` is for a global batch of ``lr_batch`` images, scaled linearly."""

    name: str
    optimizer: str  # "rmsprop_tf" or "sgd"
    lr: float
    lr_batch: int
    momentum: float
    weight_decay: float  # L2, not on BN, biases or depthwise filters
    schedule: str  # "exponential" (per epoch) or "cosine" (per step, after a linear warmup)
    lr_decay: float = 1.0
    warmup_epochs: float = 0.0
    warmup_max_frac: float = 0.1  # short runs: warm up for at most this share of all steps
    label_smoothing: float = 0.0
    ema_decay: float | None = None
    rmsprop_decay: float = 0.9
    rmsprop_eps: float = 1.0
    nesterov: bool = False


RECIPES: dict[str, Recipe] = {
    # MobileNetV2 paper (Sandler et al. 2018, Sec. 6.1), also used for V1 (Howard et al. 2017,
    # Sec. 4: "RMSprop ... similar to Inception V3"): TensorFlow RMSPropOptimizer with decay and
    # momentum 0.9, lr 0.045 for batch 96 per worker, decayed x0.98 per epoch, weight decay 4e-5.
    # epsilon = 1.0 is TF-slim's train_image_classifier default (--opt_epsilon), which timm's
    # RMSpropTF also uses; V1 applies little or no weight decay on the depthwise filters.
    # The TF-slim README adds label smoothing 0.1 and an EMA of 0.9999: pass --label-smoothing
    # and --ema for those; the paper recipe itself has neither.
    "paper": Recipe(
        "paper",
        "rmsprop_tf",
        lr=0.045,
        lr_batch=96,
        momentum=0.9,
        weight_decay=4e-5,
        schedule="exponential",
        lr_decay=0.98,
    ),
    # Today's short-schedule recipe: SGD + Nesterov momentum 0.9 with linear lr scaling from
    # batch 256 (Goyal et al. 2017), linear warmup + cosine decay (Loshchilov & Hutter 2017),
    # label smoothing 0.1 (Szegedy et al. 2016), weight decay 4e-5 as torchvision's MobileNetV2
    # reference, and an EMA of the weights (TF-slim, timm) with timm's warmup of the decay.
    # lr 0.2 per 256, above ResNet's 0.1: on Fashion-MNIST (V1 alpha 0.25, 2 epochs on 12,800
    # images, batch 128, 2,000 test images) 0.1 / 0.2 / 0.4 per 256 reached 78.1 / 80.8 / 81.5%;
    # we keep the middle value as the safer default for longer runs and wider models.
    "modern": Recipe(
        "modern",
        "sgd",
        lr=0.2,
        lr_batch=256,
        momentum=0.9,
        weight_decay=4e-5,
        schedule="cosine",
        warmup_epochs=1.0,
        label_smoothing=0.1,
        ema_decay=0.9998,
        nesterov=True,
    ),
}


class RMSpropTF(torch.optim.Optimizer):
    """TensorFlow's RMSProp, as the MobileNet papers trained with.

    Unlike ``torch.optim.RMSprop``: epsilon sits inside the square root, the mean square starts
    at 1, and the learning rate is applied inside the momentum buffer::

        ms  = decay * ms + (1 - decay) * g^2
        mom = momentum * mom + lr * g / sqrt(ms + eps)
        p  -= mom

    With eps = 1.0 outside the root (PyTorch's form) the step is not bounded the same way
    and training diverges at the paper's learning rate.
    """

    def __init__(
        self,
        params,
        lr: float,
        decay: float = 0.9,
        momentum: float = 0.9,
        eps: float = 1.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(
            params,
            {
                "lr": lr,
                "decay": decay,
                "momentum": momentum,
                "eps": eps,
                "weight_decay": weight_decay,
            },
        )

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p)
                    state["momentum_buffer"] = torch.zeros_like(p)
                ms, mom = state["square_avg"], state["momentum_buffer"]
                ms.mul_(group["decay"]).addcmul_(g, g, value=1 - group["decay"])
                mom.mul_(group["momentum"]).addcdiv_(
                    g, (ms + group["eps"]).sqrt_(), value=group["lr"]
                )
                p.sub_(mom)
        return loss


class ModelEma:
    """Exponential moving average of a model's weights and BN statistics (timm's ModelEmaV2 with warmup)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0
        self._pairs: (
            tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]
            | None
        ) = None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if self._pairs is None:
            ef, mf, ei, mi = [], [], [], []
            for e, m in zip(
                self.module.state_dict().values(), model.state_dict().values(), strict=True
            ):
                (ef if e.dtype.is_floating_point else ei).append(e)
                (mf if e.dtype.is_floating_point else mi).append(m)
            self._pairs = (ef, mf, ei, mi)
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ef, mf, ei, mi = self._pairs
        torch._foreach_lerp_(ef, mf, 1.0 - d)
        for e, m in zip(ei, mi, strict=True):
            e.copy_(m)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


@dataclass
class TrainArgs:
    """Everything a training run needs (the CLI flags, as Python values)."""

    model: str
    data: str
    out: str
    epochs: int
    batch_size: int = 256
    width_mult: float | None = None  # MobileNets only; default 1.0
    resolution: int | None = None
    small_input: bool = False
    in_chans: int | None = None
    num_classes: int | None = None
    activation: str | None = None  # MobileNets only; default relu6
    data_dir: str | None = None
    recipe: str = "modern"
    lr: float | None = None  # for the global batch; default: the recipe's, scaled
    weight_decay: float | None = None
    label_smoothing: float | None = None
    ema: bool | None = None
    ema_decay: float | None = None
    seed: int = 0
    device: str | None = None
    resume: bool = False
    pretrained: str | None = None
    val_split: int = 0
    max_train_samples: int | None = None
    max_eval_samples: int | None = None  # quick runs: evaluate on a seeded subset
    skip_bad_images: bool = False
    sync_bn: bool = False
    compile: bool = False
    workers: int = 4
    quiet: bool = False
    command: list[str] = field(default_factory=list)


MAX_WIDTH = 10.0  # alpha beyond this gives layers of tens of thousands of channels


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
    elif name == "width":
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
    model: str, data: str, out: str | Path, epochs: int, batch_size: int = 256, **options: Any
) -> dict[str, Any]:
    """Train ``model`` on ``data`` for ``epochs``, writing checkpoints and logs to ``out``.

    Args:
        model: ``mobilenet_v1``, ``mobilenet_v2``, ``resnet50`` or ``vgg16``.
        data: ``fashion-mnist``, ``cifar10:PATH``, ``cifar100:PATH`` or ``imagefolder:PATH``.
        batch_size: the global batch (split across ranks under torchrun).
        options: any other :class:`TrainArgs` field (width_mult, resolution, recipe, lr, seed,
            resume, val_split, max_train_samples, pretrained, ...).

    Returns:
        The run summary (also written to ``out/summary.json``); accuracies are fractions.
    """
    unknown = sorted(set(options) - set(TrainArgs.__dataclass_fields__))
    if unknown:
        raise UsageError(f"unknown training option(s): {', '.join(unknown)}")
    return Trainer(
        TrainArgs(
            model=model, data=data, out=str(out), epochs=epochs, batch_size=batch_size, **options
        )
    ).run()


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

    from . import __version__

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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only: not on BN, biases or depthwise filters."""
    decay, no_decay = [], []
    for m in model.modules():
        for p in m.parameters(recurse=False):
            if not p.requires_grad:
                continue
            depthwise = isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
            (decay if p.ndim > 1 and not depthwise else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_criterion(label_smoothing: float):
    """The training loss: cross-entropy with label smoothing."""
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


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
        if a.epochs < 1 or a.batch_size < 1:
            raise UsageError("--epochs and --batch-size must be >= 1")
        if a.batch_size % self.world:
            raise UsageError(
                f"--batch-size {a.batch_size} (global) is not divisible by {self.world} ranks"
            )
        if a.lr is not None and not 0 < a.lr < math.inf:
            raise UsageError(f"--lr must be a finite number > 0, got {a.lr}")
        for name in ("width", "weight_decay", "label_smoothing", "ema_decay"):
            err = option_error(name, getattr(a, name))
            if err:
                raise UsageError(f"--{name.replace('_', '-')} {err}")

    def _resolve_recipe(self) -> Recipe:
        a, r = self.args, RECIPES[self.args.recipe]
        changes: dict[str, Any] = {}
        if a.weight_decay is not None:
            changes["weight_decay"] = a.weight_decay
        if a.label_smoothing is not None:
            changes["label_smoothing"] = a.label_smoothing
        if a.ema is False:
            changes["ema_decay"] = None
        elif a.ema or a.ema_decay is not None:
            changes["ema_decay"] = (
                a.ema_decay if a.ema_decay is not None else (r.ema_decay or 0.9999)
            )
        return replace(r, **changes)

    def _build_model(self, ds) -> nn.Module:
        from .models import create_model

        a = self.args
        n = len(ds.class_names)
        if a.num_classes is not None and a.num_classes != n:
            raise UsageError(
                f"--num-classes {a.num_classes} does not match {ds.name}'s {n} classes"
            )
        res = a.resolution or ds.resolution
        # Small-image datasets use the stride-8 network unless upscaled to ImageNet-like sizes.
        small = a.small_input or (ds.small_input and res <= 64)
        opts: dict[str, Any] = {}
        if a.model in ("mobilenet_v1", "mobilenet_v2"):
            opts["width_mult"] = a.width_mult if a.width_mult is not None else 1.0
            opts["activation"] = a.activation or "relu6"
        elif a.width_mult is not None or a.activation is not None:
            flags = [f for f, v in (("--width", a.width_mult), ("--activation", a.activation)) if v]
            raise UsageError(f"{', '.join(flags)} apply only to MobileNets, not to {a.model}")
        return create_model(
            a.model,
            resolution=res,
            num_classes=n,
            in_chans=a.in_chans or ds.channels,
            small_input=small,
            pretrained=a.pretrained,
            **opts,
        )

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
            "batch_size": a.batch_size,
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
        if distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        try:
            return self._run()
        finally:
            if self.lock is not None:
                self.lock.release()
            if distributed and dist.is_initialized():
                dist.destroy_process_group()

    def _run(self) -> dict[str, Any]:  # noqa: C901 - the training loop reads best in one piece
        from .data import (
            BadImages,
            Preprocess,
            check_images,
            eval_batches,
            holdout,
            load_dataset,
            train_batches,
        )
        from .evaluation import Tally, tally

        a, dev = self.args, self.device
        recipe = self._resolve_recipe()
        ds = load_dataset(a.data, a.data_dir)
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
            val_split = (
                self._eval_subset(val_split, a.max_eval_samples, 3)
                if val_split is not None
                else None
            )
        sel_name = "val" if val_split is not None else "test"
        sel_split = val_split if val_split is not None else test_split

        torch.manual_seed(a.seed)
        model = self._build_model(ds)
        cfg = model.config
        mean, std = ds.stats(cfg.in_chans)
        prep = Preprocess(cfg.resolution, cfg.in_chans, mean, std, ds.crop_pct)
        criterion = make_criterion(recipe.label_smoothing)

        B, b = a.batch_size, a.batch_size // self.world
        n_train = len(train_split)
        steps = n_train // B
        if steps == 0:
            raise UsageError(f"--batch-size {B} is larger than the {n_train} training images")
        total_steps = steps * a.epochs
        lr = a.lr if a.lr is not None else recipe.lr * B / recipe.lr_batch

        model.to(dev)
        if dev.type == "cuda":
            model.to(memory_format=torch.channels_last)
        groups = param_groups(model, recipe.weight_decay)
        if recipe.optimizer == "rmsprop_tf":
            opt: torch.optim.Optimizer = RMSpropTF(
                groups, lr, recipe.rmsprop_decay, recipe.momentum, recipe.rmsprop_eps
            )
        else:
            opt = torch.optim.SGD(groups, lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
        warmup = min(recipe.warmup_epochs * steps, recipe.warmup_max_frac * total_steps)

        def lr_factor(step: int) -> float:  # step = optimizer steps taken so far
            if recipe.schedule == "exponential":
                return recipe.lr_decay ** (step // steps)
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
        ema = ModelEma(model, recipe.ema_decay) if recipe.ema_decay is not None else None

        # ---- the run folder: lock (rank 0), resume point, record
        record = self._record(cfg, recipe, lr, ds)
        start_epoch, best, best_epoch, elapsed_before = 0, -1.0, 0, 0.0
        state = self._open_run(record)
        if state is not None:
            done = self._finished_summary(int(state["epoch"]))
            if done is not None:
                self._log(f"{self.out} is complete ({a.epochs} epochs); nothing to do")
                return done
            self._check_state(state, cfg, B, n_train)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if ema is not None and state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            _set_rng_state(state["rng"])
            start_epoch, best, best_epoch = (
                int(state["epoch"]),
                float(state["best_val_top1"]),
                int(state["best_epoch"]),
            )
            elapsed_before = float(state.get("elapsed_s", 0.0))
            self.elapsed_before = elapsed_before
            self._log(f"resuming {self.out} after epoch {start_epoch}")

        history: list[dict[str, Any]] = []
        if self.main:
            from . import runfolder

            runfolder.clean_leftovers(self.out)
            runfolder.write_record(self.out, record, a.epochs, self._runtime())
            if state is not None:
                history = runfolder.read_metrics(self.out, start_epoch)
                runfolder.write_metrics(self.out, history)

        net: nn.Module = model
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
        if a.compile:
            net = torch.compile(net)
        amp = dev.type == "cuda"
        images_dev = train_split.images.to(dev) if train_split.images is not None else None
        bad = BadImages(a.skip_bad_images)
        for split in {id(s): s for s in (sel_split, test_split)}.values():
            check_images(split, bad, a.workers)  # before an epoch is spent training
        self._log(
            f"{cfg.name} alpha={cfg.width_mult} {cfg.resolution}px in_chans={cfg.in_chans} small_input={cfg.small_input} | "
            f"{ds.name}: {n_train} train, {len(sel_split)} {sel_name} | recipe {recipe.name}, lr {lr:.4g}, "
            f"batch {B} ({self.world} x {b}), {a.epochs} epochs, {dev.type}"
        )
        # On CPU every step is checked for a non-finite loss; on CUDA that would stall the GPU,
        # so the first bad step is recorded on the device and read every `sync_every` steps.
        sync_every = 1 if dev.type == "cpu" else 25
        train_time = sum(h.get("train_s", 0.0) for h in history)
        train_images = sum(h.get("train_images", 0) for h in history)
        last_row: dict[str, Any] = {}
        test_metrics: dict[str, float] | None = None

        for epoch in range(start_epoch + 1, a.epochs + 1):
            torch.manual_seed(
                _seed(a.seed, epoch, self.rank)
            )  # dropout etc.: a function of (seed, epoch, rank)
            perm = torch.randperm(
                n_train, generator=torch.Generator().manual_seed(_seed(a.seed, epoch))
            )
            batches = [
                perm[s * B + self.rank * b : s * B + (self.rank + 1) * b] for s in range(steps)
            ]
            self._debug_shard(epoch, batches)
            aug_gen = torch.Generator().manual_seed(_seed(a.seed, epoch, self.rank, 1))
            net.train()
            sums = torch.zeros(3, dtype=torch.float64, device=dev)  # loss sum, correct, count
            first_bad = torch.full((), -1, dtype=torch.int64, device=dev)
            t_epoch = time.time()
            bar = self._bar(epoch, steps)
            it = train_batches(
                ds, train_split, batches, prep, aug_gen, dev, images_dev, a.workers, bad
            )
            for step, (x, y) in enumerate(it, 1):
                if dev.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    logits = net(x)
                    loss = criterion(logits.float(), y)
                ok = torch.isfinite(loss.detach())
                first_bad = torch.where((first_bad < 0) & ~ok, step, first_bad)
                if step % sync_every == 0 or step == steps:
                    self._check_finite(first_bad, epoch, steps)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update(model)
                with torch.no_grad():
                    sums += torch.stack(
                        [
                            loss.detach().double() * len(y),
                            (logits.argmax(1) == y).sum().double(),
                            torch.tensor(float(len(y)), dtype=torch.float64, device=dev),
                        ]
                    )
                if bar is not None and (step % 10 == 0 or step == steps):
                    s = sums.tolist()
                    rate = s[2] * self.world / max(time.time() - t_epoch, 1e-9)
                    bar.set_postfix(
                        loss=f"{s[0] / s[2]:.3f}",
                        acc=f"{100 * s[1] / s[2]:.1f}%",
                        img_s=f"{rate:.0f}",
                    )
                    bar.update(step - bar.n)
            self._check_finite(first_bad, epoch, steps)
            if bar is not None:
                bar.close()
            if self.world > 1:
                dist.all_reduce(sums)
            epoch_s = time.time() - t_epoch
            train_time += epoch_s
            s = sums.tolist()
            train_images += int(s[2])

            eval_model = ema.module if ema is not None else model
            eval_model.eval()

            evaluate_on = functools.partial(
                self._eval,
                eval_model,
                prep=prep,
                dev=dev,
                amp=amp,
                num_classes=cfg.num_classes,
                bad=bad,
                eval_batches=eval_batches,
                tally=tally,
                Tally=Tally,
            )
            sel = evaluate_on(sel_split)
            if epoch == a.epochs:
                test_metrics = sel if val_split is None else evaluate_on(test_split)
            self._check_finite_epoch(epoch, sel, test_metrics, model, ema)
            improved = sel["top1"] > best
            if improved:
                best, best_epoch = sel["top1"], epoch
            row = {
                "epoch": epoch,
                "train_loss": s[0] / s[2],
                "train_top1": s[1] / s[2],
                "val_loss": sel["loss"],
                "val_top1": sel["top1"],
                "val_top5": sel["top5"],
                "eval_set": sel_name,
                "lr": opt.param_groups[0]["lr"],
                "images_per_s": s[2] / epoch_s,
                "train_s": epoch_s,
                "train_images": int(s[2]),
                "elapsed_s": elapsed_before + time.time() - self.t0,
                "time": time.time(),
            }
            if len(bad):
                row["skipped_images"] = len(bad)
            last_row = row
            if self.main:
                history.append(row)
                state = {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "rng": _rng_state(),
                    "best_val_top1": best,
                    "best_epoch": best_epoch,
                    "config": cfg.to_dict(),
                    "global_batch": B,
                    "train_images": n_train,
                    "elapsed_s": row["elapsed_s"],
                }
                meta = {
                    "epoch": epoch,
                    "data": ds.spec,
                    "data_dir": a.data_dir,
                    "preprocess": {
                        "resolution": cfg.resolution,
                        "crop_pct": ds.crop_pct,
                        "interpolation": "bilinear",
                    },
                    "val_split": a.val_split,
                    "split_seed": a.seed,
                    "recipe": recipe.name,
                    "ema": ema is not None,
                    "metrics": {
                        k: row[k] for k in ("val_top1", "val_top5", "val_loss", "eval_set")
                    },
                }
                self._write_epoch(
                    epoch,
                    model,
                    ds.class_names,
                    mean,
                    std,
                    meta,
                    state,
                    ema.module.state_dict() if ema is not None else None,
                    history,
                    improved,
                )
            self._log(
                f"epoch {epoch}/{a.epochs}  train loss {row['train_loss']:.4f} top-1 {100 * row['train_top1']:.2f}%  "
                f"{sel_name} loss {row['val_loss']:.4f} top-1 {100 * row['val_top1']:.2f}% top-5 {100 * row['val_top5']:.2f}%  "
                f"lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s  {row['elapsed_s']:.0f}s"
            )
        if start_epoch >= a.epochs:  # killed after the last checkpoint, before summary.json
            eval_model = ema.module if ema is not None else model
            last_row = history[-1] if history else {}
            test_metrics = self._eval(
                eval_model.eval(),
                test_split,
                prep,
                dev,
                amp,
                cfg.num_classes,
                bad,
                eval_batches,
                tally,
                Tally,
            )
        if len(bad):
            self._log(f"skipped {len(bad)} unreadable image(s), e.g. {sorted(bad.paths)[0]}")
        return self._finish(
            a,
            cfg,
            recipe,
            lr,
            history,
            last_row,
            test_metrics,
            best,
            best_epoch,
            train_time,
            train_images,
            len(bad),
            sel_name,
            len(sel_split),
            len(test_split),
        )

    # ---- pieces of the loop

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

    def _check_finite(self, first_bad: torch.Tensor, epoch: int, steps: int) -> None:
        flag = first_bad.clone()
        if self.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops together
        step = int(flag)
        if step >= 0:
            raise MobilenetsError(
                f"non-finite loss at epoch {epoch} step {step}/{steps}; stopped ({self._last_good()})"
            )

    def _last_good(self) -> str:
        last = self.out / "last.ckpt"
        if last.is_symlink() and last.exists():
            return f"last good checkpoint: {last} -> {os.readlink(last)}"
        return "no checkpoint was written yet"

    def _check_finite_epoch(self, epoch, sel, test, model, ema) -> None:
        """Stop before saving when the evaluation loss or any weight is NaN or infinite."""
        what = [f"{sel['loss']} validation loss"] if not math.isfinite(sel["loss"]) else []
        if test is not None and not math.isfinite(test["loss"]):
            what.append(f"{test['loss']} test loss")
        for name, m in (("weights", model), ("EMA weights", ema.module if ema else None)):
            if m is not None:
                ts = [t for t in m.state_dict().values() if t.is_floating_point()]
                if not bool(torch.stack([t.isfinite().all() for t in ts]).all()):
                    what.append(f"non-finite {name}")
        if what:
            raise MobilenetsError(
                f"{', '.join(what)} at epoch {epoch}; stopped before saving it "
                f"({self._last_good()})"
            )

    def _write_epoch(
        self, epoch, model, class_names, mean, std, meta, state, weights, history, improved
    ) -> None:
        """Checkpoint folder, then metrics.jsonl, best.ckpt, last.ckpt: each step atomic."""
        from . import checkpoint as ck
        from . import runfolder
        from .plots import plot_curves

        folder = self.out / f"epoch-{epoch:04d}.ckpt"
        try:
            ck.save_checkpoint(
                folder, model, class_names, mean, std, meta, state, state_dict=weights
            )
            runfolder.write_metrics(self.out, history)
            if improved:
                ck.point_link(self.out / "best.ckpt", folder)
            ck.point_link(self.out / "last.ckpt", folder)
            self._debug_event(f"checkpoint {folder.name}")
            self._prune()
            plot_curves(history, self.out / "curves.png")
        except OSError as e:
            cause = e.strerror or str(e)
            raise MobilenetsError(
                f"could not write {folder.name} at epoch {epoch}: {cause}"
                f"{f' ({e.filename})' if e.filename else ''}; stopped ({self._last_good()})"
            ) from None

    def _eval(
        self, model, split, prep, dev, amp, num_classes, bad, eval_batches, tally, Tally
    ) -> dict[str, float]:
        idx = torch.arange(self.rank, len(split), self.world)  # each rank a shard, summed below
        t = tally(
            model,
            eval_batches(split, prep, 512, dev, idx, self.args.workers, bad),
            num_classes,
            dev,
            amp,
        )
        if self.world > 1:
            v = t.as_tensor().to(dev)
            dist.all_reduce(v)
            t = Tally.from_tensor(v, num_classes)
        return t.metrics()

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

    def _finish(
        self,
        a,
        cfg,
        recipe,
        lr,
        history,
        row,
        test,
        best,
        best_epoch,
        train_time,
        train_images,
        skipped,
        sel_name,
        n_sel,
        n_test,
    ) -> dict[str, Any]:
        summary = {
            "final_val_top1": row.get("val_top1", history[-1]["val_top1"] if history else None),
            "final_val_top5": row.get("val_top5", history[-1]["val_top5"] if history else None),
            "final_test_top1": test["top1"] if test else None,
            "final_test_top5": test["top5"] if test else None,
            "best_val_top1": best,
            "best_epoch": best_epoch,
            "eval_set": sel_name,
            "eval_images": {sel_name: n_sel, "test": n_test},
            "epochs": a.epochs,
            "wall_s": self.elapsed_before + time.time() - self.t0,
            "train_s": train_time,
            "images_per_s": train_images / train_time if train_time else None,
            "world_size": self.world,
            "global_batch": a.batch_size,
            "lr": lr,
            "recipe": asdict(recipe),
            "data": a.data,
            "skipped_images": skipped,
            "hardware": hardware(self.device),
            "versions": versions(),
            "config": cfg.to_dict(),
            "command": a.command,
        }
        if self.main:
            from .runfolder import write_atomic

            write_atomic(self.out / "summary.json", json.dumps(summary, indent=2))
            t = test or {}
            if t:
                self._log(
                    f"final test top-1 {100 * t['top1']:.2f}% top-5 {100 * t['top5']:.2f}% "
                    f"(best {sel_name} top-1 {100 * best:.2f}% at epoch {best_epoch}); {self.out}"
                )
        if self.world > 1:
            dist.barrier()
        return summary


# ---------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    from .cli import add_data_args, add_device_args, add_model_args, int_at_least, positive_float
    from .config import MODEL_NAMES

    p = subparsers.add_parser(
        "train",
        help="train a model (also under torchrun)",
        description="Train a model on a dataset, in one process or many (torchrun).",
        epilog="Multi-process and multi-node: see `python -c 'import mobilenets.train; help(mobilenets.train)'`.",
    )
    p.add_argument("--model", required=True, choices=MODEL_NAMES)
    add_model_args(p)
    add_data_args(p, required=True, workers_default=min(8, os.cpu_count() or 1))
    add_device_args(p)
    p.add_argument("--epochs", type=int_at_least(1), required=True)
    p.add_argument(
        "--batch-size", type=int_at_least(1), default=256, help="global batch (split across ranks)"
    )
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default="modern",
        help="modern: SGD Nesterov, warmup + cosine, label smoothing 0.1, EMA; "
        "paper: TF RMSprop, lr 0.045 per 96 images x0.98 per epoch, weight decay 4e-5",
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        help="learning rate for the global batch (default: the recipe's, scaled)",
    )
    p.add_argument("--weight-decay", type=_option_type("weight_decay"), help=">= 0")
    p.add_argument("--label-smoothing", type=_option_type("label_smoothing"), help="in [0, 1)")
    p.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="EMA of the weights (default: per recipe)",
    )
    p.add_argument("--ema-decay", type=_option_type("ema_decay"), help="in [0, 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.ckpt")
    p.add_argument(
        "--pretrained", metavar="PATH", help="initial weights (torchvision/timm/mobilenets)"
    )
    p.add_argument(
        "--val-split",
        type=int_at_least(0),
        default=0,
        metavar="N",
        help="hold out N training images for model selection",
    )
    p.add_argument("--max-train-samples", type=int_at_least(1), metavar="N")
    p.add_argument(
        "--max-eval-samples",
        type=int_at_least(1),
        metavar="N",
        help="quick runs: evaluate on N images",
    )
    p.add_argument("--sync-bn", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    fields = set(TrainArgs.__dataclass_fields__) - {"command"}
    kw = {k: v for k, v in vars(args).items() if k in fields}
    summary = Trainer(TrainArgs(**kw, command=["mobilenets", *sys.argv[1:]])).run()
    return 0 if summary else 1
