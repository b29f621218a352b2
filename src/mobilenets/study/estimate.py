"""``study --plan --estimate``: time a few training steps of every cell, extrapolate the study.

Each distinct variant is built and trained for a few steps on random inputs of the cell's
resolution (batch: the cell's, at most 32 images on the CPU so that VGG16 stays affordable),
after two untimed steps; the fastest timed step counts. A cell's time is then its training images x epochs x the measured
seconds per image, plus evaluation (validation split each epoch, test images once) at a third
of that per image (forward only). These are
step-time measurements on this machine, not a run of the study.
"""

from __future__ import annotations

import time
from typing import Any

from .cells import Grid, Variant

CPU_BATCH = 32
TIMED_STEPS = 5
WARMUP_STEPS = 2
TRAIN_IMAGES = {"fashion-mnist": 60000, "cifar10": 50000, "cifar100": 50000}
EVAL_IMAGES = {"fashion-mnist": 10000, "cifar10": 10000, "cifar100": 10000}


def seconds_per_image(
    v: Variant, batch: int, device: str, num_classes: int, in_chans: int
) -> float:
    """Measured training seconds per image of ``v`` (forward, backward, SGD step)."""
    import torch

    from ..models import build_from_config

    cfg = v.config(num_classes, in_chans)
    model = build_from_config(cfg).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, cfg.in_chans, cfg.resolution, cfg.resolution, device=device)
    y = torch.randint(0, cfg.num_classes, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(WARMUP_STEPS):  # lazy initialization, allocator, thread pool
        step()
    times = []
    for _ in range(TIMED_STEPS):  # the fastest step: other jobs on the machine only add time
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times) / batch


def forward_images(tr: Any, n_test: int) -> int:
    """Images one cell evaluates: its selection split every epoch (the validation split, or
    the test images without one), then the test images once when a validation split exists."""
    if not tr.val_split:
        return n_test * tr.epochs
    n_val = min(tr.val_split, tr.max_eval_samples or tr.val_split)
    return n_val * tr.epochs + n_test


def estimate_grid(grid: Grid, jobs: int) -> dict[str, Any]:
    """Per-cell and total estimated seconds on this machine's ``--device``, with report lines."""
    import torch

    from ..data import parse_spec

    tr = grid.training
    device = tr.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kind, _ = parse_spec(tr.data)
    n_val = tr.val_split or 0
    n_train = tr.max_train_samples or (TRAIN_IMAGES[kind] - n_val if kind in TRAIN_IMAGES else None)
    n_eval = tr.max_eval_samples or EVAL_IMAGES.get(kind)
    if n_train is None or n_eval is None:
        return {"lines": ["# --estimate knows the sizes of Fashion-MNIST and CIFAR only"]}
    n_cls, chans = (10, 1) if kind == "fashion-mnist" else (100 if kind == "cifar100" else 10, 3)
    batch = tr.batch_size if device == "cuda" else min(CPU_BATCH, tr.batch_size)
    if device == "cpu":  # each of the --jobs processes trains with its share of the cores
        from .runner import threads_per_job

        torch.set_num_threads(threads_per_job(jobs))
    per_variant: dict[str, float] = {}
    cells = {}
    for c in grid.cells:
        if c.variant.key not in per_variant:
            per_variant[c.variant.key] = seconds_per_image(c.variant, batch, device, n_cls, chans)
        s = per_variant[c.variant.key]
        cells[c.id] = n_train * tr.epochs * s + forward_images(tr, n_eval) * s / 3
    total = sum(cells.values())
    hw = torch.cuda.get_device_name() if device == "cuda" else "this CPU"
    lines = [
        f"# estimate on {hw} (fastest of {TIMED_STEPS} steps of batch {batch} per variant; "
        "other jobs on the machine inflate it):"
    ]
    lines += [f"#   {k}: {v:.0f} s" for k, v in cells.items()]
    lines.append(
        f"# total {total:.0f} s of training; with --jobs {jobs}: about {total / jobs:.0f} s "
        "(plus process start-up, latency and report)"
    )
    if device != "cuda":
        lines.append(
            "# GPU estimate: NOT measured here (no GPU). Run "
            "`mobilenets study --preset paper --plan --estimate --device cuda` on the GPU."
        )
    return {
        "device": device,
        "hardware": hw,
        "batch": batch,
        "cells_s": cells,
        "total_s": total,
        "jobs": jobs,
        "lines": lines,
    }
