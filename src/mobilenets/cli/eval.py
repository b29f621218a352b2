"""``mobilenets eval``: accuracy and confusion matrix of a checkpoint or exported file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..evaluation import evaluate


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    from .args import add_batch_size_arg, add_data_args, add_device_args
    from .predict import add_foreign_args

    p = subparsers.add_parser(
        "eval", help="top-1/top-5/per-class accuracy and confusion matrix of a checkpoint"
    )
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="checkpoint folder, or RUN/last.ckpt, RUN/best.ckpt, or an .onnx or .tflite file",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help=".tflite: LiteRT's optimized kernels (may differ from TFLite Micro by a few LSB)",
    )
    add_data_args(p, help="dataset (default: the one it was trained on)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test")
    p.add_argument(
        "--out", metavar="DIR", help="where to write the confusion matrix (default: RUN/eval-SPLIT)"
    )
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    add_batch_size_arg(p, 256)
    add_device_args(p)
    add_foreign_args(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from ..checkpoint import resolve
    from .predict import foreign_input

    if Path(args.checkpoint).suffix in (".onnx", ".tflite"):
        out = args.out or Path(args.checkpoint).with_name(
            Path(args.checkpoint).stem + f"-eval-{args.split}"
        )
    else:
        out = args.out or resolve(args.checkpoint).parent / f"eval-{args.split}"
    r = evaluate(
        args.checkpoint,
        args.data,
        args.split,
        args.data_dir,
        args.batch_size,
        args.device,
        out,
        args.workers,
        args.skip_bad_images,
        args.fast,
        foreign_input(args),
    )
    if r.get("assumed"):
        print(f"mobilenets: note: {r['assumed']}", file=sys.stderr)
    if args.json:
        print(json.dumps({k: v for k, v in r.items() if k != "confusion"}))
        return 0
    print(f"{r['checkpoint']} on {r['data']} [{r['split']}], {r['n']} images")
    print(f"top-1 {100 * r['top1']:.2f}%   top-5 {100 * r['top5']:.2f}%   loss {r['loss']:.4f}")
    width = max(len(c) for c in r["class_names"])
    for name, acc in r["per_class"].items():
        print(f"  {name:<{width}}  {'-' if acc is None else f'{100 * acc:6.2f}%'}")
    if r["skipped_images"]:
        print(f"skipped {r['skipped_images']} unreadable image(s)")
    print(f"confusion matrix: {out}/confusion_matrix.png, {out}/confusion_matrix.json")
    return 0
