"""Run a mobilenets ``.tflite`` on float inputs: LiteRT when installed, else the NumPy reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import MobilenetsError
from .graph import QuantizedModel


class TFLiteRunner:
    """Logits of a ``.tflite`` for normalized float NCHW inputs.

    LiteRT's reference kernels (``BUILTIN_REF``, bit-exact with TFLite Micro) by default,
    its optimized kernels with ``fast`` (a few LSB may differ), or, when LiteRT is not
    installed, :func:`run_int8` for int8 files. int8 logits are dequantized.
    """

    def __init__(self, path: str | Path, graph: QuantizedModel, fast: bool = False) -> None:
        from .runtimes import have_litert, litert_interpreter

        self.path, self.graph, self.interpreter = Path(path), graph, None
        self.note = ""
        if have_litert():
            self.interpreter = litert_interpreter(path, fast)
            self.runtime = "litert" if fast else "litert-ref"
            if fast:
                self.note = "LiteRT optimized kernels: may differ from TFLite Micro by a few LSB"
        elif graph.is_float:
            raise MobilenetsError(
                f"{path}: an fp32 .tflite needs LiteRT (pip install 'mobilenets[micro]'); "
                "the NumPy reference runs only int8 files"
            )
        else:
            self.runtime = "reference"
            if fast:
                self.note = "--fast needs LiteRT; running the NumPy reference"

    def logits(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        from .export import dequantize, quantize_input
        from .reference import run_int8
        from .runtimes import litert_outputs

        x = np.asarray(x, np.float32)
        if self.graph.is_float:
            return litert_outputs(self.path, x.transpose(0, 2, 3, 1), it=self.interpreter)
        xq = quantize_input(x, self.graph)
        if self.interpreter is not None:
            y = litert_outputs(self.path, xq, it=self.interpreter)
        else:
            y = run_int8(self.graph, xq)
        return dequantize(y, self.graph)
