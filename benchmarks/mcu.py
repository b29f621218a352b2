"""Microcontroller benchmark of the generated C library: one JSON line per model.

For each model (int8, quantized by ``quantize_int8``; 1000-class models have random weights
and ``padding="same"``, the deployment form with no PAD op), it reports:

- ``arena_bytes``: ``MN_ARENA_BYTES`` (all RAM ``mn_infer`` touches but its stack), against the
  issue's goal; ``arena_without_input_bytes``; the peak op and what is live there;
  ``tflm_arena_bytes``, TFLite Micro's smallest working arena for the same ``.tflite`` (the
  interpreter bisected, when ``tflite-micro`` is installed), and ``arena_over_tflm`` (issue 17's
  goal for the V3 rows: <= 0.40);
- ``host_c_equals_reference`` (the generated C against the NumPy reference), ``tflm_equals_c``
  and ``m7_equals_host``: one random input, bit for bit;
- ``flash_bytes`` (text + data) and ``sram_bytes`` (data + bss) of the library objects only
  (``arm-none-eabi-size model.o mn_engine.o``, Cortex-M7 build), beside the int8 ``.tflite`` size
  when the ``.tflite`` writer is available;
- ``stack_su_bytes``: ``-fstack-usage`` along the deepest call chain of ``mn_infer``, and
  ``stack_painted_bytes``: measured under QEMU by painting 16 KB of stack (goal <= 4,096);
- ``instructions`` per inference on Cortex-M7 (QEMU ``mps2-an500 -icount shift=0``: SysTick
  ticks once per 40 instructions, its wraps counted) and ``instructions_per_mac`` (MACs from
  ``mobilenets.profile``); instructions are not cycles;
- ``host_us``: wall time per inference of the generated C on this host (gcc -O2), beside
  ``tflm_host_us``, the ``tflite-micro`` interpreter on the same model, when available.

    python benchmarks/mcu.py [--only NAME] [--demo runs/demo/last.ckpt] [--host-only] [--smoke]
    python benchmarks/mcu.py --foreign [DIR]   # converter-made files (default runs/foreign)

``--smoke`` measures only the demo architecture with random weights (seconds), with the
Cortex-M7 figures when arm-none-eabi-gcc and qemu-system-arm are installed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mobilenets import create_model, generate_c, profile
from mobilenets.env import hardware_record, tool_version
from mobilenets.micro.export import quantize_input
from mobilenets.micro.quantizer import quantize_int8
from mobilenets.micro.reference import run_int8

MODELS = [  # (key, architecture, width, resolution, arena goal in bytes or None)
    ("v2_a0.35_144", "mobilenet_v2", 0.35, 144, 128_000),
    ("v2_a0.3_64", "mobilenet_v2", 0.3, 64, 40_000),
    ("v1_a0.25_128", "mobilenet_v1", 0.25, 128, 72_000),
    ("v2_a1.0_224", "mobilenet_v2", 1.0, 224, None),
    ("v3s_a1.0_224", "mobilenet_v3_small", 1.0, 224, None),
    ("v3s_min_a1.0_128", "mobilenet_v3_small", 1.0, 128, 64_000),
    ("v3l_a1.0_224", "mobilenet_v3_large", 1.0, 224, None),
]
# ModelConfig options of a row beyond its architecture, width and resolution
OPTIONS = {"v3s_min_a1.0_128": {"minimal": True}}
STACK_GOAL = 4096
IPM_GOAL = {"v2_a0.35_144": 3.0}
V3_KEYS = ("v3s_a1.0_224", "v3s_min_a1.0_128", "v3l_a1.0_224")
TFLM_GOAL = 0.40  # issue 17: our arena <= 40% of TFLite Micro's, for each V3 row


def tools() -> dict[str, str | None]:
    """The host CPU and the compilers and emulator used, through ``mobilenets.env``."""
    return {
        "host_cpu": hardware_record()["cpu"],
        "gcc": tool_version(["gcc", "--version"]),
        "arm_gcc": tool_version(["arm-none-eabi-gcc", "--version"]),
        "qemu": tool_version(["qemu-system-arm", "--version"]),
    }


def make(out: Path, *targets: str, timeout: int = 1800) -> str:
    res = subprocess.run(
        ["make", "-s", "-C", str(out), *targets], capture_output=True, text=True, timeout=timeout
    )
    if res.returncode != 0:
        raise RuntimeError(f"make {' '.join(targets)} failed: {res.stderr[-2000:]}")
    return res.stdout


def stack_su(out: Path) -> int:
    """-fstack-usage along mn_infer -> mn_run -> the deepest kernel -> mn_requantize."""
    su = {}
    for f in (out / "build" / "cortex-m7").glob("*.su"):
        for line in f.read_text().splitlines():
            name, size = line.split("\t")[0].split(":")[-1], int(line.split("\t")[1])
            su[name] = max(su.get(name, 0), size)
    kernels = [v for k, v in su.items() if k.startswith(("mn_pw", "mn_conv", "mn_dw", "mn_add"))]
    kernels += [v for k, v in su.items() if k.startswith(("mn_point", "mn_pool"))]
    chain = ("mn_infer", "mn_run", "mn_compute")
    return sum(su.get(k, 0) for k in chain) + max(kernels, default=0) + su.get("mn_requantize", 0)


def library_size(out: Path) -> tuple[int, int]:
    text = make(out, "size-cortex-m7")
    flash = sram = 0
    for line in text.splitlines()[1:]:
        t, d, b = map(int, line.split()[:3])
        flash, sram = flash + t + d, sram + d + b
    return flash, sram


def tflite_figures(qm, out: Path, x: np.ndarray, host: np.ndarray) -> dict:
    """.tflite size, and the tflite-micro interpreter's output and host time when installed."""
    from mobilenets.micro.runtimes import _tflm, have_tflm, silenced_fd2, tflm_arena
    from mobilenets.micro.tflite import write_tflite

    path = write_tflite(qm, out / "model.tflite")
    row: dict = {"tflite_bytes": path.stat().st_size}
    if not have_tflm():
        return {**row, "tflm_host_us": None, "tflm_reason": "tflite-micro not installed"}
    with silenced_fd2():
        interp = _tflm(path, 64 << 20)
    interp.set_input(np.ascontiguousarray(x[None]), 0)
    interp.invoke()
    row["tflm_equals_c"] = bool(np.array_equal(np.array(interp.get_output(0)).reshape(-1), host))
    n, t0 = 5, time.perf_counter()
    for _ in range(n):
        interp.invoke()
    row["tflm_host_us"] = round((time.perf_counter() - t0) / n * 1e6, 1)
    facts, code = in_child(tflm_arena, path, (1, *x.shape))  # TFLite Micro may abort
    row.update(facts or {"tflm_arena_bytes": None, "tflm_reason": f"died (exit {code})"})
    return row


def cortex_m7_figures(out: Path, host_out: bytes, macs: int, key: str) -> dict:
    """Flash/SRAM, stack and instruction figures of the Cortex-M7 build, run under QEMU."""
    make(out, "cortex-m7")
    row: dict = {}
    row["flash_bytes"], row["sram_bytes"] = library_size(out)
    row["stack_su_bytes"] = stack_su(out)
    res = subprocess.run(
        ["make", "-s", "-C", str(out), "run-cortex-m7"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    figures = dict(re.findall(r"^(ticks|stack) (\d+)$", res.stdout, re.M))
    qemu_out = [ln for ln in res.stdout.splitlines() if ln.startswith("out 0:")]
    row["m7_equals_host"] = (
        bool(qemu_out)
        and [int(v) for v in qemu_out[0].split(":")[1].split()]
        == np.frombuffer(host_out, np.int8).tolist()
    )
    row["instructions"] = 40 * int(figures.get("ticks", 0))
    row["instructions_per_mac"] = round(row["instructions"] / macs, 3)
    row["ipm_goal"] = IPM_GOAL.get(key)
    row["stack_painted_bytes"] = int(figures.get("stack", 0))
    row["stack_goal_met"] = row["stack_painted_bytes"] <= STACK_GOAL
    return row


def measure(
    key, model, qm, x: np.ndarray, goal: int | None, macs: int, host_only: bool = False
) -> dict:
    """One model's JSON row; ``host_only`` skips the Cortex-M7 build, QEMU and tflite-micro."""
    work = Path(tempfile.mkdtemp(prefix=f"mcu-{key}-"))
    out = work / "lib"
    try:
        rep = generate_c(qm, out, target="cortex-m7", test_inputs=x[:1])
        row = {
            "model": key,
            "arena_bytes": rep["arena_bytes"],
            "arena_goal_bytes": goal,
            "arena_goal_met": None if goal is None else rep["arena_bytes"] <= goal,
            "arena_without_input_bytes": rep["arena_without_input_bytes"],
            "input_bytes": rep["input_bytes"],
            "layer_by_layer_bytes": rep["layer_by_layer_bytes"],
            "peak_op": rep["peak_op"],
            "peak_buffers": rep["peak_buffers"][:4],
            "macs": macs,
        }
        make(out, "host")
        bench = subprocess.run(
            [str(out / "mn_host"), "--bench", "20"], capture_output=True, text=True
        ).stdout
        row["host_us"] = float(bench.split()[0])
        host_out = subprocess.run(
            [str(out / "mn_host")], input=x[:1].tobytes(), capture_output=True
        ).stdout
        ref = run_int8(qm, x[:1]).reshape(-1)
        row["host_c_equals_reference"] = bool(np.array_equal(np.frombuffer(host_out, np.int8), ref))
        if host_only:
            return {**row, "cortex_m7": "skipped (--host-only)"}
        row.update(cortex_m7_figures(out, host_out, macs, key))
        row.update(tflite_figures(qm, out, x[0], np.frombuffer(host_out, np.int8)))
        if row.get("tflite_bytes"):
            row["flash_le_tflite"] = row["flash_bytes"] <= row["tflite_bytes"]
        if row.get("tflm_arena_bytes"):
            row["arena_over_tflm"] = round(rep["arena_bytes"] / row["tflm_arena_bytes"], 3)
            row["tflm_goal_met"] = row["arena_over_tflm"] <= TFLM_GOAL if key in V3_KEYS else None
        row["sram_within_64_of_arena"] = abs(row["sram_bytes"] - rep["arena_bytes"]) <= 64
        return row
    finally:
        shutil.rmtree(work, ignore_errors=True)


def random_model(arch: str, width: float, res: int, **kw):
    """A seeded random 1000-class model whose BN statistics and classifier are randomized, so
    that its int8 logits differ between classes (a freshly initialised network's collapse to
    one value, which would make every bit-exactness check empty)."""
    from mobilenets.testing import randomize_bn

    torch.manual_seed(0)
    kw = {"num_classes": 1000, "padding": "same", **kw}
    model = randomize_bn(create_model(arch, width, res, **kw), linear_std=0.05).eval()
    c = model.config.in_chans
    qm = quantize_int8(model, torch.randn(8, c, res, res))
    x = np.random.default_rng(0).integers(-128, 128, (1, res, res, c)).astype(np.int8)
    return model, qm, x


def demo_model(path: str):
    from mobilenets.checkpoint import load_checkpoint
    from mobilenets.data import calibration_inputs, test_batches

    ck = load_checkpoint(path)
    calib = calibration_inputs("fashion-mnist", ck.preprocess, 512)
    qm = quantize_int8(ck.model, calib)
    x, _ = next(test_batches("fashion-mnist", ck.preprocess, 5))
    return ck.model, qm, quantize_input(x, qm)


def demo_arch_row(args: argparse.Namespace, env: dict) -> dict:
    """The demo's architecture with random weights, when its checkpoint is not there (the arena,
    sizes and instruction counts do not depend on the weights' values)."""
    model, qm, x = random_model(
        "mobilenet_v1",
        0.25,
        28,
        num_classes=10,
        in_chans=1,
        small_input=True,
        padding="symmetric",
    )
    key = "demo_arch_v1_a0.25_28_random"
    row = measure(key, model, qm, x, None, profile(model).macs, args.host_only)
    why = "--smoke" if args.smoke else f"{args.demo} missing"
    return {**row, "note": f"{why}: random weights", **env}


def peer_models(args: argparse.Namespace):
    """(key, qm, x) of the models ``--peer`` compares (``--smoke``: the demo architecture)."""
    if not args.smoke:
        for key, arch, width, res, _ in MODELS[:3]:
            if not args.only or args.only == key:
                yield key, *random_model(arch, width, res)[1:]
    if args.smoke or args.only in (None, "demo"):
        if not args.smoke and args.demo and Path(args.demo).exists():
            yield "demo_fmnist_v1_a0.25_28", *demo_model(args.demo)[1:]
            return
        kw = {"num_classes": 10, "in_chans": 1, "small_input": True, "padding": "symmetric"}
        yield "demo_arch_v1_a0.25_28_random", *random_model("mobilenet_v1", 0.25, 28, **kw)[1:]


def peer_main(args: argparse.Namespace) -> int:
    """``--peer cmsis-nn``: one JSON line per model, core and compiler (benchmarks/cmsis_peer.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import cmsis_peer

    cores = ("cortex-m7",) if args.smoke else tuple(cmsis_peer.CORES)
    compilers = ("gcc",) if args.smoke else cmsis_peer.COMPILERS
    for key, qm, x in peer_models(args):
        for row in cmsis_peer.run_model(key, qm, x, cores, compilers):
            print(json.dumps(row), flush=True)
    return 0


# ---------------------------------------------------------------- --foreign: converters' files

FOREIGN_DIR = "runs/foreign"
FOREIGN_GOAL = 0.40  # our arena (input included) over TFLite Micro's, on every file
FOREIGN_INPUTS = 20  # compared with TFLite Micro (reference and host C)
M7_INPUTS = 3  # run on the Cortex-M7 under QEMU, compared with the host


def m7_rows(out: Path) -> list[list[int]]:
    """The outputs the Cortex-M7 build prints under QEMU (``out N: ...`` lines)."""
    text = make(out, "run-cortex-m7")
    return [
        [int(v) for v in ln.split(":")[1].split()] for ln in text.splitlines() if ln[:4] == "out "
    ]


def graph_macs(qm) -> int:
    """Multiply-accumulates of an int8 graph's convolutions and fully connected layers."""
    macs = 0
    for op in qm.ops:
        out = int(np.prod(qm.tensors[op.output].shape))
        if op.kind == "conv2d":
            macs += out * int(np.prod(op.weights.shape[1:]))
        elif op.kind == "depthwise_conv2d":
            macs += out * int(np.prod(op.weights.shape[1:3]))
        elif op.kind == "fully_connected":
            macs += int(op.weights.size)
    return macs


def _child(path: Path, fn, args) -> None:
    import pickle

    path.write_bytes(pickle.dumps(fn(*args)))


def in_child(fn, *args):
    """(``fn(*args)``, 0) run in a forked child, or (None, its exit code) when it died:
    TFLite Micro aborts the process (SIGABRT) on some files."""
    import multiprocessing
    import pickle

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "result.pkl"
        proc = multiprocessing.get_context("fork").Process(target=_child, args=(out, fn, args))
        proc.start()
        proc.join()
        if proc.exitcode != 0 or not out.exists():
            return None, proc.exitcode
        return pickle.loads(out.read_bytes()), 0


def tflm_facts(path: Path, x: np.ndarray) -> dict:
    """TFLite Micro's outputs on ``x`` and its smallest arena (bisection)."""
    from mobilenets.micro.runtimes import tflm_arena, tflm_outputs

    return {"outputs": tflm_outputs(path, x), **tflm_arena(path, (1, *x.shape[1:]))}


def foreign_inputs(qm, n: int) -> np.ndarray:
    """int8 inputs of the graph's core: Fashion-MNIST test images (resized, [-1, 1]) for one
    channel, random int8 otherwise."""
    _, h, w, c = qm.int8_core().input_tensor.shape
    if c != 1:
        return np.random.default_rng(0).integers(-128, 128, (n, h, w, c)).astype(np.int8)
    from PIL import Image

    from mobilenets.data import load_dataset

    ims = load_dataset("fashion-mnist").split("test").images[:n].numpy()[:, 0]
    x = np.stack([np.asarray(Image.fromarray(i).resize((w, h), Image.BILINEAR)) for i in ims])
    t = qm.int8_core().input_tensor
    q = np.round((x[..., None] / 127.5 - 1.0) / np.float32(t.scale)) + t.zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def _compact(qm):
    """``qm`` with only the tensors its ops use (a file's weight tensors dropped), renumbered."""
    import dataclasses

    from mobilenets.micro.graph import QuantizedModel

    used = sorted({qm.input, qm.output, *(t for op in qm.ops for t in (*op.inputs, op.output))})
    new = {t: i for i, t in enumerate(used)}
    ops = [
        dataclasses.replace(op, inputs=tuple(new[t] for t in op.inputs), output=new[op.output])
        for op in qm.ops
    ]
    return QuantizedModel([qm.tensors[t] for t in used], ops, new[qm.input], new[qm.output])


def foreign_tflm(qm, path: Path, work: Path, x: np.ndarray, outs: dict) -> dict:
    """TFLite Micro's arena and bit-exactness; where it aborts on the file, both measured on
    the file's graph without its final SOFTMAX (written by our writer), and said so."""
    from mobilenets.micro.graph import QuantizedModel
    from mobilenets.micro.reference import run_int8
    from mobilenets.micro.tflite import write_tflite

    facts, code = in_child(tflm_facts, path, x)
    row: dict = {}
    if facts is None:
        core = qm.int8_core()
        if core.ops[-1].kind != "softmax":
            return {"tflm": f"TFLite Micro died (exit {code})"}
        logits = QuantizedModel(core.tensors, core.ops[:-1], core.input, core.ops[-1].inputs[0])
        logits = _compact(logits)
        scale = qm.tensors[core.ops[-1].inputs[0]].scale
        row["tflm"] = (
            f"TFLite Micro aborts on the file (exit {code}; SOFTMAX input scale {scale:.3g}): "
            "arena and bit-exactness on the file without its final SOFTMAX"
        )
        facts, code = in_child(tflm_facts, write_tflite(logits, work / "logits.tflite"), x)
        outs = {"reference": run_int8(logits, x).reshape(len(x), -1)}
        if facts is None:
            return {**row, "tflm": f"TFLite Micro died (exit {code}) on the logits too"}
    theirs = facts.pop("outputs").reshape(len(x), -1)
    for k, v in outs.items():
        row[f"bit_exact_{k}"] = bool(np.array_equal(v, theirs))
    return {**row, **facts}


def foreign_row(path: Path, host_only: bool) -> dict:
    """One converter-made file: ops, sizes, arenas (ours vs TFLite Micro's), flash, M7
    instructions per MAC, bit-exactness (reference, host C, M7) against TFLite Micro."""
    from mobilenets.errors import MobilenetsError
    from mobilenets.micro.reference import run_int8
    from mobilenets.micro.tflite import read_graph

    row: dict = {"file": path.name, "tflite_bytes": path.stat().st_size}
    row.update(inputs=FOREIGN_INPUTS, m7_inputs=M7_INPUTS)
    try:
        qm = read_graph(path)
    except MobilenetsError as e:
        return {**row, "refused": str(e)}
    x = foreign_inputs(qm, FOREIGN_INPUTS)
    ref = run_int8(qm, x).reshape(len(x), -1)
    row["ops"], row["macs"] = qm.op_counts(), graph_macs(qm.int8_core())
    work = Path(tempfile.mkdtemp(prefix="mcu-foreign-"))
    try:
        rep = generate_c(qm, work / "lib", target="cortex-m7", test_inputs=x[:M7_INPUTS])
        for k in ("arena_bytes", "arena_without_input_bytes", "input_bytes", "peak_op"):
            row[k] = rep[k]
        make(work / "lib", "host")
        exe = str(work / "lib" / "mn_host")
        res = subprocess.run([exe], input=x.tobytes(), capture_output=True)
        host = np.frombuffer(res.stdout, np.int8).reshape(len(x), -1)
        row["host_c_equals_reference"] = bool(np.array_equal(host, ref))
        if not host_only:
            m7 = cortex_m7_figures(work / "lib", host[0].tobytes(), row["macs"], path.stem)
            keep = ("flash_bytes", "sram_bytes", "instructions", "instructions_per_mac")
            row.update({k: m7[k] for k in keep})
            row["m7_equals_host"] = m7_rows(work / "lib") == host[:M7_INPUTS].tolist()
        row.update(foreign_tflm(qm, path, work, x, {"reference": ref, "host_c": host}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if row.get("tflm_arena_bytes"):
        row["arena_over_tflm"] = round(row["arena_bytes"] / row["tflm_arena_bytes"], 3)
        row["arena_goal_met"] = row["arena_over_tflm"] <= FOREIGN_GOAL
    return row


def foreign_main(args: argparse.Namespace, env: dict) -> int:
    """``--foreign [DIR]``: one JSON line per ``.tflite`` in DIR (scripts/make_tflite_fixtures.py
    --full writes them)."""
    files = sorted(Path(args.foreign).glob("*.tflite"))
    if not files:
        print(f"--foreign {args.foreign}: no .tflite files", file=sys.stderr)
        return 1
    for path in files:
        print(json.dumps({**foreign_row(path, args.host_only), **env}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="one model key")
    ap.add_argument(
        "--demo", default="runs/demo/last.ckpt", help="demo checkpoint (scripts/demo.sh's)"
    )
    ap.add_argument(
        "--host-only", action="store_true", help="no Cortex-M7 build, QEMU run or tflite-micro"
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="seconds: the demo architecture with random weights, --host-only unless "
        "arm-none-eabi-gcc and qemu-system-arm are installed",
    )
    ap.add_argument(
        "--peer",
        choices=["cmsis-nn"],
        help="ours against CMSIS-NN on M4/M7/M55, gcc and clang (--smoke: M7, gcc)",
    )
    ap.add_argument(
        "--foreign",
        nargs="?",
        const=FOREIGN_DIR,
        metavar="DIR",
        help=f"converter-made .tflite files in DIR (default {FOREIGN_DIR}): arenas vs TFLite Micro",
    )
    args = ap.parse_args(argv)
    env = tools()
    if args.foreign:
        return foreign_main(args, env)
    if args.peer:
        return peer_main(args)
    if args.smoke:
        args.only, args.demo = "demo", ""
        args.host_only = args.host_only or not (env["arm_gcc"] and env["qemu"])
    for key, arch, width, res, goal in MODELS:
        if args.only and args.only != key:
            continue
        model, qm, x = random_model(arch, width, res, **OPTIONS.get(key, {}))
        row = measure(key, model, qm, x, goal, profile(model).macs, args.host_only)
        print(json.dumps({**row, **env}), flush=True)
    if (not args.only or args.only == "demo") and args.demo and Path(args.demo).exists():
        model, qm, x = demo_model(args.demo)
        row = measure(
            "demo_fmnist_v1_a0.25_28", model, qm, x, None, profile(model).macs, args.host_only
        )
        print(json.dumps({**row, **env}), flush=True)
    elif not args.only or args.only == "demo":
        print(json.dumps(demo_arch_row(args, env)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
