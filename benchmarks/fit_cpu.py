"""Benchmark: ``fit()`` wall time per training image, this version against an older one, in one run.

Issue 10's CPU figure: MobileNetV1 alpha=0.25 small-input, 1 epoch on 8,192 Fashion-MNIST
images, batch 128, on an already loaded dataset, the whole ``fit()`` call timed (setup,
training, evaluation on the 10,000 test images, checkpoint). The old version is checked out
from git (``--old-rev``, default the commit before the engine) into a temporary folder; each
version runs in its own subprocess, alternating, ``--rounds`` times; the median per version.
Prints one JSON line per round and one summary line with ``speedup`` (old / new per-image time).

    OMP_NUM_THREADS=2 python benchmarks/fit_cpu.py --rounds 3

``--smoke``: one round on 128 images and 128 test images (seconds; the figures mean nothing).

Needs an idle machine for a meaningful wall-time figure: the load average is reported beside
it, and the CPU time (``time.process_time``) per image too, which a busy machine distorts less.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, tempfile, time
import torch
from mobilenets import data, train
ds = data.load_dataset("fashion-mnist")
old, batch, kw = json.loads(sys.argv[1])
if old:  # the old fit() loads the dataset itself: hand it the loaded one
    data.load_dataset = lambda spec, data_dir=None: ds
out = tempfile.mkdtemp(prefix="fit-cpu-")
t0, c0 = time.perf_counter(), time.process_time()
s = train.fit("mobilenet_v1", "fashion-mnist" if old else ds, out, 1, batch, **kw)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "train_s": s["train_s"], "test_top1": s["final_test_top1"],
                  "torch_threads": torch.get_num_threads()}))
"""


def run_child(src: Path, old: bool, args) -> dict:
    """One timed ``fit()`` of the ``old`` or new version (its ``src`` folder) in a subprocess."""
    kw = {"small_input": True, "max_train_samples": args.images, "device": "cpu", "quiet": True}
    if args.eval_images:
        kw["max_eval_samples"] = args.eval_images
    kw["width" if old else "width_mult"] = 0.25  # the old TrainArgs called it width
    if not old:
        kw.update(json.loads(args.new_options))
    env = {**os.environ, "PYTHONPATH": str(src)}
    r = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([old, args.batch_size, kw])],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode:
        raise SystemExit(f"{'old' if old else 'new'} fit() failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv`` for tests; default ``sys.argv``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-rev", default="f3258c4", help="git revision of the old fit()")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--new-options", default="{}", help="extra fit() keywords for the new version")
    p.add_argument("--eval-images", type=int, help="evaluate on a subset (default: all 10,000)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="1 round of 128 images, batch 64, 128 test images: the paths only, in seconds",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.images, args.batch_size, args.eval_images = 1, 128, 64, 128
    return args


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="old-mobilenets-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.old_rev, "src/mobilenets"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        versions = {"old": Path(tmp) / "src", "new": ROOT / "src"}
        per_image: dict[str, list[float]] = {"old": [], "new": []}
        cpu_per_image: dict[str, list[float]] = {"old": [], "new": []}
        for r in range(args.rounds):
            for name, src in versions.items():
                res = run_child(src, name == "old", args)
                res.update(version=name, round=r, load_avg=os.getloadavg()[0])
                res["wall_per_image_ms"] = 1000 * res["wall_s"] / args.images
                res["cpu_per_image_ms"] = 1000 * res["cpu_s"] / args.images
                per_image[name].append(res["wall_per_image_ms"])
                cpu_per_image[name].append(res["cpu_per_image_ms"])
                print(json.dumps(res), flush=True)
    old, new = statistics.median(per_image["old"]), statistics.median(per_image["new"])
    old_cpu, new_cpu = (statistics.median(cpu_per_image[k]) for k in ("old", "new"))
    print(
        json.dumps(
            {
                "benchmark": "fit_cpu",
                "model": "mobilenet_v1 alpha=0.25 small-input",
                "images": args.images,
                "batch_size": args.batch_size,
                "old_rev": args.old_rev,
                "old_ms_per_image": old,
                "new_ms_per_image": new,
                "speedup": old / new,
                "old_cpu_ms_per_image": old_cpu,
                "new_cpu_ms_per_image": new_cpu,
                "cpu_time_speedup": old_cpu / new_cpu,
                "goal": 1.2,
                "eval_images": args.eval_images or 10000,
                "smoke": args.smoke,
                "load_avg_1min": os.getloadavg()[0],
                "cpus": os.cpu_count(),
                "command": " ".join([sys.executable, *sys.argv]),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
