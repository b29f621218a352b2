"""Integer-only int8: TFLite's requantization arithmetic, quantize_int8 and the NumPy reference,
checked bit for bit against the TFLite Micro interpreter and LiteRT's reference kernels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from support import fit_tiny

from mobilenets import ModelConfig, create_model, fold_bn, profile, quantize_int8, run_int8
from mobilenets.errors import UsageError
from mobilenets.micro import arith
from mobilenets.micro.export import dequantize, quantize_input
from mobilenets.micro.graph import OP_KINDS
from mobilenets.micro.lower import padding_kind
from mobilenets.micro.quantizer import activation_range, tensor_params
from mobilenets.micro.runtimes import have_litert, have_tflm, litert_outputs, tflm_outputs
from mobilenets.micro.tflite import write_tflite
from mobilenets.models import pad_same
from mobilenets.testing import randomize_bn

# ---------------------------------------------------------------- arithmetic
# Scalar transliterations of the C code (tensorflow/lite/kernels/internal/common.h, gemmlowp
# fixedpoint.h), written as the C reads, against which the vectorised versions are checked.


def c_srdhm(a: int, b: int) -> int:
    if a == b == -(2**31):
        return 2**31 - 1
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return _trunc_div(ab + nudge, 1 << 31)  # C integer division truncates toward zero


def _trunc_div(n: int, d: int) -> int:
    q = abs(n) // d
    return q if n >= 0 else -q


def c_rdbp(x: int, exponent: int) -> int:
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def c_mbqm(x: int, m0: int, shift: int) -> int:
    left, right = max(shift, 0), max(-shift, 0)
    return c_rdbp(c_srdhm(x * (1 << left), m0), right)


def test_requantization_matches_the_c_code_bit_for_bit():
    rng = np.random.default_rng(0)
    xs = np.concatenate(
        [rng.integers(-(2**31), 2**31, 20000), rng.integers(-5000, 5000, 20000), [0, -1, 1]]
    )
    m0s = rng.integers(2**30, 2**31, xs.size)
    shifts = rng.integers(-20, 1, xs.size)
    # exact halves: x * m0 / 2^31 = k + 1/2 and remainders of exactly half the divisor
    xs[:8] = [-(2**30), 2**30, -3 * 2**29, 3 * 2**29, -2, 2, -6, 6]
    m0s[:8] = 2**30
    got = arith.multiply_by_quantized_multiplier(xs, m0s, shifts)
    want = [c_mbqm(int(x), int(m), int(s)) for x, m, s in zip(xs, m0s, shifts, strict=True)]
    assert got.tolist() == want
    for e in range(0, 12):  # RoundingDivideByPOT on every residue of a few periods
        x = np.arange(-(4 << e) - 3, (4 << e) + 3)
        assert arith.rounding_divide_by_pot(x, e).tolist() == [c_rdbp(int(v), e) for v in x]


def test_quantize_multiplier_is_tflites():
    # QuantizeMultiplier: frexp, then round half away from zero to Q31, 2^31 renormalised.
    for real in (0.5, 0.75, 1.0, 1e-3, 0.3333333333, 2.0**-40, 1 - 2.0**-33):
        m0, shift = arith.quantize_multiplier(real)
        q, e = math.frexp(real)
        want = round(q * 2**31)
        if want == 2**31:
            want, e = want // 2, e + 1
        if e < -31:
            want, e = 0, 0
        assert (m0, shift) == (want, e)
        if m0:
            assert 2**30 <= m0 < 2**31
            assert abs(m0 * 2.0 ** (shift - 31) - real) <= 2.0 ** (shift - 32)


# ---------------------------------------------------------------- models and data

FMNIST = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = [0.286], [0.353]
needs_tflm = pytest.mark.skipif(not have_tflm(), reason="tflite-micro is not installed")
needs_litert = pytest.mark.skipif(not have_litert(), reason="ai-edge-litert is not installed")


def fmnist_or_synthetic() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 (train images, labels, test images, labels): real Fashion-MNIST when installed."""
    if (FMNIST / "train-images-idx3-ubyte.gz").is_file():
        from mobilenets.data import load_fashion_mnist

        ds = load_fashion_mnist(FMNIST)
        tr, te = ds.splits["train"], ds.splits["test"]
        return tr.images[:5000], tr.labels[:5000], te.images[:200], te.labels[:200]
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (5200,), generator=g)
    x = (torch.rand(5200, 1, 28, 28, generator=g) * 80).to(torch.uint8)
    for k in range(10):
        x[y == k, :, (k // 4) * 7 : (k // 4) * 7 + 7, (k % 4) * 7 : (k % 4) * 7 + 7] += 150
    return x[:5000], y[:5000], x[5000:], y[5000:]


@pytest.fixture(scope="session")
def trained_v1():
    """V1 alpha 0.25, small input, 28 px, trained 50 steps on Fashion-MNIST (a few seconds)."""
    from mobilenets.transforms import to_model_input

    torch.manual_seed(0)
    xtr, ytr, xte, yte = fmnist_or_synthetic()
    model = create_model(
        "mobilenet_v1", 0.25, 28, num_classes=10, in_chans=1, small_input=True, drop_rate=0.0
    )
    fit_tiny(model, xtr, ytr, 50, MEAN, STD)
    calib = to_model_input(xtr[:256], 28, MEAN, STD)
    test = to_model_input(xte, 28, MEAN, STD)
    return model, calib, test, yte


def peer_outputs(tmp_path: Path, qmodel, xq: np.ndarray) -> dict[str, np.ndarray]:
    path = write_tflite(qmodel, tmp_path / "m.tflite")
    return {"tflm": tflm_outputs(path, xq), "litert-ref": litert_outputs(path, xq)}


# ---------------------------------------------------------------- bit-exactness


@needs_tflm
@needs_litert
def test_reference_is_bit_exact_with_tflite_micro_and_litert_on_real_images(trained_v1, tmp_path):
    model, calib, test, _ = trained_v1
    qmodel = quantize_int8(model, calib)
    xq = quantize_input(test[:100], qmodel)
    ours = run_int8(qmodel, xq)
    assert ours.dtype == np.int8 and ours.shape == (100, 10)
    assert len(np.unique(ours)) > 20  # the logits are not saturated or constant
    for name, theirs in peer_outputs(tmp_path, qmodel, xq).items():
        assert np.array_equal(ours, theirs), (
            f"{name}: {np.abs(ours - theirs.astype(int)).max()} LSB"
        )


@needs_tflm
@needs_litert
@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_reference_is_bit_exact_on_random_v2(padding, tmp_path):
    # 32 px: every stride-2 conv sees an even size, where symmetric padding is not SAME
    model = randomize_bn(
        create_model("mobilenet_v2", 0.35, 32, num_classes=100, padding=padding), linear_std=0.1
    )
    g = torch.Generator().manual_seed(1)
    qmodel = quantize_int8(model, torch.randn(32, 3, 32, 32, generator=g))
    counts = qmodel.op_counts()
    assert counts["add"] == 10 and counts.get("pad", 0) == (5 if padding == "symmetric" else 0)
    xq = np.random.default_rng(0).integers(-128, 128, (8, 32, 32, 3)).astype(np.int8)
    ours = run_int8(qmodel, xq)
    for name, theirs in peer_outputs(tmp_path, qmodel, xq).items():
        assert np.array_equal(ours, theirs), (
            f"{name}: {np.abs(ours - theirs.astype(int)).max()} LSB"
        )


@needs_tflm
@needs_litert
@pytest.mark.parametrize("option", [("conv_type", "full"), ("expansion_activation", "linear")])
def test_reference_is_bit_exact_on_v2_ablations(option, tmp_path):
    """V2 with a standard 3x3 in the block (CONV_2D over the expanded channels instead of
    DEPTHWISE_CONV_2D) and V2 without the expansion's ReLU6 (no fused activation there): our
    reference equals TFLite Micro and LiteRT to the LSB."""
    torch.manual_seed(1)
    model = create_model("mobilenet_v2", 0.35, 32, num_classes=100, **dict([option]))
    model = randomize_bn(model, linear_std=0.1)
    qmodel = quantize_int8(
        model, torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    )
    depthwise = qmodel.op_counts().get("depthwise_conv2d", 0)
    assert depthwise == (0 if option[0] == "conv_type" else 17)
    xq = np.random.default_rng(0).integers(-128, 128, (8, 32, 32, 3)).astype(np.int8)
    ours = run_int8(qmodel, xq)
    assert len(np.unique(ours)) > 50
    for name, theirs in peer_outputs(tmp_path, qmodel, xq).items():
        assert np.array_equal(ours, theirs), (
            f"{name}: {np.abs(ours - theirs.astype(int)).max()} LSB"
        )


def test_int8_follows_fp32(trained_v1):
    model, calib, test, _ = trained_v1
    qmodel = quantize_int8(model, calib)
    logits = dequantize(run_int8(qmodel, quantize_input(test, qmodel)), qmodel)
    with torch.no_grad():
        ref = model(test).numpy()
    agree = (logits.argmax(1) == ref.argmax(1)).mean()
    # 50 training steps leave many near-ties between classes; the trained checkpoints of
    # benchmarks/bench_tflite.py agree on >= 99% of the test set.
    assert agree >= 0.85, agree
    assert np.abs(logits - ref).max() <= 0.15 * np.abs(ref).max()


# ---------------------------------------------------------------- the quantization spec


def test_quantized_graph_follows_the_litert_int8_spec(trained_v1):
    model, calib, _, _ = trained_v1
    q = quantize_int8(model, calib)
    assert not q.is_float and set(q.op_counts()) <= set(OP_KINDS)
    for t in q.tensors:  # activations: per tensor, asymmetric, float32 scales
        assert t.scale == float(np.float32(t.scale)) and t.scale > 0
        assert -128 <= t.zero_point <= 127
    folded = fold_bn(model)
    convs = [m for m in folded.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    weighted = [op for op in q.ops if op.weights is not None]
    assert len(weighted) == len(convs)  # BN folded: no op of its own; classifier: a conv
    for op, m in zip(weighted, convs, strict=True):
        assert op.weights.dtype == np.int8 and op.weights.min() >= -127
        assert op.weight_scales.dtype == np.float32
        axis = 3 if op.kind == "depthwise_conv2d" else 0
        assert op.weight_scales.shape == (op.weights.shape[axis],)  # per output channel
        amax = np.abs(np.moveaxis(op.weights, axis, 0).reshape(len(op.weight_scales), -1))
        if op is weighted[-1]:  # the classifier: one scale for the tensor, as TFLite's FC
            assert amax.max() == 127 and len(set(op.weight_scales)) == 1
        else:  # symmetric: each channel's largest |w| maps to 127
            assert (amax.max(1) == 127).all()
        s_in = q.tensors[op.inputs[0]].scale
        bias = m.bias.detach().double().numpy()
        want = np.round(bias / (np.float64(s_in) * op.weight_scales.astype(np.float64)))
        assert op.bias.dtype == np.int32 and np.array_equal(op.bias, want)
        t_out = q.tensors[op.output]
        assert (op.act_min, op.act_max) == activation_range(
            op.activation, t_out.scale, t_out.zero_point
        )
        if op.activation == "relu6":  # the clamp is [q(0), q(6)]
            assert op.act_min == max(-128, t_out.zero_point)
            assert op.act_max == min(127, t_out.zero_point + round(6 / t_out.scale))
    for op in q.ops:
        if op.kind in ("avg_pool2d", "pad", "reshape", "max_pool2d"):
            a, b = q.tensors[op.inputs[0]], q.tensors[op.output]
            assert (a.scale, a.zero_point) == (b.scale, b.zero_point)
        if op.kind in ("conv2d", "depthwise_conv2d"):
            _, h, w, _ = q.tensors[op.inputs[0]].shape
            assert padding_kind(op.padding, (h, w), op.weights.shape[1:3], op.stride)


def test_tensor_params_contain_zero_and_the_range():
    for lo, hi in ((-1.0, 3.0), (0.0, 6.0), (0.5, 2.0), (-4.0, -1.0), (0.0, 0.0)):
        scale, zp = tensor_params(lo, hi)
        assert scale == float(np.float32(scale)) and -128 <= zp <= 127
        q0 = zp  # real 0 is exactly representable (zero padding, ReLU)
        assert scale * (q0 - zp) == 0.0
        assert (
            scale * (-128 - zp) <= min(lo, 0) + scale and scale * (127 - zp) >= max(hi, 0) - scale
        )


class _FlattenNet(torch.nn.Module):
    """conv -> ReLU -> flatten of a 3x3 map -> linear: PyTorch flattens C*H*W, TFLite NHWC."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ModelConfig(
            "mobilenet_v1", resolution=16, num_classes=5, in_chans=2, small_input=True
        )
        self.conv = torch.nn.Conv2d(2, 4, 4, 6, 0)  # 16 px -> 3x3
        self.act = torch.nn.ReLU()
        self.fc = torch.nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.act(self.conv(x)), 1))


def test_linear_weights_are_permuted_from_chw_to_nhwc():
    torch.manual_seed(0)
    model = _FlattenNet().eval()
    x = torch.randn(64, 2, 16, 16)
    q = quantize_int8(model, x)
    fc = q.ops[-1]  # the classifier conv writes the logits: no RESHAPE after it
    assert fc.kind == "conv2d" and fc.weights.shape == (5, 3, 3, 4)  # (O, H, W, C)
    got = dequantize(run_int8(q, quantize_input(x, q)), q)
    with torch.no_grad():
        ref = model(x).numpy()
    scale = q.output_tensor.scale
    assert np.abs(got - ref).max() <= 6 * scale  # a wrong order would be off by ~|logits|
    assert np.abs(ref).max() > 30 * scale


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_other_calibration_methods_clip_the_range(trained_v1, method):
    model, calib, test, _ = trained_v1
    base = quantize_int8(model, calib, method="minmax")
    other = quantize_int8(model, calib, method=method)
    assert sum(a.scale < b.scale for a, b in zip(other.tensors, base.tensors, strict=True)) > 5
    logits = run_int8(other, quantize_input(test[:50], other))
    assert logits.shape == (50, 10)


def test_calibration_data_must_match_the_model():
    model = create_model("mobilenet_v1", 0.25, 32, num_classes=3)
    with pytest.raises(UsageError, match=r"\(N, 3, H, W\).*got shape \(4, 1, 32, 32\)"):
        quantize_int8(model, torch.randn(4, 1, 32, 32))
    with pytest.raises(UsageError, match="28x28, the model takes 32x32"):
        quantize_int8(model, torch.randn(4, 3, 28, 28))
    with pytest.raises(UsageError, match="method must be one of"):
        quantize_int8(model, torch.randn(4, 3, 32, 32), method="kl")
    with pytest.raises(UsageError, match="run_int8 needs int8 inputs"):
        run_int8(quantize_int8(model, torch.randn(4, 3, 32, 32)), np.zeros((1, 32, 32, 3)))


# ---------------------------------------------------------------- padding="same"


@pytest.mark.parametrize("name,width", [("mobilenet_v1", 0.25), ("mobilenet_v2", 0.35)])
def test_same_padding_keeps_cost_and_folding(name, width):
    from torch import fx

    sym = create_model(name, width, 96)
    same = create_model(name, width, 96, padding="same")
    a, b = profile(sym), profile(same)
    assert (a.macs, a.params) == (b.macs, b.params)
    traced = fx.symbolic_trace(same)
    convs = [n for n in traced.graph.nodes if n.op == "call_module" and "conv" in str(n.target)]
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in same.modules())
    assert len(convs) == n_conv  # one conv module per conv, pad_same a separate call
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fold_bn(same).modules())
    same.load_state_dict(sym.state_dict())  # the same parameters
    randomize_bn(same, linear_std=0.1)
    x = torch.randn(2, 3, 97, 97)  # any size: SAME gives ceil(size / stride) at every stride
    with torch.no_grad():
        feats = same.forward_features(x)
        assert feats.shape[-1] == -(-97 // 32)
        assert (same(x) - fold_bn(same)(x)).abs().max() < 1e-4


def test_same_padding_is_tensorflows():
    # TF SAME on an even input pads only bottom/right before a stride-2 3x3 conv
    x = torch.arange(36.0).view(1, 1, 6, 6)
    padded = pad_same(x, 3, 2)
    assert padded.shape[-2:] == (7, 7)
    assert torch.equal(padded[..., :6, :6], x) and padded[..., 6, :].abs().sum() == 0


def test_padding_config_version_and_scope():
    old = ModelConfig("mobilenet_v2").to_dict()
    del old["padding"]
    old["schema_version"] = 1
    cfg = ModelConfig.from_dict(old)
    from mobilenets.config import SCHEMA_VERSION

    assert cfg.padding == "symmetric" and cfg.schema_version == SCHEMA_VERSION  # upgraded
    with pytest.raises(UsageError, match="padding does not apply to resnet50"):
        ModelConfig("resnet50", padding="same")
    with pytest.raises(UsageError, match="padding must be one of"):
        ModelConfig("mobilenet_v1", padding="reflect")
