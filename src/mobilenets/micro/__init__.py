"""Integer-only int8 for phones and microcontrollers.

One quantized graph (``graph.QuantizedModel``) is shared by the NumPy reference, the ``.tflite``
writer and the C code generator, so the three can never disagree about what the network is.

- ``lower``: PyTorch model (BN folded) -> fp32 graph; ``quantizer``: ``quantize_int8``;
- ``reference``: ``run_int8``, the NumPy reference; ``arith``: TFLite's requantization;
- ``tflite``: ``.tflite`` writer/reader; ``export``: ``export_tflite`` and the CLI;
- ``runtimes``: TFLite Micro / LiteRT (optional; predict/eval run them through ``mobilenets.backend``).
"""
