"""Measurements the study stores beside its cells: cost (``profile``), latency (``bench``).

Latency runs after all training cells, one model at a time, with every core: onnxruntime,
batch 1, fp32 and int8. Each result is written to ``DIR/latency/KEY.json`` (atomically), so a
resumed study does not time a model twice and the report reads exactly what ``bench`` returned.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import write_text
from .cells import Variant

LATENCY_RUNTIMES = ("onnx", "onnx-int8")


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write: temp file + os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(obj, indent=2))


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# The body of a MobileNet: the stem and the blocks, without V2's 1280-channel head conv and
# the classifier (profile()'s op names start with the module's name).
BODY = ("stem", "blocks")


def cost(variant: Variant, num_classes: int, in_chans: int) -> dict[str, Any]:
    """Params, MACs and peak activation memory from :func:`mobilenets.profile`, and the
    params and MACs of the body alone (``BODY``: the ops of the stem and the blocks)."""
    from ..models import build_from_config
    from ..profiling import profile

    r = profile(build_from_config(variant.config(num_classes, in_chans)))
    body = [op for op in r.ops if op.name.split(".")[0] in BODY]
    return {
        "params": r.params,
        "macs": r.macs,
        "peak_activation_bytes": r.peak_activation_bytes,
        "body_params": sum(op.params for op in body),
        "body_macs": sum(op.macs for op in body),
    }


def latency_path(out: str | Path, variant: Variant) -> Path:
    return Path(out) / "latency" / f"{variant.key}.json"


def _runs_for(macs: int) -> tuple[int, int]:
    """Timed runs and warm-up runs: ~20 G multiply-adds per runtime, 3 to 50 runs."""
    runs = max(3, min(50, int(2e10 // max(macs, 1))))
    return runs, max(1, runs // 5)


def measure_latency(
    variant: Variant, num_classes: int, in_chans: int, out: str | Path
) -> list[dict[str, Any]]:
    """``bench`` the variant (random weights: latency does not depend on them) unless stored."""
    import torch

    from ..bench import bench
    from ..models import build_from_config

    path = latency_path(out, variant)
    stored = read_json(path)
    if stored is not None:
        return stored
    model = build_from_config(variant.config(num_classes, in_chans))
    runs, warmup = _runs_for(cost(variant, num_classes, in_chans)["macs"])
    cfg = model.config
    calib = torch.randn(8, cfg.in_chans, cfg.resolution, cfg.resolution)
    torch.manual_seed(0)
    rows = bench(model, LATENCY_RUNTIMES, batch_size=1, runs=runs, warmup=warmup, calib_data=calib)
    write_json(path, rows)
    return rows


# ---------------------------------------------------------------- feature degradation


def degradation_path(out: str | Path, name: str) -> Path:
    return Path(out) / "degradation" / f"{name.replace(' ', '_').replace(',', '')}.json"


DEGRADATION_VERSION = 2  # 2: per-layer ``identity_block`` and the shortcut-layer totals


def identity_blocks(model: Any) -> list[str]:
    """Module-name prefixes (``blocks.4.``) of the inverted residuals whose input and output
    have the same shape (stride 1, channels in == out): where the V2 paper adds its bottleneck
    shortcut. Structural: the same list for every ``shortcut`` option of one width."""
    from ..models import InvertedResidual

    found = []
    for name, m in model.named_modules():
        if not isinstance(m, InvertedResidual):
            continue
        first = m.expand.conv if m.expand is not None else m.dw.conv
        stride1 = tuple(m.dw.conv.stride) == (1, 1)
        if stride1 and first.in_channels == m.project.conv.out_channels:
            found.append(name + ".")
    return found


def dead_channels(checkpoint: str | Path, dataset: Any, max_images: int = 1000) -> dict[str, Any]:
    """Per ReLU/ReLU6 layer, the channels never positive on the test images (counts).

    Runs the first ``max_images`` test images (a seeded subset is not needed: every image
    counts for "never"), recording each channel's maximum over images and positions. Each
    layer says whether it lies in an identity-shaped block (:func:`identity_blocks`); the
    totals over those layers are what the shortcut comparison uses.
    """
    from ..checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    maxima = _channel_maxima(ck, dataset.split("test"), max_images)
    ident = identity_blocks(ck.model)
    layers = [
        {
            "layer": k,
            "channels": len(v),
            "dead": int((v <= 0).sum()),
            "dead_fraction": float((v <= 0).float().mean()),
            "identity_block": any(k.startswith(p) for p in ident),
        }
        for k, v in maxima.items()
    ]
    total = sum(r["channels"] for r in layers)
    in_ident = [r for r in layers if r["identity_block"]]
    return {
        "version": DEGRADATION_VERSION,
        "checkpoint": str(ck.path),
        "images": min(max_images, len(dataset.split("test"))),
        "layers": layers,
        "dead": sum(r["dead"] for r in layers),
        "channels": total,
        "dead_fraction": sum(r["dead"] for r in layers) / max(total, 1),
        "identity_dead": sum(r["dead"] for r in in_ident),
        "identity_channels": sum(r["channels"] for r in in_ident),
    }


def _channel_maxima(ck: Any, split: Any, max_images: int) -> dict[str, Any]:
    """Each ReLU/ReLU6 layer's per-channel maximum over the first ``max_images`` of ``split``."""
    import torch
    from torch import nn

    from ..data import eval_batches

    maxima: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_module, _inputs, output):
            m = output.detach().amax(dim=(0, 2, 3))
            maxima[name] = torch.maximum(maxima[name], m) if name in maxima else m

        return record

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in ck.model.named_modules()
        if isinstance(m, (nn.ReLU, nn.ReLU6))
    ]
    n = min(max_images, len(split))
    try:
        with torch.inference_mode():
            for x, _ in eval_batches(
                split, ck.preprocess, 256, torch.device("cpu"), torch.arange(n)
            ):
                ck.model(x)
    finally:
        for h in handles:
            h.remove()
    return maxima
