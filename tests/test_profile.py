"""The cost model reproduces the papers' tables and agrees with torch's own FLOP counter.

Golden numbers: V1 paper (Howard et al. 2017) Tables 2, 4, 6, 7; TF-slim's MobileNetV2
checkpoint table; torchvision's weight cards for ResNet-50 and VGG16.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mobilenets import create_model, profile


@pytest.mark.parametrize(
    "alpha, res, macs_m, params_m",
    [
        (1.0, 224, 569, 4.2),
        (0.75, 224, 325, 2.6),
        (0.5, 224, 149, 1.3),
        (0.25, 224, 41, 0.5),
        (1.0, 192, 418, 4.2),
        (1.0, 160, 290, 4.2),
        (1.0, 128, 186, 4.2),
    ],
)
def test_v1_matches_paper_tables_6_and_7(alpha, res, macs_m, params_m):
    rep = profile(create_model("mobilenet_v1", width_mult=alpha, resolution=res))
    assert abs(rep.macs / 1e6 - macs_m) <= 1.0
    assert abs(rep.params / 1e6 - params_m) <= 0.05


def test_v1_layer_kind_shares_match_table_2():
    rep = profile(create_model("mobilenet_v1"))
    # (MACs %, params %); the paper prints 1.19 for the first conv's MACs, a transposition of 1.91.
    table2 = {
        "pointwise": (94.86, 74.59),
        "depthwise": (3.06, 1.06),
        "linear": (0.18, 24.33),
        "conv": (1.91, 0.02),
    }
    for kind, (macs, params) in table2.items():
        assert abs(100 * rep.by_kind[kind]["macs_share"] - macs) <= 0.1, kind
        assert abs(100 * rep.by_kind[kind]["params_share"] - params) <= 0.1, kind


def test_v1_exact_total_and_memory():
    rep = profile(create_model("mobilenet_v1"))
    assert rep.macs == 567_716_352 + 1_024_000  # TF-slim docstring + the FC layer
    assert rep.largest_tensor_elems == 802_816
    assert rep.peak_activation_elems == 1_204_224


def test_v2_memory():
    rep = profile(create_model("mobilenet_v2"))
    assert rep.largest_tensor_elems == 1_204_224
    assert rep.peak_activation_elems == 1_505_280


# TF-slim MobileNetV2 checkpoint table: (alpha, resolution) -> truncated M MACs; alpha -> M params.
# fmt: off
V2_SLIM = {
    (1.4, 224): 582, (1.3, 224): 509,
    (1.0, 224): 300, (1.0, 192): 221, (1.0, 160): 154, (1.0, 128): 99, (1.0, 96): 56,
    (0.75, 224): 209, (0.75, 192): 153, (0.75, 160): 107, (0.75, 128): 69, (0.75, 96): 39,
    (0.5, 224): 97, (0.5, 192): 71, (0.5, 160): 50, (0.5, 128): 32, (0.5, 96): 18,
    (0.35, 224): 59, (0.35, 192): 43, (0.35, 160): 30, (0.35, 128): 20, (0.35, 96): 11,
}
# fmt: on
V2_SLIM_PARAMS = {1.4: 6.06, 1.3: 5.34, 1.0: 3.47, 0.75: 2.61, 0.5: 1.95, 0.35: 1.66}


@pytest.mark.parametrize("alpha", sorted(V2_SLIM_PARAMS))
def test_v2_matches_tf_slim_table(alpha):
    model = create_model("mobilenet_v2", width_mult=alpha)
    for (a, res), macs_m in V2_SLIM.items():
        if a == alpha:
            rep = profile(model, resolution=res)
            assert int(rep.macs / 1e6) == macs_m, (alpha, res)
    assert abs(rep.params / 1e6 / V2_SLIM_PARAMS[alpha] - 1) <= 0.02


def test_v1_full_conv_matches_table_4():
    rep = profile(create_model("mobilenet_v1", conv_type="full"))
    assert abs(rep.macs / 4866e6 - 1) <= 0.01
    assert abs(rep.params / 29.3e6 - 1) <= 0.01


@pytest.mark.parametrize(
    "name, gmacs, params", [("resnet50", 4.09, 25_557_032), ("vgg16", 15.47, 138_357_544)]
)
def test_baselines_match_torchvision_cards(name, gmacs, params):
    rep = profile(create_model(name))
    assert round(rep.macs / 1e9, 2) == gmacs
    assert rep.params == params


@pytest.mark.parametrize(
    "name, kwargs, res",
    [
        ("mobilenet_v1", {}, 96),
        ("mobilenet_v1", {"width_mult": 0.5, "conv_type": "full"}, 64),
        ("mobilenet_v2", {"width_mult": 0.75}, 96),
        ("mobilenet_v2", {"small_input": True, "in_chans": 1, "num_classes": 10}, 28),
        ("mobilenet_v2", {"shortcut": "expansion"}, 64),
        ("mobilenet_v2", {"width_mult": 0.35, "conv_type": "full"}, 64),
        ("mobilenet_v2", {"width_mult": 0.35, "expansion_activation": "linear"}, 64),
        ("resnet50", {}, 64),
    ],
)
def test_macs_agree_with_torch_flop_counter(name, kwargs, res):
    model = create_model(name, resolution=res, **kwargs).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, model.config.in_chans, res, res))
    assert profile(model).macs == counter.get_total_flops() // 2


def test_macs_scale_with_alpha_squared_and_rho_squared():
    base = profile(create_model("mobilenet_v1")).macs
    half_width = profile(create_model("mobilenet_v1", width_mult=0.5)).macs
    half_res = profile(create_model("mobilenet_v1"), resolution=112).macs
    assert 0.25 <= half_width / base <= 0.28  # ~alpha^2, depthwise and FC scale slower
    # ~rho^2; the last maps round up (112/32 = 3.5 -> 4) and the FC does not scale
    assert 0.25 <= half_res / base <= 0.27


def test_ops_carry_buffer_lifetimes_for_a_memory_planner():
    rep = profile(create_model("mobilenet_v2", width_mult=0.35), resolution=96, dtype=torch.int8)
    assert rep.bytes_per_elem == 1 and rep.peak_activation_bytes == rep.peak_activation_elems
    for i, op in enumerate(rep.ops):
        out = rep.buffers[op.output]
        assert out.first <= i <= out.last
        for b in op.inputs:
            assert rep.buffers[b].first < i <= rep.buffers[b].last
    # A residual block's input stays alive until its add, so it is counted while the block runs.
    adds = [i for i, op in enumerate(rep.ops) if op.kind == "add"]
    assert len(adds) == 10
    held = rep.buffers[rep.ops[adds[0]].inputs[1]]
    assert held.last == adds[0] and held.first < adds[0] - 3


def test_report_fields_and_default_resolution():
    rep = profile(create_model("mobilenet_v2", resolution=160))
    d = rep.to_dict()
    assert d["resolution"] == 160
    for key in (
        "params",
        "macs",
        "layers",
        "largest_tensor_elems",
        "peak_activation_elems",
        "by_kind",
    ):
        assert key in d
    row = next(r for r in d["layers"] if r["name"] == "blocks.1.dw.conv")
    assert (
        row["kind"] == "depthwise"
        and row["in_shape"] == [96, 80, 80]
        and row["out_shape"] == [96, 40, 40]
    )
    assert (
        row["macs"] == 96 * 40 * 40 * 9
        and row["params"] == 96 * 9
        and row["out_elems"] == 96 * 40 * 40
    )
