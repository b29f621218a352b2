"""MobileNetV3 (Large, Small, minimalistic): the network layer for layer against torchvision and
timm (shapes, parameter counts and logits after weight import), and its cost against an
independent counter (``torch.utils.flop_counter``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import mobilenets
from mobilenets.config import ModelConfig
from mobilenets.errors import UsageError
from mobilenets.testing import randomize_bn

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

X = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))


def save(model: nn.Module, path) -> str:
    torch.save(model.state_dict(), path)
    return str(path)


def max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor = X) -> float:
    """Largest logit difference, relative to the largest logit when that exceeds 1 (ReLU-only
    minimalistic models reach logits of ~10, where float32 sums differ by ~1e-4 absolute)."""
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    return ((ya - yb).abs().max() / yb.abs().max().clamp(min=1.0)).item()


def conv_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    """Every conv/linear weight shape in module order, 1x1 conv heads as linear ones."""
    out = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            s = tuple(m.weight.shape)
            out.append(s[:2] if isinstance(m, nn.Conv2d) and s[1:] == (s[1], 1, 1) else s)
    return out


# torchvision's model cards: mobilenet_v3_large 5,483,032 and mobilenet_v3_small 2,542,856 params
@pytest.mark.parametrize(
    "name, params", [("mobilenet_v3_large", 5_483_032), ("mobilenet_v3_small", 2_542_856)]
)
def test_v3_parameter_counts_equal_torchvision_and_timm(name, params):
    ours = mobilenets.create_model(name)
    tv = getattr(torchvision.models, name)()
    tm = timm.create_model(name.replace("mobilenet_v3_", "mobilenetv3_") + "_100")
    counts = [sum(p.numel() for p in m.parameters()) for m in (ours, tv, tm)]
    assert counts == [params] * 3
    assert conv_shapes(ours) == conv_shapes(tm)


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small"])
def test_torchvision_v3_weights_give_torchvision_logits(name, tmp_path):
    src = randomize_bn(getattr(torchvision.models, name)(), seed=3)
    path = save(src, tmp_path / "w.pth")
    with pytest.raises(mobilenets.MobilenetsError, match="bn_eps=0.001"):
        mobilenets.create_model(name, pretrained=path)  # torchvision's V3 BN eps is 1e-3
    ours = mobilenets.create_model(name, bn_eps=1e-3, pretrained=path)
    assert max_diff(ours, src) < 1e-4


# timm's plain models (PyTorch padding, BN eps 1e-5) and its TF ports (SAME padding, eps 1e-3),
# the minimalistic ones among them, at alpha 0.75 and 1.0.
TIMM_V3 = [
    ("mobilenetv3_large_100", "mobilenet_v3_large", 1.0, {}),
    ("mobilenetv3_large_075", "mobilenet_v3_large", 0.75, {}),
    ("mobilenetv3_small_100", "mobilenet_v3_small", 1.0, {}),
    ("mobilenetv3_small_075", "mobilenet_v3_small", 0.75, {}),
    ("mobilenetv3_small_050", "mobilenet_v3_small", 0.5, {}),
    ("tf_mobilenetv3_large_minimal_100", "mobilenet_v3_large", 1.0, {"minimal": True}),
    ("tf_mobilenetv3_small_minimal_100", "mobilenet_v3_small", 1.0, {"minimal": True}),
    ("tf_mobilenetv3_small_075", "mobilenet_v3_small", 0.75, {}),
]


@pytest.mark.parametrize("variant, name, width, options", TIMM_V3)
def test_timm_v3_weights_give_timm_logits(variant, name, width, options, tmp_path):
    src = randomize_bn(timm.create_model(variant), seed=4)
    if variant.startswith("tf_"):
        options = {**options, "padding": "same", "bn_eps": 1e-3}
    ours = mobilenets.create_model(
        name, width_mult=width, pretrained=save(src, tmp_path / "w.pth"), **options
    )
    assert conv_shapes(ours) == conv_shapes(src)
    assert max_diff(ours, src) < 1e-4


def test_minimal_is_relu_3x3_without_squeeze_excite():
    m = mobilenets.create_model("mobilenet_v3_large", minimal=True)
    mods = list(m.modules())
    assert not any(isinstance(x, (nn.Hardswish, nn.Hardsigmoid)) for x in mods)
    assert not any(type(x).__name__ == "SqueezeExcite" for x in mods)
    dw = [x for x in mods if isinstance(x, nn.Conv2d) and x.groups > 1]
    assert dw and all(x.kernel_size == (3, 3) for x in dw)
    full = mobilenets.create_model("mobilenet_v3_large")
    assert {x.kernel_size for x in full.modules() if isinstance(x, nn.Conv2d) and x.groups > 1} == {
        (3, 3),
        (5, 5),
    }


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small"])
def test_small_input_makes_total_stride_8(name):
    m = mobilenets.create_model(name, small_input=True, resolution=32, num_classes=10).eval()
    with torch.no_grad():
        feats = m.forward_features(torch.zeros(1, 3, 32, 32))
    assert feats.shape[-1] == 4  # 32 / 8
    big = mobilenets.create_model(name, num_classes=10).eval()
    with torch.no_grad():
        assert big.forward_features(torch.zeros(1, 3, 224, 224)).shape[-1] == 7  # 224 / 32


def test_v3_options_that_do_not_apply_are_refused():
    with pytest.raises(UsageError, match="activation does not apply to mobilenet_v3_small"):
        ModelConfig("mobilenet_v3_small", activation="relu")
    with pytest.raises(UsageError, match="minimal does not apply to mobilenet_v2"):
        ModelConfig("mobilenet_v2", minimal=True)
    assert ModelConfig.from_dict({"name": "mobilenet_v2", "schema_version": 2}).minimal is False


CONFIGS = [
    ("mobilenet_v3_large", 1.0, 224, {}),
    ("mobilenet_v3_large", 0.75, 224, {}),
    ("mobilenet_v3_large", 1.0, 224, {"minimal": True}),
    ("mobilenet_v3_large", 1.0, 160, {"padding": "same"}),
    ("mobilenet_v3_small", 1.0, 224, {}),
    ("mobilenet_v3_small", 0.75, 224, {}),
    ("mobilenet_v3_small", 1.0, 224, {"minimal": True}),
    ("mobilenet_v3_small", 0.75, 96, {"minimal": True}),
    ("mobilenet_v3_small", 1.0, 128, {"minimal": True}),
    ("mobilenet_v3_small", 1.25, 32, {"small_input": True, "in_chans": 1, "num_classes": 10}),
]


@pytest.mark.parametrize("name, width, res, options", CONFIGS)
def test_profile_macs_equal_torch_flop_counter(name, width, res, options):
    m = mobilenets.create_model(name, width_mult=width, resolution=res, **options).eval()
    x = torch.zeros(1, m.config.in_chans, res, res)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        m(x)
    # flop_counter counts 2 FLOPs per multiply-add of convs and matmuls; so does our MAC count
    # (squeeze-excite's two 1x1 convs included; its broadcast multiply and hard-swish are not)
    assert mobilenets.profile(m).macs == counter.get_total_flops() // 2


KERAS = json.loads((Path(__file__).parent / "data" / "keras_mobilenet_v3.json").read_text())


@pytest.mark.parametrize(
    "row", KERAS["models"], ids=lambda r: f"{r['model']}-{r['alpha']}-min{int(r['minimalistic'])}"
)
def test_v3_layers_equal_keras(row):
    """Keras's MobileNetV3Large/Small (from scripts/keras_v3_shapes.py, TensorFlow in an
    optional environment): every conv's shape in order and the trainable parameter count."""
    m = mobilenets.create_model(row["model"], width_mult=row["alpha"], minimal=row["minimalistic"])
    shapes = [
        list(mod.weight.shape) + ([1, 1] if isinstance(mod, nn.Linear) else [])
        for mod in m.modules()
        if isinstance(mod, (nn.Conv2d, nn.Linear))
    ]
    assert shapes == row["conv_shapes"]
    assert sum(p.numel() for p in m.parameters()) == row["trainable_params"]
