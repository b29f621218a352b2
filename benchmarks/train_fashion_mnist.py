"""Benchmark: the full Fashion-MNIST recipe, printed as ONE JSON line.

Default: MobileNetV2 alpha=1, small-input (28 px, 1 channel), the ``long`` recipe (40 epochs:
random erasing and weight decay for a long run on 60,000 images; ``--recipe modern`` is the
short-run default of ``train``, ``fast`` the batch-1024 time-to-accuracy recipe).
Reports the final-epoch test accuracy (a fraction; never a best-of-epochs figure), wall time
from process start, training images/s, and the time from process start until the test top-1
first reached ``--target`` (0.95; the zalandoresearch README lists MobileNet at 0.950).

``--peer`` also trains torchvision's ``mobilenet_v2`` (stem and first stride-2 block set to
stride 1, as our small_input) with a plain PyTorch loop on the same in-memory data, the same
augmentation, optimizer and precision, and reports our training images/s over the peer's.

GPU::

    python benchmarks/train_fashion_mnist.py --device cuda --peer
    python benchmarks/train_fashion_mnist.py --device cuda --recipe fast --epochs 15

``warmup_s``: epoch 1's training time minus the steady rate's time for as many images (cuDNN
autotuning, ``--compile``'s compilation). ``benchmarks/gpu_suite.sh`` runs every figure.

CPU smoke run (reduced width, a subset)::

    python benchmarks/train_fashion_mnist.py --device cpu --width 0.25 --epochs 1 \\
        --max-train-samples 2048 --max-eval-samples 1000 --peer --peer-steps 10

``--smoke`` is the smallest such run (seconds; ``tests/test_benchmarks.py`` runs it).
"""

from __future__ import annotations

import time

T_START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402


def process_start() -> float:
    """When this process started (Linux: from /proc), else when this script began."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return T_START


def peer_images_per_s(args, device, batch_size: int, lr: float, recipe) -> float:
    """Training images/s of torchvision's mobilenet_v2 in a plain loop on the same data."""
    import torch
    import torchvision
    from torch import nn

    from mobilenets.data import load_dataset, random_crop_flip
    from mobilenets.transforms import to_model_input

    ds = load_dataset("fashion-mnist", args.data_dir)
    images = ds.split("train").images.to(device)
    labels = ds.split("train").labels.to(device)
    mean, std = ds.stats(1)
    model = torchvision.models.mobilenet_v2(num_classes=10, width_mult=args.width)
    stem_out = model.features[0][0].out_channels
    model.features[0][0] = nn.Conv2d(1, stem_out, 3, 1, 1, bias=False)  # 1 channel, stride 1
    model.features[2].conv[1][0].stride = (1, 1)  # first 24-channel block: stride 1
    model.to(device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda  # as the plain loop
    if cuda:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(
        model.parameters(), lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay
    )
    crit = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    gen = torch.Generator().manual_seed(0)
    steps = min(args.peer_steps, len(labels) // batch_size)
    warmup = min(10, steps // 5)
    model.train()
    t0 = None
    for step in range(steps):
        if step == warmup:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.time()
        idx = torch.randint(0, len(labels), (batch_size,), generator=gen).to(device)
        x = to_model_input(random_crop_flip(images[idx], 2, gen), 28, mean, std, 1)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = crit(model(x).float(), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if cuda:
        torch.cuda.synchronize()
    return (steps - warmup) * batch_size / (time.time() - t0)


SMOKE = {  # --smoke: every path (training, evaluation, the peer loop) in seconds on a CPU
    "width": 0.25,
    "epochs": 1,
    "batch_size": 64,
    "max_train_samples": 128,
    "max_eval_samples": 128,
    "peer_steps": 3,
    "plots": "none",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv`` for tests; default ``sys.argv``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenet_v2", choices=("mobilenet_v1", "mobilenet_v2"))
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, help="default: the recipe's (256; fast: 1024)")
    p.add_argument("--recipe", default="long", choices=("modern", "long", "fast", "paper"))
    p.add_argument("--lr", type=float)
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--target", type=float, default=0.95, help="test top-1 for the time-to-accuracy figure"
    )
    p.add_argument("--max-train-samples", type=int, help="smoke runs only")
    p.add_argument("--max-eval-samples", type=int, help="smoke runs only")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--label", default="train_fashion_mnist", help="the JSON line's name")
    p.add_argument("--save-every", type=int, default=1)
    p.add_argument("--plots", default="none", choices=("end", "none"))
    p.add_argument("--out", help="run folder (default: a temporary one)")
    p.add_argument(
        "--peer", action="store_true", help="also time torchvision's mobilenet_v2 in a plain loop"
    )
    p.add_argument("--peer-steps", type=int, default=300)
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny settings (width 0.25, 1 epoch, 2 steps of 64, 3 peer steps): paths only",
    )
    args = p.parse_args(argv)
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
    return args


def result_row(
    args: argparse.Namespace, summary: dict, out: str, device: str, t_proc: float
) -> dict:
    """The JSON line of a finished run: accuracy, time to --target, throughput, provenance."""
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    hit = next(
        (r for r in rows if r["val_top1"] >= args.target), None
    )  # val_* is the test set here
    steady = [r["images_per_s"] for r in (rows[1:] or rows)]  # epoch 1 includes warm-up
    rate = statistics.median(steady)
    result = {
        "benchmark": args.label,
        "model": args.model,
        "width": args.width,
        "epochs": args.epochs,
        "batch_size": summary["global_batch"],
        "recipe": args.recipe,
        "compile": args.compile,
        "device": device,
        "test_top1": summary["final_test_top1"],
        "test_top5": summary["final_test_top5"],
        "test_images": summary["eval_images"]["test"],
        "target": args.target,
        "time_to_target_s": (hit["time"] - t_proc) if hit else None,
        "wall_s": time.time() - t_proc,
        "train_s": summary["train_s"],
        "images_per_s": rate,
        "warmup_s": rows[0]["train_s"] - rows[0]["train_images"] / rate if len(rows) > 1 else None,
        "train_loss_last": rows[-1]["train_loss"],
        "train_top1_last": rows[-1]["train_top1"],
        "hardware": summary["hardware"],
        "versions": summary["versions"],
        "command": shlex.join([sys.executable, *sys.argv]),
        "out": str(out),
    }
    return result


def main() -> int:
    args = parse_args()

    import torch

    from mobilenets.train import RECIPES, fit

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t_proc = process_start()
    out = args.out or tempfile.mkdtemp(prefix="bench-fmnist-")
    from mobilenets.data import load_dataset

    ds = load_dataset("fashion-mnist", args.data_dir)
    summary = fit(
        args.model,
        ds,
        out,
        args.epochs,
        args.batch_size,
        width_mult=args.width,
        small_input=True,
        recipe=args.recipe,
        lr=args.lr,
        seed=args.seed,
        device=device.type,
        quiet=True,
        compile=args.compile,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        save_every=args.save_every,
        plots=args.plots,
    )
    result = result_row(args, summary, out, device.type, t_proc)
    if args.peer:
        batch = summary["global_batch"]
        lr = summary["lr"]
        peer = peer_images_per_s(args, device, batch, lr, RECIPES["modern"])
        result["peer"] = {
            "name": "torchvision mobilenet_v2, plain loop",
            "batch_size": batch,
            "images_per_s": peer,
            "ratio": result["images_per_s"] / peer,
        }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
