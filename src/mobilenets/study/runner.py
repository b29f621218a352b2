"""Run a study's pending cells: in this process or in ``--jobs J`` worker processes.

Each process loads the dataset once and trains its cells one after another; a progress bar over
the cells shows an ETA. Cells whose ``summary.json`` exists are skipped, so a killed study
resumes where it stopped (a cell killed mid-run resumes from its last checkpoint).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from .cells import Cell, Training, run_cell

_WORKER: dict[str, Any] = {}  # per worker process: the loaded dataset


def threads_per_job(jobs: int) -> int:
    from ..bench import default_threads

    return max(1, default_threads() // jobs)


def _devices(training: Training) -> list[str | None]:
    """One CUDA_VISIBLE_DEVICES value per GPU when training on CUDA, else [None]."""
    import torch

    if training.device == "cpu" or not torch.cuda.is_available():
        return [None]
    return [str(i) for i in range(torch.cuda.device_count())]


def _init_worker(
    spec: str, threads: int, devices: list[str | None], counter: Any, lock: Any
) -> None:
    with lock:
        index = counter.value
        counter.value += 1
    gpu = devices[index % len(devices)]
    if gpu is not None:  # before CUDA initializes in this process: it sees one GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch

    from ..data import load_dataset

    torch.set_num_threads(threads)
    _WORKER["dataset"] = load_dataset(spec)


def _timed(cell: Cell, training: Training, out: str | Path, dataset: Any) -> float:
    """Train one cell; record its wall and CPU seconds in ``study_timing.json`` beside it."""
    from .measure import write_json

    t, cpu = time.time(), time.process_time()
    run_cell(cell, training, out, dataset)
    wall = time.time() - t
    write_json(
        cell.folder(out) / "study_timing.json",
        {"wall_s": wall, "cpu_s": time.process_time() - cpu, "threads": _threads_now()},
    )
    return wall


def _threads_now() -> int:
    import torch

    return torch.get_num_threads()


def _work(cell: Cell, training: Training, out: str) -> tuple[str, float]:
    return cell.id, _timed(cell, training, out, _WORKER["dataset"])


def _bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="study cells", unit="cell", file=sys.stderr, dynamic_ncols=True)


def run_cells(
    cells: list[Cell], training: Training, out: str | Path, jobs: int = 1, log=print
) -> dict[str, float]:
    """Train every cell of ``cells`` that is not done; returns {cell id: seconds} of this call."""
    pending = [c for c in cells if not c.done(out)]
    if len(pending) < len(cells):
        log(f"study: {len(cells) - len(pending)} of {len(cells)} cells already finished")
    if not pending:
        return {}
    times: dict[str, float] = {}
    bar = _bar(len(pending))
    try:
        if jobs <= 1:
            _run_here(pending, training, out, bar, times)
        else:
            _run_pool(pending, training, out, jobs, bar, times)
    finally:
        bar.close()
    return times


def _run_here(pending, training, out, bar, times) -> None:
    import torch

    from ..data import load_dataset

    previous = torch.get_num_threads()
    torch.set_num_threads(threads_per_job(1))
    try:
        dataset = load_dataset(training.data)
        for cell in pending:
            bar.set_postfix_str(cell.id)
            times[cell.id] = _timed(cell, training, out, dataset)
            bar.update(1)
    finally:
        torch.set_num_threads(previous)


def _run_pool(pending, training, out, jobs, bar, times) -> None:
    ctx = mp.get_context("spawn")  # no forked torch state; every worker starts clean
    counter, lock = ctx.Value("i", 0), ctx.Lock()
    init = (training.data, threads_per_job(jobs), _devices(training), counter, lock)
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=init) as ex:
        futures = [ex.submit(_work, c, training, str(out)) for c in pending]
        for f in as_completed(futures):
            cell_id, seconds = f.result()
            times[cell_id] = seconds
            bar.set_postfix_str(cell_id)
            bar.update(1)
