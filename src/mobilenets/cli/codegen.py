"""``mobilenets codegen``: the C99 int8 library for microcontrollers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import MOBILENETS
from ..errors import UsageError
from ..micro.codegen import DEFAULT_PREFIX, TARGETS, _check_out_dir, check_prefix, generate_c
from ..micro.graph import QuantizedModel


def register(sub: Any) -> None:
    p = sub.add_parser(
        "codegen",
        help="generate a C99 int8 library for microcontrollers from a checkpoint",
        description="Quantize a checkpoint to int8 (or read an int8 .tflite), plan its memory "
        "statically and write a self-contained C library (model.h/model.c, kernels, Makefile, "
        "plan.json/plan.png, README with the memory report) to --out.",
    )
    p.add_argument("model", metavar="MODEL", help="checkpoint folder or int8 .tflite file")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    p.add_argument("--target", choices=TARGETS, default="host", help="Makefile default target")
    p.add_argument(
        "--calib-data",
        metavar="SPEC",
        help="calibration images for a checkpoint: fashion-mnist, cifar10:PATH, "
        "imagefolder:PATH or random",
    )
    p.add_argument("--data-dir", help="where --calib-data looks for its files")
    p.add_argument("--calib-samples", type=int, default=256, metavar="N")
    p.add_argument(
        "--max-sram", type=int, default=None, metavar="BYTES", help="fail if the arena is larger"
    )
    p.add_argument(
        "--layer-by-layer", action="store_true", help="no row bands: every tensor held whole"
    )
    p.add_argument(
        "--sample-images",
        type=int,
        default=5,
        metavar="N",
        help="test images compiled into the drivers, 0..256 (default 5; zero-point images "
        "without data)",
    )
    p.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        metavar="NAME",
        help="C identifier put before every exported symbol (NAMEinfer) and, upper-cased, every "
        f"macro and the include guard, to link several models into one program "
        f"(default {DEFAULT_PREFIX})",
    )
    p.set_defaults(func=run_codegen)


MAX_SAMPLE_IMAGES = 256  # one test batch


def _load_qmodel(args: Any) -> tuple[QuantizedModel, np.ndarray | None]:
    path = Path(args.model)
    if path.suffix == ".tflite":
        if not path.is_file():
            raise UsageError(f"MODEL {path}: no such file")
        if args.calib_data or args.data_dir:
            flag = "--calib-data" if args.calib_data else "--data-dir"
            raise UsageError(
                f"{flag} applies to a checkpoint only; {path.name} is already quantized"
            )
        from ..micro.tflite import read_tflite

        qm, _meta = read_tflite(path)
        return qm, None
    from ..checkpoint import load_checkpoint, read_info
    from ..data import calibration_inputs, test_batches
    from ..fold import check_finite_weights
    from ..micro.export import quantize_input
    from ..micro.quantizer import quantize_int8

    if not args.calib_data:
        raise UsageError(
            "a checkpoint needs --calib-data SPEC (fashion-mnist, cifar10:PATH, "
            "imagefolder:PATH or random) to quantize"
        )
    if args.calib_samples < 1:
        raise UsageError(f"--calib-samples must be >= 1, got {args.calib_samples}")
    name = read_info(path).get("model", {}).get("name")
    if name not in MOBILENETS:
        raise UsageError(f"MODEL {path}: {name} is not supported (MobileNets only)")
    ck = load_checkpoint(path)
    check_finite_weights(ck.model, str(ck.path))
    calib = calibration_inputs(args.calib_data, ck.preprocess, args.calib_samples, args.data_dir)
    qm = quantize_int8(ck.model, calib)
    qm.class_names = list(ck.class_names)
    samples = None
    if args.sample_images > 0 and args.calib_data != "random":
        x, _ = next(test_batches(args.calib_data, ck.preprocess, args.sample_images, args.data_dir))
        samples = quantize_input(x, qm)
    return qm, samples


def run_codegen(args: Any) -> int:
    out = Path(args.out)
    _check_out_dir(out)
    if args.max_sram is not None and args.max_sram < 1:
        raise UsageError(f"--max-sram must be >= 1, got {args.max_sram}")
    if not 0 <= args.sample_images <= MAX_SAMPLE_IMAGES:
        raise UsageError(
            f"--sample-images must be 0..{MAX_SAMPLE_IMAGES}, got {args.sample_images}"
        )
    check_prefix(args.prefix)
    qm, samples = _load_qmodel(args)
    if qm.is_float:
        raise UsageError(f"MODEL {args.model}: a float model; codegen needs an int8 one")
    rep = generate_c(
        qm,
        out,
        target=args.target,
        max_sram=args.max_sram,
        streaming=not args.layer_by_layer,
        test_inputs=samples,
        prefix=args.prefix,
    )
    print(
        f"wrote {out}: MN_ARENA_BYTES {rep['arena_bytes']:,} (peak at op {rep['peak_op']}; "
        f"layer by layer {rep['layer_by_layer_bytes']:,}), {rep['weight_bytes']:,} int8 weights"
    )
    return 0
