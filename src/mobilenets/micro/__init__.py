"""Integer-only int8 for phones and microcontrollers.

One quantized graph (``graph.QuantizedModel``) is shared by the NumPy reference, the ``.tflite``
writer and the C code generator, so the three can never disagree about what the network is.
"""
