"""A tiny study grid for tests: small models, 16-20 px, a few hundred images (not a preset)."""

from __future__ import annotations

from mobilenets.study.cells import Grid, Training, Variant, v2_sections


def tiny_grid(data: str = "fashion-mnist", seeds: int = 1) -> Grid:
    def v(model: str, width: float = 1.0, res: int = 16, **kw) -> Variant:
        return Variant(model, width, res, True, **kw)

    training = Training(data, 1, 32, 128, 100, lr=0.1, ema=False, device="cpu")
    g = Grid("tiny", training, seeds)
    v1, v2 = v("mobilenet_v1", 0.25), v("mobilenet_v2", 0.2)
    g.sections = {
        "alpha": [v1, v("mobilenet_v1", 0.5), v2, v("mobilenet_v2", 0.35)],
        "rho": [v1, v("mobilenet_v1", 0.25, 20)],
        "baselines": [v1, v2, v("mobilenet_v1", 0.5), v("mobilenet_v2", 0.35)],
        "imagenet": [
            Variant(m, 1.0, 224, False, imagenet=True, **kw)
            for m, kw in (
                ("mobilenet_v1", {}),
                ("mobilenet_v2", {}),
                ("resnet50", {}),
                ("vgg16", {}),
                ("mobilenet_v1", {"conv_type": "full"}),
            )
        ],
        "conv": [v1, v("mobilenet_v1", 0.25, conv_type="full")],
        "ablation": [
            v2,
            v("mobilenet_v2", 0.2, bottleneck_activation="relu6"),
            v("mobilenet_v2", 0.2, shortcut="expansion"),
            v("mobilenet_v2", 0.2, shortcut="none"),
        ],
    }
    v2_sections(g, v2)  # dwconv (cost only here, as in quick) and expansion (trained)
    g.trained = {v1, v2, v("mobilenet_v2", 0.2, shortcut="none"), *g.sections["expansion"]}
    g.degradation = {"V1": v1, "V2": v2, "V2, no shortcut": v("mobilenet_v2", 0.2, shortcut="none")}
    g.latency = [v1]  # each timing exports to ONNX (~10 s): one is enough to check the wiring
    return g
