"""What machine and software a result was measured on: the one owner of environment capture.

Training summaries, the study, ``bench`` and the scripts in ``benchmarks/`` all record their
hardware and versions through these functions, so every figure carries the same description.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "asimd")


def usable_cpus() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _cpuinfo() -> tuple[str, list[str]]:
    """The CPU's model name and the ``ISA_FLAGS`` it has (from /proc/cpuinfo where there is one)."""
    cpu, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return cpu, [f for f in ISA_FLAGS if f" {f}" in flags]


def hardware(device: Any = None) -> str:
    """A one-line description of the machine (CPU model and cores, GPU if ``device`` is one)."""
    import torch

    cpu, _ = _cpuinfo()
    text = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    if device is not None and getattr(device, "type", None) == "cuda":
        text = f"{torch.cuda.get_device_name(device)}; {text}"
    return text


def hardware_record(threads: int | None = None) -> dict[str, Any]:
    """The machine as a record: CPU, its vector ISA, usable cores, threads, 1-minute load."""
    cpu, isa = _cpuinfo()
    return {
        "cpu": cpu,
        "isa": isa,
        "usable_cores": usable_cpus(),
        "threads": threads,
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def package_version(name: str) -> str | None:
    """An installed distribution's version, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions(*extra: str) -> dict[str, str | None]:
    """mobilenets, torch, torchvision and Python versions, plus the ``extra`` distributions'."""
    from ._version import __version__

    out: dict[str, str | None] = {
        "mobilenets": __version__,
        "torch": package_version("torch"),
        "torchvision": package_version("torchvision"),
        "python": platform.python_version(),
    }
    for name in extra:
        out[name] = package_version(name)
    return out


def tool_version(cmd: list[str]) -> str | None:
    """The first line of ``cmd``'s output (e.g. ``["gcc", "--version"]``), None if it cannot run."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.splitlines()[
            0
        ]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None
