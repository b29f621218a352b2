"""Every script in ``benchmarks/`` runs its smallest configuration and prints its JSON.

The benchmarks are run by hand for the README's figures; without these tests an API change
in the library breaks them unseen until the next measurement. Each runs as a subprocess, as a
user runs it, at its ``--smoke`` settings (seconds; the figures then mean nothing), and the
JSON it prints must parse and hold the fields the README's tables are made from.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def run_bench(script: str, *args: str, timeout: float = 240) -> list[dict]:
    """Run ``benchmarks/SCRIPT ARGS`` and return the JSON objects of its stdout lines."""
    # One thread: on a shared 2-core machine, spinning OpenMP threads cost 5x the CPU time.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MOBILENETS_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"{script} {' '.join(args)} failed:\n{r.stderr[-3000:]}"
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert rows, f"{script} printed no JSON line:\n{r.stdout[-2000:]}"
    return rows


def needs_fashion_mnist() -> None:
    """Skip unless Fashion-MNIST is on this machine (the training benchmarks read it)."""
    have = os.environ.get("MOBILENETS_DATA") or SYSTEM_FASHION_MNIST.is_dir()
    if not have:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def test_bench_inference_smoke_prints_latency_ratios_and_sizes():
    (row,) = run_bench("bench_inference.py", "--smoke", "--threads", "1")
    assert row["benchmark"] == "bench_inference"
    for part in ("a_fp32_ours_vs_torchvision", "b_int8_vs_fp32", "c_int8_size_ratio"):
        assert row[part]["ratio"] > 0, part
    assert set(row["latency_ms"]) == {"ours_fp32", "torchvision_fp32", "ours_int8"}
    hw = row["hardware"]
    assert {"cpu", "isa", "usable_cores", "threads", "loadavg_1m", "loadavg_1m_end"} <= set(hw)
    assert hw["threads"] == 1 and hw["torch"] and hw["onnxruntime"] and hw["onnx"] and hw["python"]
    assert row["timing"]["smoke"] is True and row["timing"]["resolution"] == 64


def test_bench_tflite_smoke_is_bit_exact_with_tflite_micro_and_litert():
    rows = run_bench("bench_tflite.py", "--smoke")
    env, *random = rows
    assert env["section"] == "env" and env["tflite-micro"] and env["ai-edge-litert"]
    assert env["machine"] and env["python"] and env["torch"] and env["numpy"]
    assert [r["padding"] for r in random] == ["same", "symmetric"]
    for r in random:
        assert r["section"] == "random" and r["resolution"] == 32
        assert r["max_abs_diff_lsb_tflm"] == 0 and r["max_abs_diff_lsb_litert_ref"] == 0
        assert r["distinct_logits"] > 1


@pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("make")), reason="needs gcc, make")
def test_mcu_smoke_builds_the_generated_c_and_reports_its_memory():
    (row,) = run_bench("mcu.py", "--smoke")
    assert row["model"] == "demo_arch_v1_a0.25_28_random"
    assert row["note"] == "--smoke: random weights"
    assert 0 < row["arena_without_input_bytes"] <= row["arena_bytes"]
    assert row["input_bytes"] == 28 * 28 and row["macs"] > 0 and row["host_us"] > 0
    assert row["gcc"] and "host_cpu" in row
    if row["arm_gcc"] and row["qemu"]:  # the Cortex-M7 build ran under QEMU
        assert row["m7_equals_host"] is True
        assert row["instructions"] > 0 and row["flash_bytes"] > 0 and row["stack_su_bytes"] > 0
    else:
        assert row["cortex_m7"] == "skipped (--host-only)"


PEER_CMSIS_NN = ROOT.parent / "shared" / "peers" / "cmsis-nn"
ARM_TOOLS = ("arm-none-eabi-gcc", "qemu-system-arm", "gcc")


def test_mcu_peer_cmsis_nn_smoke_compares_instructions_and_outputs():
    if not PEER_CMSIS_NN.is_dir():
        pytest.skip(f"CMSIS-NN peer folder {PEER_CMSIS_NN} missing")
    missing = [t for t in ARM_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    (row,) = run_bench("mcu.py", "--smoke", "--peer", "cmsis-nn", timeout=600)
    assert (row["model"], row["core"], row["compiler"]) == (
        "demo_arch_v1_a0.25_28_random",
        "cortex-m7",
        "gcc",
    )
    assert row["ours_instructions"] > 0 and row["peer_instructions"] > 0
    assert row["ratio"] == round(row["ours_instructions"] / row["peer_instructions"], 4)
    assert row["ours_ram_bytes"] > 0 and row["peer_ram_bytes"] > 0
    assert row["bit_exact"] is True, row["difference"]


def test_train_fashion_mnist_smoke_reports_accuracy_throughput_and_the_peer():
    needs_fashion_mnist()
    (row,) = run_bench("train_fashion_mnist.py", "--smoke", "--device", "cpu", "--peer")
    assert row["benchmark"] == "train_fashion_mnist" and row["epochs"] == 1
    assert 0 <= row["test_top1"] <= 1 and row["test_images"] == 128
    assert row["images_per_s"] > 0 and row["wall_s"] > 0
    assert row["peer"]["images_per_s"] > 0 and row["peer"]["ratio"] > 0
    assert row["hardware"] and row["versions"]["torch"]


def test_fit_cpu_smoke_times_the_old_and_the_new_fit():
    needs_fashion_mnist()
    if not (ROOT / ".git").exists():
        pytest.skip("fit_cpu.py checks the old version out of git")
    *rounds, summary = run_bench("fit_cpu.py", "--smoke")
    assert [r["version"] for r in rounds] == ["old", "new"]
    assert summary["benchmark"] == "fit_cpu" and summary["images"] == 128
    assert summary["speedup"] > 0 and summary["cpu_time_speedup"] > 0
    assert summary["old_ms_per_image"] > 0 and summary["new_ms_per_image"] > 0


STUB = """#!{python}
import json, sys
sys.path.insert(0, {bench!r})
import train_fashion_mnist
args = train_fashion_mnist.parse_args(sys.argv[2:])  # argv[1] is the benchmark script
print(json.dumps({{"benchmark": args.label, "epochs": args.epochs, "recipe": args.recipe}}))
"""
GPU_ROWS = [
    "speed_b256_eager",
    "speed_b1024_fast",
    "speed_b256_compile",
    "time_to_95_fast",
    "one_epoch_8192",
    "accuracy_40ep_long",
]


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
@pytest.mark.parametrize("smoke", [True, False], ids=["smoke", "full"])
def test_gpu_suite_passes_only_flags_train_fashion_mnist_accepts(tmp_path, smoke):
    """gpu_suite.sh needs a GPU for minutes; here every row's command line goes to a stub
    Python that parses it with train_fashion_mnist.py's own parser, so a renamed flag fails."""
    stub = tmp_path / "python"
    stub.write_text(STUB.format(python=sys.executable, bench=str(BENCH)))
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    cmd = ["bash", str(BENCH / "gpu_suite.sh"), "--data-dir", str(tmp_path), "--device", "cpu"]
    r = subprocess.run(
        [*cmd, *(["--smoke"] if smoke else [])],
        env={**os.environ, "PYTHON": str(stub)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(row["benchmark"] for row in rows) == sorted(GPU_ROWS)
    by_name = {row["benchmark"]: row for row in rows}
    assert by_name["accuracy_40ep_long"]["epochs"] == (2 if smoke else 40)
