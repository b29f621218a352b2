"""The networks are the papers' networks: structure, strides, widths and options."""

import json

import pytest
import torch
from torch import nn

from mobilenets import ModelConfig, UsageError, create_model
from mobilenets.models import ConvBNAct, InvertedResidual


def _convs(model):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_v1_has_28_layers_each_followed_by_bn_and_relu6():
    # V1 paper Sec. 3: 28 layers counting depthwise and pointwise separately, BN+ReLU after each.
    m = create_model("mobilenet_v1")
    assert len(_convs(m)) == 28
    cbas = [mod for mod in m.modules() if isinstance(mod, ConvBNAct)]
    assert len(cbas) == 27
    assert all(isinstance(c.bn, nn.BatchNorm2d) and isinstance(c.act, nn.ReLU6) for c in cbas)
    relu = create_model("mobilenet_v1", activation="relu")
    assert all(type(c.act) is nn.ReLU for c in relu.modules() if isinstance(c, ConvBNAct))


def test_v1_last_depthwise_stride_is_one_erratum():
    m = create_model("mobilenet_v1")
    strides = [b.dw.conv.stride[0] for b in m.blocks]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert m.forward_features(torch.zeros(1, 3, 224, 224)).shape == (1, 1024, 7, 7)


def test_v2_blocks_follow_table_2():
    m = create_model("mobilenet_v2")
    blocks = list(m.blocks)
    assert len(blocks) == 17  # Table 2 sums to 17 bottlenecks
    assert blocks[0].expand is None  # t = 1: no expand conv
    assert all(b.expand is not None for b in blocks[1:])
    assert all(isinstance(b.project.act, nn.Identity) for b in blocks)  # linear bottleneck
    assert all(isinstance(b.dw.act, nn.ReLU6) for b in blocks)
    # Residuals only when stride 1 and channels equal: 1+2+3+2+2 repeats inside stages.
    assert sum(b.bottleneck_shortcut for b in blocks) == 10
    outs = [16] + [24] * 2 + [32] * 3 + [64] * 4 + [96] * 3 + [160] * 3 + [320]
    assert [b.project.conv.out_channels for b in blocks] == outs
    # Table 2's s applies to the first block of each stage: stages 2, 3, 4 and 6 downsample.
    strides = [1] + [2, 1] + [2, 1, 1] + [2, 1, 1, 1] + [1, 1, 1] + [2, 1, 1] + [1]
    assert [b.dw.conv.stride[0] for b in blocks] == strides
    assert m.head.conv.out_channels == 1280
    assert blocks[1].expand.conv.out_channels == 96  # t * 16


def test_v2_rounds_to_8_and_keeps_1280_head_below_alpha_1():
    m = create_model("mobilenet_v2", width_mult=0.35)
    chans = [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert all(c % 8 == 0 for c in chans)
    assert m.head.conv.out_channels == 1280
    assert create_model("mobilenet_v2", width_mult=1.4).head.conv.out_channels == 1792


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
@pytest.mark.parametrize("size", [28, 32])
def test_small_input_ends_on_4x4(name, size):
    m = create_model(name, small_input=True, in_chans=1, num_classes=10, resolution=size).eval()
    feats = m.forward_features(torch.zeros(2, 1, size, size))
    assert feats.shape[-2:] == (4, 4)
    assert m(torch.zeros(2, 1, size, size)).shape == (2, 10)
    full = create_model(name)
    assert len(list(m.modules())) == len(list(full.modules()))  # every block kept


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "resnet50", "vgg16"])
def test_any_resolution_from_32(name):
    m = create_model(name, num_classes=7, in_chans=2).eval()
    with torch.no_grad():
        for s in (32, 45):
            assert m(torch.zeros(1, 2, s, s)).shape == (1, 7)


def test_small_input_accepts_16px():
    m = create_model("mobilenet_v2", small_input=True, resolution=16).eval()
    assert m(torch.zeros(1, 3, 16, 16)).shape == (1, 1000)


def test_v2_ablations_change_the_network():
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    base = create_model("mobilenet_v2")  # train mode: BN uses batch statistics
    relu = create_model("mobilenet_v2", bottleneck_activation="relu6")
    assert all(isinstance(b.project.act, nn.ReLU6) for b in relu.blocks)
    none = create_model("mobilenet_v2", shortcut="none")
    assert not any(b.bottleneck_shortcut or b.expansion_shortcut for b in none.blocks)
    none.load_state_dict(base.state_dict())
    with torch.no_grad():
        assert not torch.allclose(none(x), base(x))
    exp = create_model("mobilenet_v2", shortcut="expansion")
    flags = [b.expansion_shortcut for b in exp.blocks]
    assert flags == [b.dw.conv.stride[0] == 1 for b in exp.blocks] and not any(
        b.bottleneck_shortcut for b in exp.blocks
    )


def test_v1_full_conv_ablation():
    m = create_model("mobilenet_v1", conv_type="full")
    assert not any(isinstance(c, nn.Conv2d) and c.groups > 1 for c in m.modules())


def test_v2_standard_conv_and_linear_expansion_ablations():
    base = create_model("mobilenet_v2", 0.35, 32)
    full = create_model("mobilenet_v2", 0.35, 32, conv_type="full")
    linear = create_model("mobilenet_v2", 0.35, 32, expansion_activation="linear")
    # the same submodules (state-dict keys) as the paper's block; only the 3x3's groups differ
    assert list(full.state_dict()) == list(base.state_dict()) == list(linear.state_dict())
    for b, f in zip(base.blocks, full.blocks, strict=True):
        hid = b.dw.conv.in_channels
        assert b.dw.conv.groups == hid and f.dw.conv.groups == 1
        assert f.dw.conv.weight.shape == (hid, hid, 3, 3)
    # linear: only the expansion's activation is dropped (the 3x3 keeps ReLU6)
    assert all(isinstance(b.expand.act, nn.Identity) for b in linear.blocks if b.expand)
    assert all(isinstance(b.dw.act, nn.ReLU6) for b in linear.blocks)
    assert all(isinstance(b.expand.act, nn.ReLU6) for b in base.blocks if b.expand)
    relu = create_model("mobilenet_v2", activation="relu")  # nonlinear: the model's activation
    assert all(isinstance(b.expand.act, nn.ReLU) for b in relu.blocks if b.expand)
    linear.load_state_dict(base.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(linear.eval()(x), base.eval()(x))


def test_config_is_versioned_json_and_round_trips():
    m = create_model(
        "mobilenet_v2", width_mult=0.5, resolution=160, num_classes=10, in_chans=1, shortcut="none"
    )
    d = json.loads(m.config.to_json())
    assert d["schema_version"] == 4 and d["name"] == "mobilenet_v2" and d["bn_eps"] == 1e-5
    assert d["padding"] == "symmetric"
    cfg = ModelConfig.from_json(m.config.to_json())
    assert cfg == m.config and cfg.rho == 160 / 224
    with pytest.raises(UsageError, match="unknown model config field"):
        ModelConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(UsageError, match="newer"):
        ModelConfig.from_dict({**d, "schema_version": 99})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "mobilenet_v3"}, "unknown model"),
        ({"name": "mobilenet_v1", "width_mult": 0}, "width_mult"),
        ({"name": "mobilenet_v1", "width_mult": -1.0}, "width_mult"),
        ({"name": "mobilenet_v1", "resolution": 31}, "resolution must be >= 32"),
        ({"name": "mobilenet_v1", "resolution": 15, "small_input": True}, ">= 16"),
        ({"name": "mobilenet_v1", "resolution": 224.0}, "integer"),
        ({"name": "mobilenet_v1", "in_chans": 0}, "in_chans"),
        ({"name": "mobilenet_v1", "shortcut": "none"}, "does not apply"),
        ({"name": "mobilenet_v3_small", "conv_type": "full"}, "does not apply"),
        ({"name": "mobilenet_v1", "expansion_activation": "linear"}, "does not apply"),
        ({"name": "mobilenet_v2", "expansion_activation": "relu"}, "expansion_activation must"),
        ({"name": "mobilenet_v2", "activation": "gelu"}, "activation"),
        ({"name": "resnet50", "width_mult": 0.5}, "no width multiplier"),
        ({"name": "mobilenet_v2", "colour": 1}, "unknown model option"),
    ],
)
def test_bad_arguments_raise_one_line_usage_errors(kwargs, match):
    with pytest.raises(UsageError, match=match) as e:
        create_model(**kwargs)
    assert "\n" not in str(e.value)


def test_inverted_residual_adds_shortcut_only_when_shapes_match():
    m = create_model("mobilenet_v2").eval()
    block = m.blocks[2]  # 24 -> 24, stride 1
    assert isinstance(block, InvertedResidual) and block.bottleneck_shortcut
    x = torch.randn(1, 24, 16, 16)
    with torch.no_grad():
        inner = block.project(block.dw(block.expand(x)))
        assert torch.allclose(block(x), inner + x)
