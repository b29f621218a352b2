"""Helpers shared by several test modules (fixtures live in conftest.py; these are plain
functions and markers, imported as ``from support import ...`` like ``study_tiny``)."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenets import cli
from mobilenets.preprocess import Preprocess

SYSTEM = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not SYSTEM.is_dir(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    """``mobilenets ARGS`` in-process: (exit code, stdout, stderr); argparse's exit is a code."""
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def run_module(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m mobilenets ARGS`` in a child process, text output captured."""
    return subprocess.run(
        [sys.executable, "-m", "mobilenets", *args], capture_output=True, text=True, timeout=timeout
    )


def make_imagefolder(root: Path, bad: bool = False) -> Path:
    """A two-class ImageFolder (train: 6 per class, val: 2) of 40x36 noisy colour PNGs; with
    ``bad``, one extra train file that is not a PNG."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("val", 2)):
        for c, color in (("circle", 40), ("square", 200)):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                arr = (torch.rand(36, 40, 3, generator=g) * 50 + color).clamp(0, 255).byte().numpy()
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    if bad:
        (root / "train" / "square" / "broken.png").write_bytes(
            b"\x89PNG\r\n\x1a\n this is not a png"
        )
    return root


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    """A uint8 IDX file (Fashion-MNIST's format); with ``gz``, written to ``path.gz``."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def fit_tiny(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    mean: list[float],
    std: list[float],
) -> torch.nn.Module:
    """``steps`` AdamW steps (lr 5e-3) on random batches of 64 uint8 ``images`` (drawn from a
    generator seeded with 0), at the model's resolution, on one intra-op thread (tiny kernels:
    as fast, and immune to a busy CPU). Returns ``model`` in eval mode."""
    import torch.nn.functional as F

    from mobilenets.transforms import to_model_input

    res = model.config.resolution
    opt = torch.optim.AdamW(model.parameters(), 5e-3)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            idx = torch.randint(0, len(labels), (64,), generator=g)
            loss = F.cross_entropy(model(to_model_input(images[idx], res, mean, std)), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


NAMES = ["a", "b", "c"]  # the classes of conftest's ``tiny`` model
PREP = Preprocess(32, 1, [0.3], [0.4], 0.875)  # and its preprocessing


def one_line_error(err: str, needle: str) -> None:
    """``err`` is one line without a traceback and contains ``needle``."""
    assert needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


# A tiny training run on real Fashion-MNIST images (128 train, 64 test).
TINY = [
    "train",
    "--model",
    "mobilenet_v1",
    "--width",
    "0.25",
    "--data",
    "fashion-mnist",
    "--batch-size",
    "64",
    "--max-train-samples",
    "128",
    "--max-eval-samples",
    "64",
    "--quiet",
]


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


# ---------------------------------------------------------------- .tflite files and generated C
# Byte edits of a .tflite flatbuffer (``raw`` a bytearray, ``m`` its tflite.Model) that make a
# file the runtimes here must refuse, and one host build of a generated C library.

STRICT_C = "-std=c99 -Wall -Wextra -Werror -Wpedantic -Wconversion -Wshadow -Wcast-align".split()


def uint8_inside(raw, m) -> None:
    """The first op's output becomes UINT8 (legacy quantization inside the graph)."""
    sub = m.Subgraphs(0)
    t = sub.Tensors(sub.Operators(0).Outputs(0))
    raw[t._tab.Pos + t._tab.Offset(6)] = 3  # Tensor.type: UINT8


def dynamic_width(raw, m) -> None:
    """The input's shape signature gets a -1 width (a dynamic shape)."""
    t = m.Subgraphs(0).Tensors(m.Subgraphs(0).Inputs(0))
    start = t._tab.Vector(t._tab.Offset(18))  # Tensor.shape_signature
    raw[start + 8 : start + 12] = np.int32(-1).tobytes()


def two_subgraphs(raw, m) -> None:
    """The model claims two subgraphs."""
    start = m._tab.Vector(m._tab.Offset(8))  # Model.subgraphs: its length field
    raw[start - 4 : start] = np.uint32(2).tobytes()


def build_host_program(qm, folder: Path, engine: Path | None) -> tuple[Path, Path]:
    """Generate ``qm``'s C into ``folder`` and link its ``mn_host`` with strict warnings; the
    kernels are compiled once, into ``engine`` (``folder/../mn_engine.o`` when None).
    Returns (the executable, the engine object)."""
    from mobilenets import generate_c

    generate_c(qm, folder)
    if engine is None:
        engine = folder.parent / "mn_engine.o"
        cmd = ["cc", "-O2", *STRICT_C, "-c", str(folder / "mn_engine.c"), "-o", str(engine)]
        subprocess.run(cmd, check=True)
    exe = folder / "mn_host"
    srcs = [str(folder / f) for f in ("model.c", "main_host.c", "mn_inputs.c")]
    subprocess.run(["cc", "-O1", *STRICT_C, *srcs, str(engine), "-o", str(exe)], check=True)
    return exe, engine
