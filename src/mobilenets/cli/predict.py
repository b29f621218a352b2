"""``mobilenets predict``: classify image files with a checkpoint or an exported file."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from ..backend import ForeignInput, read_class_names
from ..errors import MobilenetsError
from ..predict import Predictor


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="classify image files with a checkpoint or an exported .onnx/.tflite",
        description="Print the top classes of each image. Preprocessing is evaluation's, read "
        "from the checkpoint or the ONNX metadata. An unreadable image is reported on stderr, "
        "the others are still classified, and the exit code is 1.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="checkpoint folder (or last.ckpt/best.ckpt), .onnx or .tflite file",
    )
    from .args import add_runtime_args, int_at_least

    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--top-k", type=int_at_least(1), default=5, metavar="K")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    add_runtime_args(p)
    p.add_argument(
        "--fast",
        action="store_true",
        help=".tflite: LiteRT's optimized kernels (may differ from TFLite Micro by a few LSB)",
    )
    add_foreign_args(p)
    p.set_defaults(func=run_predict)


def add_foreign_args(p: argparse.ArgumentParser) -> None:
    """``--class-names/--mean/--std/--resolution``: for a .tflite file without our metadata."""
    from .args import _finite_float, int_at_least, positive_float

    g = p.add_argument_group(
        ".tflite files without mobilenets metadata (any converter's; default: LiteRT's "
        "standard metadata when present, else assumed and said on stderr)"
    )
    g.add_argument("--class-names", metavar="FILE", help="class names, one per line")
    g.add_argument("--mean", type=_finite_float, nargs="+", metavar="M", help="per channel, 0..1")
    g.add_argument("--std", type=positive_float, nargs="+", metavar="S", help="per channel, 0..1")
    g.add_argument("--resolution", type=int_at_least(1), metavar="PX", help="must be the graph's")


def foreign_input(args: argparse.Namespace) -> ForeignInput:
    """The :class:`ForeignInput` of the parsed ``--class-names/--mean/--std/--resolution``."""
    names = read_class_names(args.class_names) if args.class_names else None
    return ForeignInput(
        names,
        tuple(args.mean) if args.mean else None,
        tuple(args.std) if args.std else None,
        args.resolution,
    )


def run_predict(args: argparse.Namespace) -> int:
    pred = Predictor(
        args.model, threads=args.threads, spin=args.spin, fast=args.fast,
        foreign=foreign_input(args),
    )  # fmt: skip
    for note in (pred.assumed, pred.backend.note):
        if note:
            print(f"mobilenets: note: {note}", file=sys.stderr)
    results: list[dict[str, Any]] = [{"image": path} for path in args.images]
    batch: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        if batch:
            top = pred.rank(pred.logits(torch.cat([x for _, x in batch])), args.top_k)
            for (i, _), t in zip(batch, top, strict=True):
                results[i]["predictions"] = t
            batch.clear()

    for i, path in enumerate(args.images):
        try:
            batch.append((i, pred.preprocess(pred.load(path))))
        except MobilenetsError as e:
            print(f"mobilenets: error: {e}", file=sys.stderr)
            results[i]["error"] = str(e)
        if len(batch) >= pred.batch_size:
            flush()
    flush()
    failed = sum("error" in r for r in results)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "predictions" not in r:
                continue
            print(_terminal(r["image"]))
            for t in r["predictions"]:
                print(f"  {t['prob']:.4f}  {_terminal(t['class'])}")
    return 1 if failed else 0


def _terminal(text: object) -> str:
    """``text`` safe for a terminal: control characters (ESC, NUL...) escaped as ``\\x1b``."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
