"""Write tests/data/keras_mobilenet_v3.json: Keras's MobileNetV3Large/Small layer shapes and
trainable parameter counts (alpha 0.75 and 1.0, minimalistic or not), the golden data that
tests/test_mobilenet_v3.py compares our networks with.

TensorFlow is not a dependency of mobilenets or of its tests: run this in a separate
environment, e.g.

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu
    /tmp/tfenv/bin/python scripts/keras_v3_shapes.py
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "keras_mobilenet_v3.json"


def conv_shapes(model) -> list[list[int]]:
    """Each Conv2D/DepthwiseConv2D kernel as PyTorch's (out, in / groups, kh, kw), in order."""
    shapes = []
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.DepthwiseConv2D):
            kh, kw, c, _ = layer.kernel.shape
            shapes.append([c, 1, kh, kw])
        elif isinstance(layer, tf.keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            shapes.append([cout, cin, kh, kw])
    return shapes


def main() -> int:
    rows = []
    for family in ("Large", "Small"):
        build = getattr(tf.keras.applications, f"MobileNetV3{family}")
        for alpha in (0.75, 1.0):
            for minimal in (False, True):
                m = build(
                    input_shape=(224, 224, 3), alpha=alpha, minimalistic=minimal, weights=None
                )
                rows.append(
                    {
                        "model": f"mobilenet_v3_{family.lower()}",
                        "alpha": alpha,
                        "minimalistic": minimal,
                        "trainable_params": int(sum(int(tf.size(w)) for w in m.trainable_weights)),
                        "conv_shapes": conv_shapes(m),
                        "output_shape": list(m.output_shape[1:]),
                    }
                )
    meta = {
        "made_by": "scripts/keras_v3_shapes.py",
        "tensorflow": tf.__version__,
        "keras": tf.keras.__version__ if hasattr(tf.keras, "__version__") else None,
        "python": platform.python_version(),
    }
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "models": rows}, indent=1) + "\n")
    tmp.replace(OUT)
    print(f"wrote {OUT} ({len(rows)} models)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
