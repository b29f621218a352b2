"""Pretrained weights from timm, torchvision and mobilenets: same logits, fine-tuning, refusals."""

from __future__ import annotations

import pickle
import re
import warnings

import pytest
import torch
from torch import nn

import mobilenets
from mobilenets.checkpoint import save_checkpoint
from mobilenets.errors import MobilenetsError
from mobilenets.weights import adapt_input_conv, load_pretrained

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

# Every plain-width timm MobileNet V1/V2 (not the 'h' head-conv or 'd' depth variants).
PLAIN = re.compile(r"mobilenetv([12])_(\d{3})")
TIMM_VARIANTS = [
    n
    for n in timm.list_models("mobilenetv1_*") + timm.list_models("mobilenetv2_*")
    if PLAIN.fullmatch(n)
]


def timm_args(name: str) -> tuple[str, float]:
    """``mobilenetv2_035`` -> (``mobilenet_v2``, 0.35)."""
    version, width = PLAIN.fullmatch(name).groups()
    return f"mobilenet_v{version}", int(width) / 100


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine weights, so a swapped buffer cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def save(model: nn.Module, path) -> str:
    torch.save(model.state_dict(), path)
    return str(path)


def max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a.eval()(x) - b.eval()(x)).abs().max().item()


X = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant", TIMM_VARIANTS)
def test_timm_logits(variant, tmp_path):
    src = randomise(timm.create_model(variant))
    name, width = timm_args(variant)
    model = mobilenets.create_model(
        name, width_mult=width, pretrained=save(src, tmp_path / "w.pth")
    )
    assert max_diff(model, src, X) <= 1e-4


@pytest.mark.parametrize("width", [0.5, 1.0])
def test_torchvision_mobilenet_v2_logits(width, tmp_path):
    src = randomise(torchvision.models.mobilenet_v2(width_mult=width))
    path = save(src, tmp_path / "w.pth")
    model = mobilenets.create_model("mobilenet_v2", width_mult=width, pretrained=path)
    assert max_diff(model, src, X) <= 1e-4


def test_safetensors_and_containers(tmp_path):
    from safetensors.torch import save_file

    src = randomise(timm.create_model("mobilenetv2_050"))
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    model = mobilenets.create_model("mobilenet_v2", width_mult=0.5)
    report = load_pretrained(model, tmp_path / "w.safetensors")
    assert report == {"layout": "timm_mobilenetv2", "reinitialised": [], "adapted": []}
    assert max_diff(model, src, X) <= 1e-4
    # timm training checkpoint: the EMA weights win; DDP's module. prefix is stripped.
    other = randomise(timm.create_model("mobilenetv2_050"), seed=5)
    ddp = {f"module.{k}": v for k, v in src.state_dict().items()}
    torch.save({"state_dict": other.state_dict(), "state_dict_ema": ddp}, tmp_path / "c.pth")
    model = mobilenets.create_model(
        "mobilenet_v2", width_mult=0.5, pretrained=str(tmp_path / "c.pth")
    )
    assert max_diff(model, src, X) <= 1e-4


@pytest.mark.parametrize("source", ["timm", "torchvision"])
def test_fine_tuning_grayscale_10_classes(source, tmp_path):
    if source == "timm":
        src, name = randomise(timm.create_model("mobilenetv1_100")), "mobilenet_v1"
        src_stem = src.conv_stem.weight
    else:
        src, name = randomise(torchvision.models.mobilenet_v2()), "mobilenet_v2"
        src_stem = src.features[0][0].weight
    path = save(src, tmp_path / "w.pth")
    with pytest.warns(UserWarning) as record:
        model = mobilenets.create_model(name, num_classes=10, in_chans=1, pretrained=path).eval()
    messages = " ".join(str(w.message) for w in record)
    assert "classifier re-initialised" in messages and "in_chans=1" in messages
    assert model(torch.randn(2, 1, 96, 96)).shape == (2, 10)
    torch.testing.assert_close(
        model.stem.conv.weight, src_stem.sum(1, keepdim=True), rtol=0, atol=0
    )
    # Every other tensor is the source's: compare with the 3-channel, 1000-class load, whose
    # logits match the source (tests above).
    ref = mobilenets.create_model(name, pretrained=path).state_dict()
    for key, value in model.state_dict().items():
        if key not in ("stem.conv.weight", "classifier.weight", "classifier.bias"):
            assert torch.equal(value, ref[key]), key
    last = src.blocks[4][1].conv_pw.weight if source == "timm" else src.features[18][0].weight
    ours = model.blocks[-1].pw.conv.weight if source == "timm" else model.head.conv.weight
    assert torch.equal(ours, last)


def test_report_and_adapt_rule(tmp_path):
    path = save(timm.create_model("mobilenetv1_100"), tmp_path / "w.pth")
    model = mobilenets.create_model("mobilenet_v1", num_classes=10, in_chans=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = load_pretrained(model, path)
    assert report == {
        "layout": "timm_mobilenetv1",
        "reinitialised": ["classifier.weight", "classifier.bias"],
        "adapted": ["stem.conv.weight"],
    }
    w = torch.randn(8, 3, 3, 3)
    five = adapt_input_conv(w, 5)  # R G B R G, scaled by 3/5 like timm's adapt_input_conv
    torch.testing.assert_close(five, torch.cat([w, w[:, :2]], 1) * 0.6)


def test_width_mismatch_names_tensor_and_shapes(tmp_path):
    path = save(timm.create_model("mobilenetv2_100"), tmp_path / "w.pth")
    with pytest.raises(MobilenetsError) as e:
        mobilenets.create_model("mobilenet_v2", width_mult=0.5, pretrained=path)
    msg = str(e.value)
    assert "\n" not in msg
    assert "'stem.conv.weight'" in msg and "(32, 3, 3, 3)" in msg and "(16, 3, 3, 3)" in msg


def test_missing_and_unexpected_keys(tmp_path):
    sd = torchvision.models.mobilenet_v2().state_dict()
    del sd["features.3.conv.1.0.weight"]
    torch.save(sd, tmp_path / "a.pth")
    with pytest.raises(MobilenetsError, match=r"missing key 'blocks\.2\.dw\.conv\.weight'"):
        mobilenets.create_model("mobilenet_v2", pretrained=str(tmp_path / "a.pth"))
    sd = timm.create_model("mobilenetv1_100").state_dict()
    sd["blocks.1.0.se.conv_reduce.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "b.pth")
    with pytest.raises(MobilenetsError, match=r"unexpected key 'blocks\.1\.0\.se\.conv_reduce"):
        mobilenets.create_model("mobilenet_v1", pretrained=str(tmp_path / "b.pth"))


@pytest.mark.parametrize(
    "variant, name, words",
    [
        ("mobilenetv1_100h", "mobilenet_v1", "head conv"),
        ("mobilenetv2_110d", "mobilenet_v2", "depth"),
    ],
)
def test_unsupported_timm_variants(variant, name, words, tmp_path):
    path = save(timm.create_model(variant), tmp_path / "w.pth")
    with pytest.raises(MobilenetsError, match=f"timm_mobilenetv.* layout .*{words}"):
        mobilenets.create_model(name, pretrained=path)


def test_options_that_change_logits_are_refused(tmp_path):
    path = save(timm.create_model("mobilenetv1_100"), tmp_path / "w.pth")
    with pytest.raises(MobilenetsError, match=r"activation='relu6'.*create_model\('mobilenet_v1'"):
        mobilenets.create_model("mobilenet_v1", activation="relu", pretrained=path)
    with pytest.raises(MobilenetsError, match="for mobilenet_v1, but the model is mobilenet_v2"):
        mobilenets.create_model("mobilenet_v2", pretrained=path)
    with pytest.warns(UserWarning, match="small_input"):
        mobilenets.create_model("mobilenet_v1", small_input=True, pretrained=path)


def test_mobilenets_checkpoint_folder(tmp_path):
    src = randomise(mobilenets.create_model("mobilenet_v2", width_mult=0.75, activation="relu"))
    folder = save_checkpoint(tmp_path / "ckpt", src)
    model = mobilenets.create_model(
        "mobilenet_v2", width_mult=0.75, activation="relu", pretrained=str(folder)
    )
    assert max_diff(model, src, X) <= 1e-4
    with pytest.raises(MobilenetsError, match="activation='relu'"):
        mobilenets.create_model("mobilenet_v2", width_mult=0.75, pretrained=str(folder))


def test_pickled_object_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    pickle.loads(pickle.dumps(Payload())).close()  # the payload is live when unpickled
    assert marker.exists()
    marker.unlink()
    torch.save({"state_dict": {"x": torch.zeros(1)}, "args": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(MobilenetsError, match="pickled"):
        mobilenets.create_model("mobilenet_v1", pretrained=str(tmp_path / "evil.pth"))
    assert not marker.exists()


def test_resnet50_round_trip(tmp_path):
    src = randomise(torchvision.models.resnet50())
    torch.save({"model": src.state_dict()}, tmp_path / "r.pth")
    model = mobilenets.create_model("resnet50", pretrained=str(tmp_path / "r.pth"))
    assert max_diff(model, src, torch.randn(1, 3, 64, 64)) <= 1e-4
