"""Make foreign int8 ``.tflite`` files, as MCU and phone users get them, for the reader tests.

Two converters, each in its own optional environment (neither is a dependency of mobilenets
or of its test command):

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu
    /tmp/tfenv/bin/python scripts/make_tflite_fixtures.py keras --small tests/data/foreign
    /tmp/tfenv/bin/python scripts/make_tflite_fixtures.py keras --full runs/foreign

    python3 -m venv /tmp/ltenv && /tmp/ltenv/bin/pip install litert-torch
    /tmp/ltenv/bin/python scripts/make_tflite_fixtures.py litert-torch --small tests/data/foreign
    /tmp/ltenv/bin/python scripts/make_tflite_fixtures.py litert-torch --full runs/foreign

``--small`` writes the committed fixtures (each <= 300 kB: 10-class heads, the V2/V3 bodies
truncated after a few blocks), ``--full`` the full-size files of the issue's acceptance list.
Every file gets a ``NAME.tflite.json`` beside it: the converter, its version, the model and
its options. Calibration uses seeded random images in the model's input range.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SMALL_LIMIT = 300_000


def write(out: Path, name: str, data: bytes, info: dict, small: bool) -> None:
    """Write ``name`` and its JSON record atomically; refuse a committed fixture over the limit."""
    if small and len(data) > SMALL_LIMIT:
        raise SystemExit(f"{name}: {len(data):,} B is over the {SMALL_LIMIT:,} B fixture limit")
    out.mkdir(parents=True, exist_ok=True)
    for path, payload in (
        (out / name, data),
        (out / f"{name}.json", (json.dumps(info, indent=1) + "\n").encode()),
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(payload)
        tmp.replace(path)
    print(f"wrote {out / name} ({len(data):,} B)", file=sys.stderr)


# ---------------------------------------------------------------- TensorFlow / Keras


def keras_convert(model, shape: tuple[int, ...], float_io: bool = False) -> bytes:
    """Full-integer int8 conversion with TFLiteConverter (int8 in/out unless ``float_io``)."""
    import numpy as np
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)

    def calib():
        for _ in range(16):
            yield [rng.uniform(-1, 1, (1, *shape)).astype(np.float32)]

    conv.representative_dataset = calib
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if not float_io:
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


def truncated(model, layer: str, classes: int, softmax: bool):
    """``model`` up to ``layer``, then global average pooling and a ``classes``-way Dense."""
    import tensorflow as tf

    x = model.get_layer(layer).output
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    x = tf.keras.layers.Dense(classes, activation="softmax" if softmax else None)(x)
    return tf.keras.Model(model.input, x)


def keras_models(small: bool):
    """(file name, Keras model, input shape, float I/O, options) of each Keras fixture."""
    import tensorflow as tf

    app = tf.keras.applications
    if not small:
        yield (
            "keras_mobilenet_a025_96_gray_2cls.tflite",
            app.MobileNet(input_shape=(96, 96, 1), alpha=0.25, weights=None, classes=2),
            (96, 96, 1),
            False,
            {"alpha": 0.25, "classes": 2, "softmax": True},
        )
        yield (
            "keras_mobilenet_a025_128.tflite",
            app.MobileNet(
                input_shape=(128, 128, 3), alpha=0.25, weights=None, classifier_activation=None
            ),
            (128, 128, 3),
            False,
            {"alpha": 0.25, "softmax": False},
        )
        yield (
            "keras_mobilenet_v2_a035_144.tflite",
            app.MobileNetV2(
                input_shape=(144, 144, 3), alpha=0.35, weights=None, classifier_activation=None
            ),
            (144, 144, 3),
            False,
            {"alpha": 0.35, "softmax": False},
        )
        for minimal in (False, True):
            yield (
                f"keras_mobilenet_v3_small_96{'_minimal' if minimal else ''}.tflite",
                (
                    app.MobileNetV3Small(
                        input_shape=(96, 96, 3),
                        minimalistic=minimal,
                        weights=None,
                        include_preprocessing=False,
                        classifier_activation=None,
                    )
                ),
                (96, 96, 3),
                False,
                {"alpha": 1.0, "minimalistic": minimal, "softmax": False},
            )
        return
    for softmax in (False, True):
        tag = "_softmax" if softmax else ""
        v1 = app.MobileNet(
            input_shape=(32, 32, 1),
            alpha=0.25,
            weights=None,
            classes=10,
            classifier_activation="softmax" if softmax else None,
        )
        yield (
            f"keras_mobilenet_a025_32_gray{tag}.tflite",
            v1,
            (32, 32, 1),
            False,
            {
                "alpha": 0.25,
                "classes": 10,
                "softmax": softmax,
            },
        )
        v2 = app.MobileNetV2(input_shape=(48, 48, 3), alpha=0.35, weights=None, include_top=False)
        yield (
            f"keras_mobilenet_v2_a035_48_b6{tag}.tflite",
            truncated(v2, "block_6_project_BN", 10, softmax),
            (48, 48, 3),
            False,
            {"alpha": 0.35, "truncated_after": "block_6", "softmax": softmax},
        )
        for minimal in (False, True):
            v3 = app.MobileNetV3Small(
                input_shape=(48, 48, 3),
                minimalistic=minimal,
                weights=None,
                include_top=False,
                include_preprocessing=False,
            )
            name = f"keras_mobilenet_v3_small_48{'_minimal' if minimal else ''}_b5{tag}.tflite"
            opts = {
                "minimalistic": minimal,
                "truncated_after": "expanded_conv_5",
                "softmax": softmax,
            }
            yield name, truncated(v3, "expanded_conv_5_add", 10, softmax), (48, 48, 3), False, opts
    v1 = app.MobileNet(input_shape=(32, 32, 1), alpha=0.25, weights=None, classes=10)
    yield (
        "keras_mobilenet_a025_32_gray_float_io.tflite",
        v1,
        (32, 32, 1),
        True,
        {
            "alpha": 0.25,
            "classes": 10,
            "softmax": True,
            "float_io": True,
        },
    )


def make_keras(out: Path, small: bool) -> None:
    import tensorflow as tf

    for name, model, shape, float_io, options in keras_models(small):
        data = keras_convert(model, shape, float_io)
        info = {
            "converter": "tf.lite.TFLiteConverter (full-integer int8)",
            "tensorflow": tf.__version__,
            "keras": getattr(tf.keras, "__version__", None),
            "model": model.name,
            "input_shape": list(shape),
            "io": "float32" if float_io else "int8",
            "options": options,
            "python": platform.python_version(),
        }
        write(out, name, data, info, small)


# ---------------------------------------------------------------- litert-torch (PT2E)


def make_litert_torch(out: Path, small: bool) -> None:
    """torchvision MobileNetV2 alpha 0.35 through litert-torch's PT2E int8 quantizer."""
    from importlib.metadata import version

    import litert_torch
    import torch
    import torchvision
    from litert_torch.quantize import pt2e_quantizer, quant_config

    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(width_mult=0.35, num_classes=10 if small else 1000)
    res = 48 if small else 144
    if small:  # the first 7 inverted residuals, then pool and classifier (<= 300 kB)
        net = torch.nn.Sequential(
            net.features[:8],
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(1),
            torch.nn.Linear(net.features[7].out_channels, 10),
        )
    net = net.eval()
    x = (torch.rand(1, 3, res, res) * 2 - 1,)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    )
    edge = litert_torch.convert(
        net, x, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer)
    )
    name = f"litert_torch_mobilenet_v2_a035_{res}{'_b7' if small else ''}.tflite"
    tmp = out / (name + ".export")
    out.mkdir(parents=True, exist_ok=True)
    edge.export(str(tmp))
    data = tmp.read_bytes()
    tmp.unlink()
    info = {
        "converter": "litert-torch PT2E int8 (symmetric, per-channel)",
        "litert-torch": version("litert-torch"),
        "torch": torch.__version__,
        "model": "torchvision mobilenet_v2(width_mult=0.35)",
        "input_shape": [1, 3, res, res],
        "options": {"truncated_after": "features[7]"} if small else {},
        "python": platform.python_version(),
    }
    write(out, name, data, info, small)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("converter", choices=("keras", "litert-torch"))
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--small", metavar="DIR", help="the committed fixtures (<= 300 kB each)")
    size.add_argument("--full", metavar="DIR", help="the full-size acceptance files")
    a = p.parse_args()
    out = Path(a.small or a.full)
    (make_keras if a.converter == "keras" else make_litert_torch)(out, bool(a.small))
    return 0


if __name__ == "__main__":
    sys.exit(main())
