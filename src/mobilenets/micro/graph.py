"""The one quantized graph: integer-only int8 ops in NHWC, following the LiteRT int8 spec.

Shared by the NumPy reference (``reference``), the ``.tflite`` writer/reader (``tflite``) and the
C code generator. Conventions (those of TFLite, so the writer is a plain translation):

- Activation tensors are int8, per tensor, asymmetric: ``real = scale * (q - zero_point)``.
  ``scale`` is always a float32-representable value, exactly what the ``.tflite`` file stores,
  because TFLite Micro derives every multiplier from those float32 values at Prepare.
- Shapes are NHWC with batch 1: ``(1, H, W, C)``; the logits are ``(1, 1, 1, num_classes)``.
- Weights are int8, symmetric (zero point 0), per output channel:
  ``conv2d`` (O, KH, KW, I); ``depthwise_conv2d`` (1, KH, KW, C * depth_multiplier);
  ``fully_connected`` (O, I), its input flattened in NHWC order.
- Bias is int32 with scale ``s_in * s_w[c]``. A tensor with one weight scale (the classifier)
  repeats it per channel in ``weight_scales``; the writer then stores it once.
- The classifier (PyTorch's flatten + Linear) is a VALID ``conv2d`` whose kernel covers the whole
  pooled map, and its (1, 1, 1, classes) output is the graph's output: TFLite Micro and LiteRT's
  reference kernels round int8 FULLY_CONNECTED differently, their CONV_2D alike, and a final
  RESHAPE would cost TFLite Micro arena for nothing (``run_int8`` returns (N, classes)).
- ``padding`` is (top, bottom, left, right) of implicit zero-point padding inside a conv or pool.
  It must be TensorFlow SAME or VALID for the op's geometry (TFLite knows no other); other
  padding (PyTorch's symmetric padding of stride-2 convs, max pools) is an explicit ``pad`` op.
- ``act_min``/``act_max`` is the fused activation as an output clamp (ReLU6 -> [q(0), q(6)]),
  computed as TFLite does (``CalculateActivationRangeQuantized``); ``activation`` names it
  (``none``, ``relu``, ``relu6``) so the ``.tflite`` writer can store the fused activation.
- ``avg_pool2d``, ``max_pool2d``, ``pad``, ``padv2``, ``reshape`` and ``squeeze`` keep their
  input's scale and zero point (TFLite's int8 kernels for them do not rescale); ``logistic`` and
  ``softmax`` outputs have scale 1/256 and zero point -128. Each op kind's rules live in one
  registry entry (:mod:`.ops`).
- ``mul`` may broadcast its second input ([1, H, W, C] x [1, 1, 1, C], squeeze-excite); ``mean``
  reduces H and W (keep dims).
- An int8 graph may start with ``quantize`` (a float32 input tensor, scale 0) and end with
  ``dequantize``; :meth:`QuantizedModel.int8_core` is the graph between them.

The fp32 graph (for the fp32 ``.tflite``) uses the same classes: float32 ``weights`` and ``bias``,
tensors with ``scale == 0.0`` (not quantized), ``act_min``/``act_max`` unused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import ops

OP_KINDS = ops.OP_KINDS  # the registry (:mod:`.ops`) defines every op


@dataclass
class Tensor:
    """An int8 activation tensor (weights live on their op)."""

    name: str
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Op:
    """One int8 op. ``inputs``/``output`` index ``QuantizedModel.tensors``."""

    kind: str
    inputs: tuple[int, ...]
    output: int
    name: str = ""
    weights: np.ndarray | None = None  # int8, layout above
    weight_scales: np.ndarray | None = None  # float32, one per output channel
    bias: np.ndarray | None = None  # int32, one per output channel
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right
    kernel: tuple[int, int] = (1, 1)  # pools; convs take theirs from ``weights``
    depth_multiplier: int = 1
    act_min: int = -128
    act_max: int = 127
    activation: str = "none"  # fused: none, relu, relu_n1_to_1, relu6
    pad_value: int | None = None  # PADV2's constant; None: the zero point (PAD)
    beta: float = 1.0  # SOFTMAX

    def __post_init__(self) -> None:
        ops.spec(self.kind)  # ValueError naming the supported kinds


@dataclass
class QuantizedModel:
    """A whole int8 network: tensors, ops in execution order, and what a deployment needs."""

    tensors: list[Tensor]
    ops: list[Op]
    input: int
    output: int
    config: dict[str, Any] = field(default_factory=dict)  # ModelConfig.to_dict()
    preprocess: dict[str, Any] = field(default_factory=dict)  # Preprocess.to_dict()
    class_names: list[str] | None = None

    @property
    def input_tensor(self) -> Tensor:
        return self.tensors[self.input]

    @property
    def output_tensor(self) -> Tensor:
        return self.tensors[self.output]

    @property
    def is_float(self) -> bool:
        """True for the fp32 graph (float32 weights, no quantized tensor). An int8 graph may
        still have float32 boundary tensors (QUANTIZE in, DEQUANTIZE out: :meth:`int8_core`)."""
        return all(t.scale == 0.0 for t in self.tensors)

    def int8_core(self) -> QuantizedModel:
        """The graph between its boundary QUANTIZE and DEQUANTIZE (itself when it has none):
        int8 in, int8 out, what ``run_int8`` and the generated C take and return."""
        ops, inp, out = list(self.ops), self.input, self.output
        if ops and ops[0].kind == "quantize" and ops[0].inputs[0] == inp:
            inp = ops.pop(0).output
        if ops and ops[-1].kind == "dequantize" and ops[-1].output == out:
            out = ops.pop().inputs[0]
        if (inp, out) == (self.input, self.output):
            return self
        return QuantizedModel(
            self.tensors, ops, inp, out, self.config, self.preprocess, self.class_names
        )

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.kind] = counts.get(op.kind, 0) + 1
        return counts
