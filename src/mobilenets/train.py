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

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .config import ModelConfig
from .engine import (  # noqa: F401 - re-exported: the recipes and optimizer live in the engine
    RECIPES,
    EpochStats,
    EvalSet,
    ModelEma,
    Recipe,
    RMSpropTF,
    RunData,
    RunState,
    TrainHooks,
    bad_step_error,
    build_optimizer,
    check_finite_epoch,
    cross_entropy,
    device_batches,
    epoch_batches,
    epoch_row,
    evaluate_split,
    make_train_step,
    recalibrate_bn,
    run_data,
    run_state,
    train_one_epoch,
    wrap_model,
)
from .errors import MobilenetsError, UsageError
from .runfolder import STATE_KEYS, Progress, RunFolder, rng_state, run_summary, runtime_record  # noqa: F401
from .runplan import RunPlan, TrainArgs, check_args, check_fit_types, option_error, resolve_run  # noqa: F401

KILL_AT_STEP = "MOBILENETS_KILL_AT_STEP"  # tests: SIGKILL the run after that optimizer step
DEBUG_SHARDS = "MOBILENETS_DEBUG_SHARDS"  # tests: each rank records its samples and writes
# --compile's torch.compile backend (default inductor); CPU smoke runs use aot_eager, which
# traces the same whole step in seconds instead of minutes of C++ compilation.
COMPILE_BACKEND = "MOBILENETS_COMPILE_BACKEND"
PRECISE_BN_IMAGES = 2048  # training images that re-estimate BN statistics after each epoch
HOOKS = TrainHooks()  # what a Trainer given no hooks uses; tests install theirs here


def hooks_from_env() -> TrainHooks | None:
    """The hooks ``MOBILENETS_KILL_AT_STEP`` / ``MOBILENETS_DEBUG_SHARDS`` ask for (None: neither)."""
    return TrainHooks.from_env(KILL_AT_STEP, DEBUG_SHARDS)


def make_criterion(label_smoothing: float):
    """The training loss: cross-entropy with label smoothing."""
    return cross_entropy(label_smoothing)


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

    Raises:
        TypeError, ValueError: ``config``, ``data``, ``epochs`` or ``batch_size`` of the wrong
            kind, naming the argument; UsageError: a bad option value, naming its flag.
    """
    check_fit_types(config, data, epochs, batch_size)
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
    args = TrainArgs(config, data, str(out), epochs, batch_size, model_options, **options)
    return Trainer(args).run()


class Trainer:
    """One training run: the device, DDP and the epoch loop (see the module docstring).

    What the run is comes from :func:`mobilenets.runplan.resolve_run`, its folder is a
    :class:`mobilenets.runfolder.RunFolder`; ``hooks``: test-only fault injection.
    """

    def __init__(self, args: TrainArgs, hooks: TrainHooks | None = None) -> None:
        self.args = args
        self.hooks = hooks if hooks is not None else HOOKS
        self.t0 = time.time()
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.main = self.rank == 0
        self.elapsed_before = 0.0  # wall time of the earlier processes of a resumed run
        on_event = self.hooks.on_event
        self.folder = RunFolder(
            Path(args.out), self.main, self._log, on_event and (lambda t: on_event(self.rank, t))
        )

    def _log(self, text: str) -> None:
        if self.main and not self.args.quiet:
            print(text, flush=True)

    def _device(self) -> torch.device:
        kind = self.args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if kind == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available")
        if kind == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def run(self) -> dict[str, Any]:
        """Train (or finish, or find finished) the run; returns its summary."""
        check_args(self.args, self.world)  # before any device or data is touched
        self.device = self._device()
        created_group = self.world > 1 and not dist.is_initialized()
        if created_group:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        benchmark = torch.backends.cudnn.benchmark
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: autotuning pays after a few steps
        try:
            return self._run()
        finally:
            torch.backends.cudnn.benchmark = benchmark
            self.folder.release()
            if created_group and dist.is_initialized():
                dist.destroy_process_group()

    def _run(self) -> dict[str, Any]:
        from .data import Dataset, load_dataset
        from .factory import create_model

        a = self.args
        ds = a.data if isinstance(a.data, Dataset) else load_dataset(a.data, a.data_dir)
        self.ds, self.plan = ds, resolve_run(a, ds, self.world)
        self.stats = ds.stats(self.plan.cfg.in_chans)
        torch.manual_seed(a.seed)
        kw = {k: v for k, v in self.plan.cfg.to_dict().items() if k != "schema_version"}
        model = create_model(kw.pop("name"), pretrained=a.pretrained, **kw)
        crit = make_criterion(self.plan.recipe.label_smoothing)  # a seam for tests
        run = run_state(model, self.plan, self.device, crit, a.compile)
        state = self.folder.open(self.plan.record, a.epochs, a.resume)
        progress = Progress()
        if state is not None:
            done = self.folder.finished_summary(int(state["epoch"]), a.epochs)
            if done is not None:
                self._log(f"{self.folder.out} is complete ({a.epochs} epochs); nothing to do")
                return done
            plan = self.plan
            self.folder.check_state(state, plan.cfg.to_dict(), plan.batch, plan.n_train)
            progress, self.elapsed_before = self.folder.restore(run, state)
        self._prepare_folder(state, progress)
        data = run_data(self.plan, ds, self._prep(1.0), self._prep(ds.crop_pct), self.device)
        backend = os.environ.get(COMPILE_BACKEND, "inductor") if a.compile else None
        wrap_model(run, a.sync_bn, self.world, backend)
        self._log_start()
        for epoch in range(progress.start_epoch + 1, a.epochs + 1):
            self._epoch(run, data, progress, epoch)
        return self._end(run, data, progress)

    def _prep(self, crop_pct: float):
        from .preprocess import Preprocess

        cfg, (mean, std) = self.plan.cfg, self.stats
        return Preprocess(cfg.resolution, cfg.in_chans, mean, std, crop_pct)

    def _prepare_folder(self, state: dict[str, Any] | None, p: Progress) -> None:
        """Record the run (and this process's runtime options); keep the resumed epochs' rows."""
        a = self.args
        runtime = runtime_record(a, self.device.type, self.world)
        resumed = p.start_epoch if state is not None else None
        p.history = self.folder.prepare(self.plan.record, a.epochs, runtime, resumed)
        p.train_s = sum(h.get("train_s", 0.0) for h in p.history)
        p.train_images = sum(h.get("train_images", 0) for h in p.history)

    def _log_start(self) -> None:
        plan, cfg, b = self.plan, self.plan.cfg, self.plan.batch
        self._log(
            f"{cfg.name} alpha={cfg.width_mult} {cfg.resolution}px in_chans={cfg.in_chans} "
            f"small_input={cfg.small_input} ({plan.small_why}) | {self.ds.name}: {plan.n_train} "
            f"train | recipe {plan.recipe.name}, lr {plan.lr:.4g}, batch {b} "
            f"({self.world} x {b // self.world}), {self.args.epochs} epochs, {self.device.type}"
        )
        if plan.length_why:
            self._log(f"run length: {plan.length_why}")

    def _epoch(self, run: RunState, data: RunData, p: Progress, epoch: int) -> None:
        a, plan = self.args, self.plan
        prep = self._prep(self.ds.crop_pct)
        shard = self.hooks.on_shard and (lambda e, b: self.hooks.on_shard(self.rank, e, b))
        batches = epoch_batches(plan, self.ds, data, run, self.rank, epoch, prep, shard)
        bar = self._bar(epoch, run.steps_per_epoch)
        stats = train_one_epoch(run, batches, epoch, self._check_finite, self._on_step(bar, run))
        if bar is not None:
            bar.close()
        p.train_s += stats.seconds
        p.train_images += stats.images
        eval_model = run.ema.module if run.ema is not None else run.model
        if data.train_images is not None:  # 2,048 fixed training images (Precise BN)
            n = min(len(data.train_images), PRECISE_BN_IMAGES)
            x = data.train_images.x[:n].contiguous(memory_format=torch.channels_last)
            recalibrate_bn(eval_model, x, plan.batch // self.world)
        sel = self._evaluate(eval_model, data.sel)
        if epoch == a.epochs:
            p.test = sel if data.test is data.sel else self._evaluate(eval_model, data.test)
        losses = [(f"{plan.sel_name} (selection)", sel)]
        if p.test is not None and p.test is not sel:
            losses.append(("test", p.test))
        what = check_finite_epoch(run.model, run.ema, losses)
        if what:
            raise MobilenetsError(
                f"{', '.join(what)} at epoch {epoch}; stopped before saving it "
                f"({self.folder.last_good()})"
            )
        if sel["top1"] > p.best:
            p.best, p.best_epoch = sel["top1"], epoch
        elapsed = self.elapsed_before + time.time() - self.t0
        p.last_row = row = epoch_row(epoch, stats, sel, plan.sel_name, data.bad, elapsed)
        if self.main:
            p.history.append(row)
            if epoch % a.save_every == 0 or epoch == a.epochs:
                # best.ckpt: the best of the saved epochs (all of them without --save-every)
                improved = sel["top1"] > p.best_saved
                p.best_saved = max(p.best_saved, sel["top1"])
                prep = self._prep(self.ds.crop_pct)
                self.folder.save_training(epoch, run, p, self.plan, self.ds, prep, improved)
        self._log(
            f"epoch {epoch}/{a.epochs}  train loss {row['train_loss']:.4f} top-1 "
            f"{100 * row['train_top1']:.2f}%  {plan.sel_name} loss {row['val_loss']:.4f} top-1 "
            f"{100 * row['val_top1']:.2f}% top-5 {100 * row['val_top5']:.2f}%  lr {row['lr']:.4g}"
            f"  {row['images_per_s']:.0f} img/s  {row['elapsed_s']:.0f}s"
        )

    def _evaluate(self, model: nn.Module, split: EvalSet) -> dict[str, float]:
        cuda, n = self.device.type == "cuda", self.plan.cfg.num_classes
        return evaluate_split(
            model, split, n, self.device, cuda, self.rank, self.world, batch_size=1024 if cuda else 128
        )  # fmt: skip

    def _bar(self, epoch: int, steps: int):
        if not self.main or self.args.quiet or not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        return tqdm(total=steps, desc=f"epoch {epoch}/{self.args.epochs}", unit="step", leave=False)

    def _on_step(self, bar, run: RunState):
        """The per-step callback: the progress bar and the test hook (None when neither)."""
        on_step, steps, t0 = self.hooks.on_step, run.steps_per_epoch, time.time()
        if bar is None and on_step is None:
            return None

        def show(step: int, sums: torch.Tensor) -> None:
            if bar is not None and (step % 10 == 0 or step == steps):
                s = sums.tolist()
                rate = s[2] * self.world / max(time.time() - t0, 1e-9)
                bar.set_postfix(
                    loss=f"{s[0] / s[2]:.3f}", acc=f"{100 * s[1] / s[2]:.1f}%", img_s=f"{rate:.0f}"
                )
                bar.update(step - bar.n)
            if on_step is not None:
                on_step(run.step)

        return show

    def _check_finite(self, first_bad: torch.Tensor, epoch: int) -> None:
        flag = first_bad.clone()
        if self.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops together
        step = int(flag)
        if step >= 0:
            raise bad_step_error(epoch, step, self.plan.steps, self.folder.last_good())

    def _end(self, run: RunState, data: RunData, p: Progress) -> dict[str, Any]:
        """Plots, the test figures of a run killed before its summary, then the summary."""
        if p.test is None:  # killed after the last checkpoint, before summary.json
            eval_model = run.ema.module if run.ema is not None else run.model
            p.last_row = p.history[-1] if p.history else {}
            p.test = self._evaluate(eval_model, data.test)
        if self.args.plots == "end":
            self.folder.plot(p.history)
        if len(data.bad):
            self._log(
                f"skipped {len(data.bad)} unreadable image(s), e.g. {sorted(data.bad.paths)[0]}"
            )
        wall = self.elapsed_before + time.time() - self.t0
        summary = run_summary(self.plan, p, self.ds, data, self.device, wall)
        self.folder.write_summary(summary)
        test = p.test
        if test:
            self._log(
                f"final test top-1 {100 * test['top1']:.2f}% top-5 {100 * test['top5']:.2f}% "
                f"(best {self.plan.sel_name} top-1 {100 * p.best:.2f}% at epoch {p.best_epoch}); "
                f"{self.folder.out}"
            )
        if self.world > 1:
            dist.barrier()
        return summary
