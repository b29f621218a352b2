"""The integer-only NumPy reference: :func:`run_int8`, one plain function per op.

Each op runs the kernel its registry entry names (:mod:`.ops`, kernels in :mod:`.kernels`),
which does what TFLite Micro's reference kernel does on a batch (N, H, W, C).
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from .graph import QuantizedModel
from .kernels import requantize  # noqa: F401  (re-exported)
from .ops import spec


def run_int8(qmodel: QuantizedModel, x_int8: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """int8 logits (N, classes) of ``qmodel`` for int8 NHWC inputs ``x_int8`` (N, H, W, C).

    A single image (H, W, C) gives (classes,). Bit-exact with TFLite Micro's reference kernels.
    A graph with float32 boundary ops runs without them (:meth:`QuantizedModel.int8_core`).
    """
    qmodel = qmodel.int8_core()
    x = np.asarray(x_int8)
    single = x.ndim == 3
    x = x[None] if single else x
    expect = qmodel.input_tensor.shape[1:]
    if x.dtype != np.int8 or x.shape[1:] != expect:
        raise UsageError(
            f"run_int8 needs int8 inputs of shape (N, {', '.join(map(str, expect))}), "
            f"got {x.dtype} {tuple(x.shape)}"
        )
    outs = [_run_batch(qmodel, x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    classes = qmodel.output_tensor.nbytes  # the logits tensor is (1, 1, 1, classes)
    out = np.concatenate(outs).reshape(len(x), classes) if outs else np.zeros((0, classes), np.int8)
    return out[0] if single else out


def run_graph(qmodel: QuantizedModel, x: np.ndarray) -> np.ndarray:
    """Every op of ``qmodel`` (its boundary QUANTIZE/DEQUANTIZE included) on a batch ``x`` of
    the input tensor's type; the output tensor's values, (N, *shape[1:])."""
    return _run_batch(qmodel, np.asarray(x))


def _run_batch(qmodel: QuantizedModel, x: np.ndarray) -> np.ndarray:
    values: dict[int, np.ndarray] = {qmodel.input: x}
    t = qmodel.tensors
    for op in qmodel.ops:
        ins = [values[i] for i in op.inputs]
        values[op.output] = spec(op.kind).kernel(ins, op, [t[i] for i in op.inputs], t[op.output])
    return values[qmodel.output]
