"""Peer runtimes for ``.tflite`` files: TFLite Micro (host build) and LiteRT, both optional.

- :func:`tflm_outputs`: run int8 inputs through the ``tflite-micro`` interpreter.
- :func:`tflm_arena`: the smallest arena (bisection to 4 B) with which it loads and runs, and
  the head (activations) / tail (persistent) totals that ``print_allocations()`` writes to file
  descriptor 2 at that size (captured with ``os.dup2``: the C++ side bypasses ``sys.stderr``).
- :func:`litert_outputs`: LiteRT, with its reference kernels (``BUILTIN_REF``, bit-exact with
  TFLite Micro) or, ``fast=True``, its optimized kernels (may differ by a few LSB).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import MobilenetsError

ARENA_STEP = 4  # TFLite Micro allocates in 4-byte units: the exact minimum


def have_tflm() -> bool:
    try:
        from tflite_micro.python.tflite_micro import runtime  # noqa: F401
    except Exception:
        return False
    return True


def have_litert() -> bool:
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401
    except Exception:
        return False
    return True


@contextlib.contextmanager
def redirect_fd2(target: int) -> Iterator[None]:
    """Point file descriptor 2 at ``target`` (another descriptor) for the block."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(target, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def silenced_fd2() -> Iterator[None]:
    with open(os.devnull, "w") as null, redirect_fd2(null.fileno()):
        yield


def _tflm(path: str | Path, arena_size: int):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_file(str(path), arena_size=int(arena_size))


def fit_input(it, x: np.ndarray) -> np.ndarray:
    """One NHWC input (1, H, W, C) as interpreter ``it`` takes it: transposed to NCHW for a
    file whose input is channels-first (litert-torch's; the reader drops that file's input
    TRANSPOSE, so the graph, ``run_int8`` and the generated C take NHWC)."""
    shape = tuple(int(d) for d in it.get_input_details(0)["shape"])
    if x.shape != shape and x.ndim == 4 and x.transpose(0, 3, 1, 2).shape == shape:
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def tflm_outputs(path: str | Path, x_int8: np.ndarray, arena_size: int = 64 << 20) -> np.ndarray:
    """int8 outputs of the ``tflite-micro`` interpreter for int8 NHWC inputs (N, H, W, C)
    (given NCHW to a file whose input is channels-first: :func:`fit_input`)."""
    with silenced_fd2():
        it = _tflm(path, arena_size)
    outs = []
    for x in x_int8:
        it.set_input(fit_input(it, x[None]), 0)
        it.invoke()
        outs.append(np.array(it.get_output(0)).reshape(-1))
    return np.stack(outs)


def _runs_here(path: str | Path, arena_size: int, x: np.ndarray, expect=None) -> bool:
    """Loads, runs, and (given ``expect``) gives the output that a roomy arena gives."""
    try:
        it = _tflm(path, arena_size)
        it.set_input(fit_input(it, x), 0)
        it.invoke()
    except RuntimeError:
        return False
    return expect is None or np.array_equal(np.array(it.get_output(0)).reshape(-1), expect)


def _runs(path: str | Path, arena_size: int, x: np.ndarray, expect=None) -> bool:
    """Whether TFLite Micro loads and runs the file with this arena, probed in a forked child:
    some too-small arenas crash the interpreter (segmentation fault) instead of raising."""
    if not hasattr(os, "fork"):
        return _runs_here(path, arena_size, x, expect)
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        ok = False
        try:
            faulthandler.disable()  # a crash here is an answer ("no"), not a report
            ok = _runs_here(path, arena_size, x, expect)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def tflm_arena(path: str | Path, input_shape: tuple[int, ...]) -> dict[str, int]:
    """``tflm_arena_bytes`` (smallest working arena, to 4 B) and the head/tail totals there."""
    x = np.zeros(input_shape, np.int8)
    expect = tflm_outputs(path, x)[0]  # with 64 MiB: what a working arena must give
    lo, hi = 0, 64 << 10  # invariant: lo fails (or is 0), hi works
    with silenced_fd2():
        while not _runs(path, hi, x, expect):
            lo, hi = hi, hi * 2
            if hi > 1 << 31:
                raise MobilenetsError(f"{path}: TFLite Micro cannot run it with a 2 GiB arena")
        while hi - lo > ARENA_STEP:
            mid = (lo + hi) // 2 // ARENA_STEP * ARENA_STEP or ARENA_STEP
            if mid <= lo:
                break
            if _runs(path, mid, x, expect):
                hi = mid
            else:
                lo = mid
        it = _tflm(path, hi)
    text = _capture_fd2(it.print_allocations)
    head = re.search(r"allocation head (\d+) bytes", text)
    tail = re.search(r"allocation tail (\d+) bytes", text)
    return {
        "tflm_arena_bytes": hi,
        "tflm_activation_bytes": int(head.group(1)) if head else None,
        "tflm_persistent_bytes": int(tail.group(1)) if tail else None,
    }


def _capture_fd2(fn) -> str:
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        with redirect_fd2(tmp.fileno()):
            fn()
        tmp.seek(0)
        return tmp.read().decode(errors="replace")


def litert_interpreter(path: str | Path, fast: bool = False):
    """A LiteRT interpreter with reference kernels (default) or its optimized ones."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.AUTO if fast else OpResolverType.BUILTIN_REF
    try:
        with silenced_fd2():  # LiteRT logs "Created TensorFlow Lite XNNPACK delegate" there
            it = Interpreter(str(path), experimental_op_resolver_type=kind)
            it.allocate_tensors()
    except Exception as e:
        raise MobilenetsError(f"{path}: LiteRT cannot load it ({str(e).splitlines()[0]})") from None
    return it


def litert_outputs(path: str | Path, x: np.ndarray, fast: bool = False, it=None) -> np.ndarray:
    """Outputs of LiteRT for NHWC inputs (N, H, W, C) of the file's input type."""
    it = it or litert_interpreter(path, fast)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    outs = []
    for row in x:
        it.set_tensor(inp["index"], np.ascontiguousarray(row[None], inp["dtype"]))
        it.invoke()
        outs.append(it.get_tensor(out["index"]).reshape(-1).copy())
    return np.stack(outs)
