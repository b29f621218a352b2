"""A training run's folder (``train --out RUN``): its lock, its record, its resume point, its log.

- ``RUN/.lock`` is held with ``fcntl.flock`` by rank 0 for the run's life; the kernel drops it
  when the process dies (even by SIGKILL), so a killed run can always be resumed, while a
  second writer is refused naming the holder's PID.
- ``RUN/run.json`` records the values that define the run (model, data, recipe, seed, ...),
  written atomically at the start; ``--resume`` refuses values that differ. Runtime options
  (device, workers, ...) may change and are appended to its ``processes`` list.
- Any of ``last.ckpt``, ``best.ckpt``, an ``epoch-*.ckpt`` folder or ``metrics.jsonl`` means a
  run exists; it is resumed from a verified checkpoint, never overwritten.
- ``metrics.jsonl`` is rewritten atomically; leftovers of a killed writer (``.*.tmp-*``,
  ``.*.old-*``) are removed by the next run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_text as write_atomic
from .config import current_dict
from .errors import MobilenetsError, UsageError

RECORD = "run.json"
METRICS = "metrics.jsonl"
LOCK = ".lock"
SUMMARY = "summary.json"
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

# Run-defining values: the flag(s) that set each, for the refusal message.
DEFINING = {
    "model": "the model (--model, --width, --resolution, --small-input, --in-chans, --activation)",
    "data": "--data",
    "data_dir": "--data-dir",
    "seed": "--seed",
    "batch_size": "--batch-size",
    "val_split": "--val-split",
    "max_train_samples": "--max-train-samples",
    "max_eval_samples": "--max-eval-samples",
    # last: they follow from the values above too (batch scaling, engine.adapt_to_length)
    "recipe": "the recipe (--recipe, --weight-decay, --label-smoothing, --ema, --ema-decay)",
    "lr": "--lr",
}


class RunLock:
    """An exclusive ``flock`` on ``RUN/.lock`` holding the owner's PID."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            pid = self.path.read_text().strip() or "unknown"
            raise MobilenetsError(
                f"{out} is in use by another training run (PID {pid} holds {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def markers(out: Path) -> list[str]:
    """The files that show ``out`` holds a run (a broken link counts)."""
    names = [
        n
        for n in ("last.ckpt", "best.ckpt", METRICS)
        if (out / n).is_symlink() or (out / n).exists()
    ]
    return names + sorted(p.name for p in out.glob("epoch-*.ckpt"))


def clean_leftovers(out: Path) -> None:
    """Remove temporary files, links and folders that a killed writer left behind."""
    for stale in [*out.glob(".*.tmp-*"), *out.glob(".*.old-*")]:
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _describe_link(link: Path) -> str:
    if not link.is_symlink():
        return f"{link.name} is missing"
    return f"{link.name} is a broken link (-> {os.readlink(link)})"


def resume_point(out: Path, state_keys: tuple[str, ...]) -> tuple[Path, dict[str, Any], str]:
    """The verified checkpoint to resume ``out`` from, its training state, and a note for the log.

    ``last.ckpt`` when it points to a folder; else the newest epoch folder whose files verify.
    A damaged checkpoint, or a run with no complete checkpoint left, stops with one line.
    """
    from .checkpoint import verify_checkpoint

    last = out / "last.ckpt"
    if last.exists():
        state = verify_checkpoint(last, state_keys)
        _verify_best(out, last)
        return last, state, ""
    for folder in sorted(out.glob("epoch-*.ckpt"), reverse=True):
        try:
            state = verify_checkpoint(folder, state_keys)
        except MobilenetsError:
            continue
        _verify_best(out, folder)
        return (
            folder,
            state,
            f"{_describe_link(last)}; resuming from {folder.name}, the newest complete epoch",
        )
    raise MobilenetsError(
        f"{out} holds a run ({', '.join(markers(out))}) but {_describe_link(last)} and no "
        f"complete epoch-*.ckpt folder remains, so it cannot be resumed; restore the checkpoint "
        f"or move {out} aside to start over"
    )


def _verify_best(out: Path, chosen: Path) -> None:
    from .checkpoint import verify_checkpoint

    best = out / "best.ckpt"
    if best.is_symlink() and not best.exists():
        raise MobilenetsError(
            f"{best} is a broken link (-> {os.readlink(best)}); restore that folder, "
            f"or remove the link and the run will point it again"
        )
    if best.exists() and best.resolve() != chosen.resolve():
        verify_checkpoint(best)


def check_record(out: Path, record: dict[str, Any], epochs: int, started: bool) -> None:
    """Refuse, in one line, run-defining values that differ from ``RUN/run.json``.

    ``started``: a checkpoint exists (otherwise nothing was trained and the run may be redefined).
    """
    path = out / RECORD
    if not started or not path.exists():
        return
    try:
        stored = json.loads(path.read_text())
        old = stored["defining"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MobilenetsError(f"{path}: unreadable run record ({e})") from None
    # the length first: a short run's lr and EMA follow from it (engine.adapt_to_length)
    if stored.get("epochs") != epochs:
        raise UsageError(
            f"--resume: {out} was started for {stored.get('epochs')} epochs, not {epochs}; the "
            f"learning-rate schedule depends on the total, so a run cannot be extended or "
            f"shortened (start a new run with --pretrained {out / 'last.ckpt'})"
        )
    old = {**old, "model": current_dict(old.get("model"))}  # older config schemas upgrade
    for key, flag in DEFINING.items():
        if old.get(key) != record.get(key):
            raise UsageError(
                f"--resume: {flag} differs from the run in {out} "
                f"({_difference(old.get(key), record.get(key))}); run-defining values cannot "
                f"change on resume, start a new --out"
            )


def _difference(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                return f"{k}: stored {old.get(k)!r}, given {new.get(k)!r}"
    return f"stored {old!r}, given {new!r}"


def write_record(out: Path, record: dict[str, Any], epochs: int, runtime: dict[str, Any]) -> None:
    """Write ``run.json`` (fresh run), or append this process's runtime options (resumed run)."""
    path = out / RECORD
    stored: dict[str, Any] = {"defining": record, "epochs": epochs, "processes": []}
    if path.exists():
        try:
            old = json.loads(path.read_text())
            if old.get("defining") == record and old.get("epochs") == epochs:
                stored = old
        except (OSError, ValueError):
            pass
    stored["processes"].append(runtime)
    write_atomic(path, json.dumps(stored, indent=2) + "\n")


def read_metrics(out: Path, upto: int) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` up to epoch ``upto`` (rows of unfinished epochs are dropped)."""
    path = out / METRICS
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill (older versions appended in place)
            if isinstance(row, dict) and row.get("epoch", 0) <= upto:
                rows.append(row)
    return rows


def write_metrics(out: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` atomically (a kill leaves the old or the new file, whole)."""
    write_atomic(out / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain values (loadable with ``weights_only=True``)."""
    import random

    import numpy as np
    import torch

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


def set_rng_state(s: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    import random

    import numpy as np
    import torch

    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))


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


class RunFolder:
    """``--out`` of one training run: lock, resume point, record, checkpoints, links, summary.

    Rank 0 (``main``) alone locks and writes; every rank reads. ``on_event(text)`` is told what
    was written (test hooks); ``log`` prints a line.
    """

    def __init__(
        self,
        out: Path,
        main: bool,
        log: Callable[[str], None],
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.out = Path(out)
        self.main = main
        self.log = log
        self.on_event = on_event
        self.lock: RunLock | None = None

    def open(self, record: dict[str, Any], epochs: int, resume: bool) -> dict[str, Any] | None:
        """Lock the folder (rank 0); the verified training state to resume, or None."""
        if self.main:
            self.lock = RunLock(self.out)
        found = markers(self.out) if self.out.is_dir() else []
        if found and not resume:
            raise UsageError(
                f"{self.out} already holds a run ({', '.join(found[:3])}); pass --resume to "
                f"continue it or choose another --out"
            )
        if not found:
            if resume:
                self.log(f"--resume: no checkpoint in {self.out} yet, starting from scratch")
            return None
        _, state, note = resume_point(self.out, STATE_KEYS)
        check_record(self.out, record, epochs, started=True)
        if note:
            self.log(f"--resume: {note}")
        return state

    def release(self) -> None:
        """Drop the lock (no-op when not held)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def finished_summary(self, epoch: int, epochs: int) -> dict[str, Any] | None:
        """The run's summary when it has trained all its epochs and written one, else None."""
        if epoch < epochs:
            return None
        try:
            summary = json.loads((self.out / SUMMARY).read_text())
        except (OSError, ValueError):
            return None  # killed before the summary was (fully) written: finish the run
        return summary if isinstance(summary, dict) else None

    def check_state(self, state: dict[str, Any], config: dict, batch: int, n_train: int) -> None:
        """Checks for runs recorded before run.json existed."""
        where = self.out / "last.ckpt"
        if state["config"] != config:
            raise UsageError(f"--resume: {where} was trained with another model configuration")
        if state["global_batch"] != batch or state["train_images"] != n_train:
            raise UsageError(
                f"--resume: {where} was trained with another --batch-size or training set"
            )

    def prepare(
        self, record: dict[str, Any], epochs: int, runtime: dict[str, Any], resumed: int | None
    ) -> list[dict[str, Any]]:
        """Rank 0: remove leftovers, record the run; the metrics rows of the resumed epochs."""
        if not self.main:
            return []
        clean_leftovers(self.out)
        write_record(self.out, record, epochs, runtime)
        if resumed is None:
            return []
        rows = read_metrics(self.out, resumed)
        write_metrics(self.out, rows)
        return rows

    def save_epoch(
        self, epoch: int, history: list[dict[str, Any]], improved: bool, **checkpoint: Any
    ) -> None:
        """Checkpoint folder, then metrics.jsonl, best.ckpt, last.ckpt: each step atomic.

        ``checkpoint``: :func:`mobilenets.checkpoint.save_checkpoint`'s arguments after the path.
        """
        from .atomic import point_link
        from .checkpoint import save_checkpoint

        folder = self.out / f"epoch-{epoch:04d}.ckpt"
        try:
            save_checkpoint(folder, **checkpoint)
            write_metrics(self.out, history)
            if improved:
                point_link(self.out / "best.ckpt", folder)
            point_link(self.out / "last.ckpt", folder)
            if self.on_event is not None:
                self.on_event(f"checkpoint {folder.name}")
            self.prune()
        except OSError as e:
            cause = e.strerror or str(e)
            raise MobilenetsError(
                f"could not write {folder.name} at epoch {epoch}: {cause}"
                f"{f' ({e.filename})' if e.filename else ''}; stopped ({self.last_good()})"
            ) from None

    def prune(self) -> None:
        """Remove the epoch folders that neither last.ckpt nor best.ckpt points to."""
        keep = {
            (self.out / n).resolve() for n in ("last.ckpt", "best.ckpt") if (self.out / n).exists()
        }
        for folder in self.out.glob("epoch-*.ckpt"):
            if folder.resolve() not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def last_good(self) -> str:
        """Where the run can be resumed from, for error messages."""
        last = self.out / "last.ckpt"
        if last.is_symlink() and last.exists():
            return f"last good checkpoint: {last} -> {os.readlink(last)}"
        return "no checkpoint was written yet"

    def restore(self, run: Any, state: dict[str, Any]) -> tuple[Any, float]:
        """Load a verified training state into ``run`` (an :class:`engine.RunState`); the
        :class:`engine.Progress` it had reached and the wall time of the earlier processes."""
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.step = int(state["scheduler"].get("last_epoch", 0))  # optimizer steps taken
        if run.ema is not None and state.get("ema") is not None:
            run.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        p = Progress(int(state["epoch"]), float(state["best_val_top1"]), int(state["best_epoch"]))
        p.best_saved = float(state.get("best_saved", p.best))
        self.log(f"resuming {self.out} after epoch {p.start_epoch}")
        return p, float(state.get("elapsed_s", 0.0))

    def save_training(
        self, epoch: int, run: Any, p: Any, plan: Any, ds: Any, prep: Any, improved: bool
    ) -> None:
        """The epoch's checkpoint: the training state to resume (``run``, progress ``p``), the
        inference weights (the EMA's when there is one) and the metadata of ``plan``."""
        row = p.history[-1]
        state = {
            "epoch": epoch,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": {"last_epoch": run.step},  # optimizer steps taken (LambdaLR's name)
            "ema": run.ema.state_dict() if run.ema is not None else None,
            "rng": rng_state(),
            "best_val_top1": p.best,
            "best_epoch": p.best_epoch,
            "best_saved": p.best_saved,
            "config": plan.cfg.to_dict(),
            "global_batch": plan.batch,
            "train_images": plan.n_train,
            "elapsed_s": row["elapsed_s"],
        }
        a = plan.args
        meta = {
            "epoch": epoch,
            "data": ds.spec,
            "data_dir": a.data_dir,
            "val_split": a.val_split,
            "split_seed": a.seed,
            "recipe": plan.recipe.name,
            "ema": run.ema is not None,
            "metrics": {k: row[k] for k in ("val_top1", "val_top5", "val_loss", "eval_set")},
        }
        weights = run.ema.module.state_dict() if run.ema is not None else None
        self.save_epoch(
            epoch, p.history, improved, model=run.model, class_names=ds.class_names, meta=meta,
            training_state=state, state_dict=weights, preprocess=prep,
        )  # fmt: skip

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` atomically (rank 0)."""
        if self.main:
            write_atomic(self.out / SUMMARY, json.dumps(summary, indent=2))

    def plot(self, history: list[dict[str, Any]]) -> None:
        """``curves.png`` from the metrics rows (rank 0); a write failure is only logged."""
        if not (self.main and history):
            return
        from .plots import plot_curves

        try:
            plot_curves(history, self.out / "curves.png")
        except OSError as e:
            self.log(f"curves.png not written: {e}")


def run_summary(
    plan: Any, p: Any, ds: Any, data: Any, device: Any, wall_s: float
) -> dict[str, Any]:
    """``summary.json``: the final figures of ``plan``'s run (progress ``p``, its ``data``)."""
    from dataclasses import asdict

    from .env import hardware, versions

    row, test, history = p.last_row, p.test, p.history
    last = history[-1] if history else {}
    return {
        "final_val_top1": row.get("val_top1", last.get("val_top1")),
        "final_val_top5": row.get("val_top5", last.get("val_top5")),
        "final_test_top1": test["top1"] if test else None,
        "final_test_top5": test["top5"] if test else None,
        "best_val_top1": p.best,
        "best_epoch": p.best_epoch,
        "eval_set": plan.sel_name,
        "eval_images": {plan.sel_name: data.sel.n, "test": data.test.n},
        "epochs": plan.args.epochs,
        "wall_s": wall_s,
        "train_s": p.train_s,
        "images_per_s": p.train_images / p.train_s if p.train_s else None,
        "world_size": plan.world,
        "global_batch": plan.batch,
        "lr": plan.lr,
        "recipe": asdict(plan.recipe),
        "data": ds.spec,
        "small_input": {"value": plan.cfg.small_input, "why": plan.small_why},
        "run_length": {"augment": plan.augment, "why": plan.length_why},
        "skipped_images": len(data.bad),
        "hardware": hardware(device),
        "versions": versions(),
        "config": plan.cfg.to_dict(),
        "command": plan.args.command,
    }


def runtime_record(args: Any, device: str, world: int) -> dict[str, Any]:
    """This process's options that may change between resumes (``run.json``'s ``processes``)."""
    import time

    from .env import versions

    return {
        "time": time.time(),
        "command": args.command,
        "device": device,
        "world_size": world,
        "workers": args.workers,
        "compile": args.compile,
        "sync_bn": args.sync_bn,
        "versions": versions(),
    }
