"""``mobilenets export``: a checkpoint to ONNX (fp32, int8) or .tflite, verified, with FILE.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import replace, temp_sibling
from ..atomic import write_text as write_atomic
from ..backend import accuracy, load_backend
from ..errors import UsageError
from ..export import DEFAULT_OPSET, MIN_OPSET, _finite, export_onnx
from ..fold import check_finite_weights
from ..micro.export import _check_model, export_tflite
from ..micro.tflite_model import IO_CHOICES
from ..preprocess import Preprocess


def register(subparsers: argparse._SubParsersAction) -> None:
    """The ``export`` subcommand (ONNX, or .tflite via :mod:`mobilenets.micro.export`)."""
    from .args import int_at_least

    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX or .tflite (optionally int8)",
        description="Fold BN, export ONE self-contained file, verify it, and write FILE.json "
        "with sizes, differences and accuracies. ONNX: a dynamic batch dimension, checked in "
        "onnxruntime; --int8 also writes FILE's int8 sibling (model.int8.onnx). tflite: --int8 "
        "makes --out itself the full-integer int8 file (int8 input and logits), checked against "
        "TFLite Micro and LiteRT, with TFLite Micro's arena in the report.",
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="checkpoint folder (or last.ckpt/best.ckpt)"
    )
    p.add_argument("--format", choices=("onnx", "tflite"), default="onnx")
    p.add_argument("--out", required=True, metavar="FILE", help="the .onnx/.tflite file to write")
    p.add_argument(
        "--opset",
        type=int_at_least(MIN_OPSET),
        default=None,  # None: not given (refused with --format tflite); DEFAULT_OPSET for onnx
        help=f"ONNX opset, {MIN_OPSET}..the installed onnx's newest (default {DEFAULT_OPSET})",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="onnx: also write a static int8 (QDQ) model; tflite: write a full-integer int8 file",
    )
    p.add_argument("--int8-out", metavar="FILE", help="int8 file (default: FILE with .int8.onnx)")
    _add_calibration_args(p)
    p.add_argument(
        "--eval-samples",
        type=int_at_least(1),
        default=None,
        metavar="N",
        help="test images for top-1 (default: all; tflite: all for models <= 100 M MACs, else 500)",
    )
    p.add_argument(
        "--verify-samples",
        type=int,
        default=20,
        metavar="N",
        help="tflite: inputs to compare runtimes on (default 20)",
    )
    p.set_defaults(func=run_export)


def _add_calibration_args(p: argparse.ArgumentParser) -> None:
    """The export command's calibration flags: --calib-data .. --weight-bits."""
    from ..micro.quantizer import CALIB_METHODS as TFLITE_CALIB
    from ..micro.quantizer import DEFAULT_METHOD as TFLITE_DEFAULT
    from ..onnx_quant import ACTIVATION_TYPES, CALIB_METHODS, DEFAULT_CALIB_METHOD
    from .args import add_data_args, int_at_least

    add_data_args(
        p,
        flag="--calib-data",
        help="calibration and test images: fashion-mnist, cifar10:PATH, imagefolder:PATH or random",
        workers=False,
        skip_bad_images=False,
    )
    p.add_argument(
        "--calib-samples",
        type=int_at_least(1),
        default=512,
        metavar="N",
        help="training images to calibrate on (default 512)",
    )
    p.add_argument(
        "--calib-method",
        choices=sorted(set(CALIB_METHODS) | set(TFLITE_CALIB)),
        default=None,
        help=f"onnx: {', '.join(CALIB_METHODS)} (default {DEFAULT_CALIB_METHOD}); "
        f"tflite: {', '.join(TFLITE_CALIB)} (default {TFLITE_DEFAULT})",
    )
    p.add_argument(
        "--activation-type",
        choices=ACTIVATION_TYPES,
        default=None,  # None: not given; uint8 for onnx
        help="uint8: fastest on x86 onnxruntime (default); int8: the LiteRT/TFLite-Micro scheme",
    )
    p.add_argument(
        "--weight-bits",
        type=int,
        choices=(7, 8),
        default=None,  # None: not given; 7 for onnx
        help="int8 weight range: 7 bits (default) is exact in onnxruntime on every x86 CPU; "
        "8 bits saturates on x86 CPUs without VNNI (use it for ARM/VNNI targets)",
    )
    p.add_argument(
        "--io",
        choices=IO_CHOICES,
        default=None,  # None: not given; int8 for tflite --int8
        help="tflite --int8: the file's input/output type: int8 (default; what TFLite Micro "
        "takes), uint8 (zero points + 128, a QUANTIZE at each end) or float (float32 in and "
        "out: QUANTIZE/DEQUANTIZE), around the same int8 graph",
    )
    p.add_argument(
        "--fp16",
        action="store_true",
        help="tflite without --int8: weights stored as float16 (half the bytes; DEQUANTIZE "
        "ops to float32), checked in LiteRT against PyTorch",
    )


def _int8_path(out: Path) -> Path:
    return (
        out.with_name(out.name[: -len(".onnx")] + ".int8.onnx")
        if out.name.endswith(".onnx")
        else out.with_name(out.name + ".int8.onnx")
    )


def run_export(args: argparse.Namespace) -> int:
    """``mobilenets export``: the ONNX file (and its int8 sibling), then FILE.json."""
    from ..checkpoint import load_checkpoint
    from ..data import test_batches

    out = Path(args.out)
    if args.format == "tflite":
        return run_export_tflite(args)
    _check_onnx_args(args, out)
    ck = load_checkpoint(args.checkpoint)
    check_finite_weights(ck.model, str(ck.path))
    prep = ck.preprocess
    data = args.calib_data if args.calib_data and args.calib_data != "random" else None

    def tests(n: int | None = args.eval_samples):
        return test_batches(data, prep, n, args.data_dir)

    verify = next(tests(64))[0] if data else None  # real images when there are some
    res = export_onnx(
        ck.model,
        out,
        class_names=ck.class_names,
        preprocess=prep,
        opset=DEFAULT_OPSET if args.opset is None else args.opset,
        verify_inputs=verify,
    )
    report: dict[str, Any] = {"checkpoint": str(ck.path), "architecture": ck.config.name, **res}
    print(
        f"wrote {out} ({res['bytes']:,} bytes, max |onnxruntime - pytorch| = {res['max_abs_diff']:.2e})"
    )
    backends = {"fp32": load_backend(out)}
    if args.int8:
        _export_int8_onnx(args, out, prep, verify, backends, report)
    if data:
        _report_accuracy(backends, tests(), report)
    report_path = out.with_name(out.name + ".json")
    write_atomic(report_path, json.dumps(_finite(report), indent=2) + "\n")
    print(f"wrote {report_path}")
    return 0


def _check_onnx_args(args: argparse.Namespace, out: Path) -> None:
    """UsageError for flags that ONNX export cannot honour, or an --out it cannot write."""
    if args.calib_method == "mse":
        raise UsageError(
            "--calib-method mse is for --format tflite; onnx takes minmax, percentile or entropy"
        )
    if args.io is not None or args.fp16:
        raise UsageError("--io and --fp16 apply to --format tflite only, not onnx")
    if args.int8 and not args.calib_data:
        raise UsageError(
            "--int8 needs --calib-data SPEC (fashion-mnist, cifar10:PATH, imagefolder:PATH or random)"
        )
    if not out.parent.is_dir():
        raise UsageError(f"--out: folder {out.parent} does not exist")
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; name the .onnx file to write")
    if out.suffix == ".tflite":
        raise UsageError(f"--out {out}: --format onnx writes ONNX; name an .onnx file")


def _export_int8_onnx(
    args: argparse.Namespace,
    out: Path,
    prep: Preprocess,
    verify: torch.Tensor | None,
    backends: dict[str, Any],
    report: dict[str, Any],
) -> None:
    """Quantize the fp32 file ``out`` to its int8 sibling; add its backend to ``backends`` and
    its size, scheme and largest logit difference from fp32 to ``report``."""
    from ..data import calibration_inputs
    from ..onnx_quant import DEFAULT_CALIB_METHOD, quantize_onnx

    q_out = Path(args.int8_out) if args.int8_out else _int8_path(out)
    calib = calibration_inputs(args.calib_data, prep, args.calib_samples, args.data_dir)
    qinfo = quantize_onnx(
        out,
        q_out,
        calib,
        activation_type=args.activation_type or "uint8",
        calib_method=args.calib_method or DEFAULT_CALIB_METHOD,
        reduce_range=args.weight_bits != 8,
    )
    backends["int8"] = load_backend(q_out)
    report.update(
        int8_path=str(q_out),
        int8_bytes=qinfo["bytes"],
        int8_size_ratio=qinfo["bytes"] / report["bytes"],
    )
    report["int8"] = qinfo
    if verify is None:
        verify = torch.as_tensor(calib[:64])
    fp, q = (b.logits(verify) for b in backends.values())
    report["int8_max_abs_diff"] = float(np.abs(fp - q).max())
    print(f"wrote {q_out} ({qinfo['bytes']:,} bytes, {qinfo['scheme']})")


def _report_accuracy(backends: dict[str, Any], batches: Any, report: dict[str, Any]) -> None:
    """Top-1 of each backend (and int8/fp32 agreement) on the test ``batches``, into ``report``."""
    acc = accuracy(backends, batches)
    report["test_images"] = acc["images"]
    report.update({k: v for k, v in acc.items() if k.endswith("_top1")})
    if "int8_agreement" in acc:
        report["int8_fp32_agreement"] = acc["int8_agreement"]
    line = f"test top-1 on {acc['images']} images: fp32 {acc['fp32_top1']:.4f}"
    if "int8_top1" in acc:
        line += f", int8 {acc['int8_top1']:.4f}"
    print(line)


def run_export_tflite(args: Any) -> int:
    """``mobilenets export CKPT --format tflite [--int8 --calib-data SPEC] --out FILE.tflite``.

    The file is written under a temporary name, verified, and moved into place together with
    its FILE.json: an interrupted or failed export leaves neither."""
    from ..checkpoint import load_checkpoint
    from ..data import calibration_inputs

    out = Path(args.out)
    _check_tflite_args(args, out)
    ck = load_checkpoint(args.checkpoint)
    _check_model(ck.model)
    check_finite_weights(ck.model, str(ck.path))
    calib = None
    if args.int8:
        calib = calibration_inputs(
            args.calib_data, ck.preprocess, args.calib_samples, args.data_dir
        )
    verify, eval_data = _tflite_test_data(args, ck, calib)
    tmp = temp_sibling(out, "export")
    report_path = out.with_name(out.name + ".json")
    json_tmp = temp_sibling(report_path, "export")
    try:
        report = export_tflite(
            ck.model,
            tmp,
            int8=args.int8,
            calib_data=calib,
            preprocess=ck.preprocess,
            class_names=ck.class_names,
            calib_method=args.calib_method,
            verify_inputs=verify,
            eval_data=eval_data,
            metadata={"data": ck.meta.get("data")},
            io=args.io or "int8",
            fp16=args.fp16,
        )
        report = {"checkpoint": str(ck.path), "architecture": ck.config.name, **report}
        report["path"] = str(out)
        if calib is not None:
            report["calib_samples"] = len(calib)
        json_tmp.write_text(json.dumps(_finite(report), indent=2) + "\n")
        replace(tmp, out)
        replace(json_tmp, report_path)
    finally:
        tmp.unlink(missing_ok=True)
        json_tmp.unlink(missing_ok=True)
    _print_summary(report)
    print(f"wrote {report_path}")
    return 0


def _tflite_test_data(args: Any, ck: Any, calib: Any) -> tuple[Any, Any]:
    """(verify inputs, eval batches) of a .tflite export: test images of --calib-data, or the
    first calibration inputs for ``random``."""
    from ..data import test_batches
    from ..profiling import profile

    spec, prep = args.calib_data, ck.preprocess
    if spec and spec != "random":
        n_eval = args.eval_samples
        if n_eval is None:
            n_eval = None if profile(ck.model).macs <= 100e6 else 500
        verify = next(test_batches(spec, prep, args.verify_samples, args.data_dir))[0]
        return verify, test_batches(spec, prep, n_eval, args.data_dir)
    if spec == "random" and calib is not None:
        return calib[: args.verify_samples], None
    return None, None


ONNX_ONLY = (
    ("--opset", "opset"),
    ("--activation-type", "activation_type"),
    ("--weight-bits", "weight_bits"),
    ("--int8-out", "int8_out"),
)


def _check_tflite_args(args: Any, out: Path) -> None:
    """UsageError for flags that .tflite export cannot honour, a count out of range, or an --out
    in a missing folder."""
    if args.int8 and not args.calib_data:
        raise UsageError(
            "--int8 needs --calib-data SPEC (fashion-mnist, cifar10:PATH, imagefolder:PATH or random)"
        )
    if args.calib_method == "entropy":
        raise UsageError(
            "--calib-method entropy is for --format onnx; tflite takes minmax, percentile or mse"
        )
    given = [flag for flag, attr in ONNX_ONLY if getattr(args, attr) is not None]
    if args.fp16 and args.int8:
        raise UsageError("--fp16 stores float weights: it is for fp32 files, not --int8")
    if args.io not in (None, "int8") and not args.int8:
        raise UsageError(f"--io {args.io} wraps an int8 graph: add --int8 (an fp32 file is float)")
    if given:
        raise UsageError(f"{', '.join(given)} apply to --format onnx only, not tflite")
    for flag, v, lo in (
        ("--calib-samples", args.calib_samples, 1),
        ("--verify-samples", args.verify_samples, 1),
        ("--eval-samples", args.eval_samples, 0),
    ):
        if v is not None and v < lo:
            raise UsageError(f"{flag} must be >= {lo}, got {v}")
    if not out.parent.is_dir():
        raise UsageError(f"--out: folder {out.parent} does not exist")
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; name the .tflite file to write")
    if out.suffix == ".onnx":
        raise UsageError(f"--out {out}: --format tflite writes a .tflite file, not ONNX")


def _print_summary(r: dict[str, Any]) -> None:
    print(f"wrote {r['path']} ({r['bytes']:,} bytes, {r['format']}, ops {r['ops']})")
    if r.get("max_abs_diff_lsb") is not None:
        print(
            f"reference vs TFLite Micro on {r['verify_samples']} inputs: "
            f"max |diff| {r['max_abs_diff_lsb']} LSB (LiteRT: {r.get('litert_max_abs_diff_lsb')})"
        )
    if r.get("tflm_arena_bytes"):
        print(
            f"TFLite Micro arena {r['tflm_arena_bytes']:,} B = activations "
            f"{r['tflm_activation_bytes']:,} + persistent {r['tflm_persistent_bytes']:,}"
        )
    if r.get("padding_note"):
        print(f"note: {r['padding_note']}")
    for key in ("tflm_note", "litert_note"):
        if r.get(key):
            print(f"note: {r[key]}")
    if r.get("fp32_top1") is not None:
        line = f"test top-1 on {r['eval_samples']} images: fp32 {r['fp32_top1']:.4f}"
        if r.get("int8_top1") is not None:
            line += f", int8 {r['int8_top1']:.4f}, agreement {r['agreement']:.4f}"
        print(line)
