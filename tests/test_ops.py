"""Each int8 op of the registry (``micro.ops``), on small random single-op or few-op graphs
written with our own ``.tflite`` writer: the NumPy reference and the generated host C equal the
``tflite-micro`` interpreter bit for bit on 20 random inputs each."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from support import build_host_program

from mobilenets import generate_c
from mobilenets.micro import ops
from mobilenets.micro.arith import same_padding
from mobilenets.micro.graph import Op, QuantizedModel, Tensor
from mobilenets.micro.quantizer import activation_range
from mobilenets.micro.reference import run_graph, run_int8
from mobilenets.micro.runtimes import have_tflm, tflm_outputs
from mobilenets.micro.tflite import read_graph, write_tflite

needs_tflm = pytest.mark.skipif(not have_tflm(), reason="tflite-micro is not installed")
HAVE_CC = shutil.which("cc") is not None
N_INPUTS = 20
WARN = "-std=c99 -Wall -Wextra -Werror -Wpedantic -Wconversion -Wshadow -Wcast-align".split()


class _G:
    """A tiny graph builder: random quantization, ops appended in order."""

    def __init__(self, seed: int, shape: tuple[int, ...], **q) -> None:
        self.rng = np.random.default_rng(seed)
        self.tensors: list[Tensor] = []
        self.ops: list[Op] = []
        self.x = self.tensor(shape, **q)

    def tensor(self, shape, scale=None, zp=None) -> int:
        scale = float(np.float32(self.rng.uniform(0.01, 0.08) if scale is None else scale))
        zp = int(self.rng.integers(-20, 21)) if zp is None else zp
        self.tensors.append(Tensor(f"t{len(self.tensors)}", tuple(shape), scale, zp))
        return len(self.tensors) - 1

    def op(self, kind, inputs, shape, act="none", scale=None, zp=None, **kw) -> int:
        out = self.tensor(shape, scale, zp)
        t = self.tensors[out]
        op = Op(kind, tuple(inputs), out, f"op{len(self.ops)}", activation=act, **kw)
        op.act_min, op.act_max = activation_range(act, t.scale, t.zero_point)
        self.ops.append(op)
        return out

    def weighted(self, kind, x, shape, wshape, act="none", per_tensor=False, **kw) -> int:
        n = wshape[0] if kind != "depthwise_conv2d" else wshape[-1]
        scales = self.rng.uniform(0.002, 0.02, n).astype(np.float32)
        if per_tensor:
            scales[:] = scales[0]
        w = self.rng.integers(-127, 128, wshape).astype(np.int8)
        b = self.rng.integers(-3000, 3000, n).astype(np.int32)
        return self.op(kind, [x], shape, act, weights=w, weight_scales=scales, bias=b, **kw)

    def model(self, out: int) -> QuantizedModel:
        return QuantizedModel(self.tensors, self.ops, self.x, out, config={"name": "ops"})


def conv(kind: str, k: int, stride: int, act: str, pad: str, seed: int) -> QuantizedModel:
    h, c = 11, 8
    g = _G(seed, (1, h, h, c))
    padding = same_padding(h, k, stride) * 2 if pad == "same" else (0,) * 4
    padding = (padding[0], padding[1], padding[0], padding[1])
    o = (h + padding[0] + padding[1] - k) // stride + 1
    cout = 6 if kind == "conv2d" else c
    wshape = (cout, k, k, c) if kind == "conv2d" else (1, k, k, c)
    kw = {"stride": (stride, stride), "padding": padding}
    return g.model(g.weighted(kind, g.x, (1, o, o, cout), wshape, act, **kw))


def fully_connected(per_tensor: bool, act: str) -> QuantizedModel:
    g = _G(7, (1, 1, 1, 24))
    return g.model(
        g.weighted("fully_connected", g.x, (1, 10), (10, 24), act, per_tensor=per_tensor)
    )


def squeeze_excite() -> QuantizedModel:
    """MobileNetV3's block tail: x -> MEAN -> 1x1 conv (relu) -> 1x1 conv -> HARD_SWISH
    -> MUL(x, scale) broadcast over H, W -> 1x1 conv."""
    g = _G(3, (1, 6, 6, 8))
    x = g.op("hard_swish", [g.x], (1, 6, 6, 8))
    m = g.op("mean", [x], (1, 1, 1, 8))
    a = g.weighted("conv2d", m, (1, 1, 1, 4), (4, 1, 1, 8), "relu")
    s = g.weighted("conv2d", a, (1, 1, 1, 8), (8, 1, 1, 4))
    s = g.op("hard_swish", [s], (1, 1, 1, 8))
    y = g.op("mul", [x, s], (1, 6, 6, 8))
    return g.model(g.weighted("conv2d", y, (1, 6, 6, 5), (5, 1, 1, 8)))


def elementwise(kind: str, seed: int, scale: float | None = None) -> QuantizedModel:
    g = _G(seed, (1, 5, 5, 6))
    if kind == "hard_swish":
        return g.model(g.op(kind, [g.x], (1, 5, 5, 6), scale=scale))
    y = g.op("hard_swish", [g.x], (1, 5, 5, 6))
    return g.model(g.op(kind, [g.x, y], (1, 5, 5, 6), "relu6" if seed % 2 else "none"))


def pooled(kind: str) -> QuantizedModel:
    g = _G(5, (1, 7, 7, 6))
    if kind == "mean":
        return g.model(g.op("mean", [g.x], (1, 1, 1, 6)))
    t = g.tensors[g.x]
    return g.model(
        g.op("avg_pool2d", [g.x], (1, 1, 1, 6), scale=t.scale, zp=t.zero_point, kernel=(7, 7))
    )


def window_pool(kind: str, k: int, stride: int, pad: str, act: str) -> QuantizedModel:
    h = 9
    g = _G(6, (1, h, h, 5))
    t = g.tensors[g.x]
    p = same_padding(h, k, stride) if pad == "same" else (0, 0)
    o = (h + p[0] + p[1] - k) // stride + 1
    kw = {"kernel": (k, k), "stride": (stride, stride), "padding": (*p, *p)}
    y = g.op(kind, [g.x], (1, o, o, 5), act, scale=t.scale, zp=t.zero_point, **kw)
    return g.model(y)


def padded(kind: str) -> QuantizedModel:
    """A PAD (or PADV2 with another value) that feeds no convolution: it runs on its own."""
    g = _G(8, (1, 6, 7, 3))
    t = g.tensors[g.x]
    value = {"pad_value": 17} if kind == "padv2" else {}
    y = g.op(
        kind, [g.x], (1, 9, 9, 3), scale=t.scale, zp=t.zero_point, padding=(1, 2, 0, 2), **value
    )
    return g.model(
        g.op(
            "max_pool2d",
            [y],
            (1, 4, 4, 3),
            scale=t.scale,
            zp=t.zero_point,
            kernel=(2, 2),
            stride=(2, 2),
        )
    )


def squeezed(kind: str) -> QuantizedModel:
    """MEAN -> RESHAPE or SQUEEZE to (1, C) (or MEAN without keep_dims) -> FULLY_CONNECTED ->
    SOFTMAX: what converters write for a classifier head."""
    g = _G(10, (1, 5, 5, 12))
    if kind == "mean":
        flat = g.op("mean", [g.x], (1, 12))
    else:
        m = g.op("mean", [g.x], (1, 1, 1, 12))
        t = g.tensors[m]
        flat = g.op(kind, [m], (1, 12), scale=t.scale, zp=t.zero_point)
    logits = g.weighted("fully_connected", flat, (1, 7), (7, 12))
    return g.model(g.op("softmax", [logits], (1, 7), scale=1 / 256, zp=-128))


def probabilities(kind: str, scale: float) -> QuantizedModel:
    """LOGISTIC or SOFTMAX (over channels) after a 1x1 conv; output scale 1/256, zero point -128."""
    g = _G(9, (1, 3, 4, 10))
    x = g.weighted("conv2d", g.x, (1, 3, 4, 10), (10, 1, 1, 10), scale=scale)
    return g.model(g.op(kind, [x], (1, 3, 4, 10), scale=1 / 256, zp=-128))


CASES = {
    **{
        f"{kind}-k{k}-s{s}-{pad}-{act}": (
            lambda kind=kind, k=k, s=s, a=act, p=pad, i=i: conv(kind, k, s, a, p, i)
        )
        for i, (kind, k, s, act, pad) in enumerate(
            (kind, k, s, act, pad)
            for kind in ("conv2d", "depthwise_conv2d")
            for k in (1, 3, 5, 7)
            for s in (1, 2)
            for act, pad in (("relu6", "same"), ("none", "valid"), ("relu", "same"))
            + ((("relu_n1_to_1", "valid"),) if k == 3 else ())
            if not (k == 1 and pad == "same")
        )
    },
    "fully_connected-per-tensor": lambda: fully_connected(True, "none"),
    "fully_connected-per-channel-relu": lambda: fully_connected(False, "relu"),
    "add": lambda: elementwise("add", 1),
    "mul": lambda: elementwise("mul", 2),
    "hard_swish-small-scale": lambda: elementwise("hard_swish", 3, 0.004),
    "hard_swish-large-scale": lambda: elementwise("hard_swish", 4, 0.2),
    "mean": lambda: pooled("mean"),
    "avg_pool2d-global": lambda: pooled("avg_pool2d"),
    "squeeze-excite": squeeze_excite,
    "avg_pool2d-3x3-s2-same": lambda: window_pool("avg_pool2d", 3, 2, "same", "none"),
    "avg_pool2d-2x2-s2-valid-relu": lambda: window_pool("avg_pool2d", 2, 2, "valid", "relu"),
    "max_pool2d-3x3-s2-same": lambda: window_pool("max_pool2d", 3, 2, "same", "none"),
    "max_pool2d-3x3-s1-valid-relu6": lambda: window_pool("max_pool2d", 3, 1, "valid", "relu6"),
    "pad-then-max_pool2d": lambda: padded("pad"),
    "padv2-then-max_pool2d": lambda: padded("padv2"),
    "mean-reshape-fc-softmax": lambda: squeezed("reshape"),
    "mean-squeeze-fc-softmax": lambda: squeezed("squeeze"),
    "mean-without-keep-dims-fc-softmax": lambda: squeezed("mean"),
    "zoo": lambda: zoo(),  # zoo is defined below
    "logistic": lambda: probabilities("logistic", 0.05),
    "logistic-wide-input": lambda: probabilities("logistic", 0.3),
    "softmax": lambda: probabilities("softmax", 0.05),
    "softmax-wide-input": lambda: probabilities("softmax", 0.3),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every case: the model, its .tflite, 20 inputs and (with a C compiler) its host binary;
    the engine is compiled once and linked into each."""
    root = tmp_path_factory.mktemp("ops")
    out = {}
    engine = None
    for name, make in CASES.items():
        qm = make()
        path = write_tflite(qm, root / f"{name}.tflite")
        shape = (N_INPUTS, *qm.input_tensor.shape[1:])
        x = np.random.default_rng(len(name)).integers(-128, 128, shape).astype(np.int8)
        exe = None
        if HAVE_CC:
            exe, engine = build_host_program(qm, root / name, engine)
        out[name] = (qm, path, x, exe)
    return out


@needs_tflm
@pytest.mark.parametrize("name", list(CASES))
def test_op_is_bit_exact_with_tflite_micro(built, name):
    qm, path, x, exe = built[name]
    theirs = tflm_outputs(path, x).reshape(len(x), -1)
    ours = run_int8(qm, x).reshape(len(x), -1)
    assert np.array_equal(ours, theirs), f"reference: {np.abs(ours - theirs.astype(int)).max()} LSB"
    back = read_graph(path)  # the reader gives the same graph back
    assert [o.kind for o in back.ops] == [o.kind for o in qm.ops]
    assert np.array_equal(run_int8(back, x).reshape(len(x), -1), theirs)
    if exe is not None:
        res = subprocess.run([str(exe)], input=x.tobytes(), capture_output=True, check=True)
        host = np.frombuffer(res.stdout, np.int8).reshape(len(x), -1)
        assert np.array_equal(host, theirs), (
            f"host C: {np.abs(host - theirs.astype(int)).max()} LSB"
        )


def test_registry_is_the_one_table():
    """Every op kind has one entry holding all its parts; the supported list names them."""
    for kind, entry in ops.OPS.items():
        assert entry.kind == kind and callable(entry.kernel) and callable(entry.write)
        assert entry.quant in ("calibrated", "input", "fixed")
    assert "HARD_SWISH" in ops.supported_tflite_ops()
    assert "MN_MAX_KERNEL 7" in ops.c_enum()


def test_unsupported_op_is_refused_in_one_line(tmp_path, monkeypatch):
    from mobilenets.errors import MobilenetsError
    from mobilenets.micro import tflite

    path = write_tflite(CASES["hard_swish-small-scale"](), tmp_path / "a.tflite")
    monkeypatch.delitem(tflite.BY_CODE, 117)
    with pytest.raises(MobilenetsError) as e:
        read_graph(path)
    msg = str(e.value)
    assert "op 0 is HARD_SWISH, not supported (supported: ADD," in msg and "\n" not in msg


def _float_io() -> QuantizedModel:
    """float32 in -> QUANTIZE -> conv 3x3 -> DEQUANTIZE -> float32 out."""
    g = _G(12, (1, 6, 6, 3), scale=0.0, zp=0)
    q = g.op("quantize", [g.x], (1, 6, 6, 3))
    y = g.weighted("conv2d", q, (1, 6, 6, 4), (4, 3, 3, 3), "relu6", padding=(1, 1, 1, 1))
    return g.model(g.op("dequantize", [y], (1, 6, 6, 4), scale=0.0, zp=0))


@needs_tflm
def test_quantize_dequantize_at_the_boundary(tmp_path):
    qm = _float_io()
    path = write_tflite(qm, tmp_path / "f.tflite")
    x = np.random.default_rng(0).normal(0, 1.5, (N_INPUTS, 6, 6, 3)).astype(np.float32)
    x[0, 0, 0, :] = [0.5 * qm.tensors[1].scale, -2.5 * qm.tensors[1].scale, 1e3]  # ties, clamp
    theirs = tflm_outputs(path, x).reshape(len(x), -1)
    ours = run_graph(qm, x).reshape(len(x), -1)
    assert ours.dtype == np.float32 and np.array_equal(ours, theirs)
    core = qm.int8_core()  # what run_int8 and the C library take: the QUANTIZE output
    xq = run_graph(QuantizedModel(qm.tensors, qm.ops[:1], 0, 1), x)
    assert core.input == 1 and core.output == 2 and len(core.ops) == 1
    assert np.array_equal(run_int8(qm, xq).reshape(len(x), -1), run_int8(core, xq))
    assert [o.kind for o in read_graph(path).ops] == ["quantize", "conv2d", "dequantize"]
    generate_c(qm, tmp_path / "c")  # the C library takes and returns int8
    header = (tmp_path / "c" / "model.h").read_text()
    assert f'MN_INPUT_SCALE "{float(np.float32(qm.tensors[1].scale))!r}"' in header  # int8 side


def zoo() -> QuantizedModel:
    """Most ops in one streamed graph: PAD -> MAX_POOL -> 5x5 conv -> 7x7/2 depthwise ->
    HARD_SWISH -> squeeze-excite (MEAN, 1x1, LOGISTIC, MUL) -> ADD -> AVERAGE_POOL -> MEAN ->
    RESHAPE -> FULLY_CONNECTED -> SOFTMAX."""
    g = _G(13, (1, 12, 12, 4))
    t = g.tensors[g.x]
    p = g.op("pad", [g.x], (1, 14, 14, 4), scale=t.scale, zp=t.zero_point, padding=(1, 1, 1, 1))
    kw = {"kernel": (3, 3), "stride": (1, 1), "scale": t.scale, "zp": t.zero_point}
    m = g.op("max_pool2d", [p], (1, 12, 12, 4), **kw)
    c = g.weighted("conv2d", m, (1, 12, 12, 8), (8, 5, 5, 4), "relu6", padding=(2, 2, 2, 2))
    dw = g.weighted("depthwise_conv2d", c, (1, 6, 6, 8), (1, 7, 7, 8), stride=(2, 2),
                    padding=(2, 3, 2, 3))  # fmt: skip
    x = g.op("hard_swish", [dw], (1, 6, 6, 8))
    s = g.op("mean", [x], (1, 1, 1, 8))
    s = g.weighted("conv2d", s, (1, 1, 1, 8), (8, 1, 1, 8))
    s = g.op("logistic", [s], (1, 1, 1, 8), scale=1 / 256, zp=-128)
    y = g.op("add", [g.op("mul", [x, s], (1, 6, 6, 8)), x], (1, 6, 6, 8))
    t = g.tensors[y]
    kw = {"kernel": (2, 2), "stride": (2, 2), "scale": t.scale, "zp": t.zero_point}
    a = g.op("avg_pool2d", [y], (1, 3, 3, 8), **kw)
    v = g.op("mean", [a], (1, 1, 1, 8))
    flat = g.op("reshape", [v], (1, 8), scale=g.tensors[v].scale, zp=g.tensors[v].zero_point)
    logits = g.weighted("fully_connected", flat, (1, 6), (6, 8))
    return g.model(g.op("softmax", [logits], (1, 6), scale=1 / 256, zp=-128))


@needs_tflm
@pytest.mark.skipif(
    not (HAVE_CC and shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")),
    reason="needs cc, gcc-arm-none-eabi and qemu-system-arm",
)
def test_op_zoo_on_cortex_m7_equals_tflite_micro(tmp_path):
    """The whole zoo graph: reference = TFLite Micro on 20 inputs; the Cortex-M7 build under
    QEMU (SIMD kernels, 32-bit) equals them on 3."""
    qm = zoo()
    x = np.random.default_rng(5).integers(-128, 128, (N_INPUTS, 12, 12, 4)).astype(np.int8)
    theirs = tflm_outputs(write_tflite(qm, tmp_path / "zoo.tflite"), x).reshape(len(x), -1)
    assert np.array_equal(run_int8(qm, x), theirs)
    generate_c(qm, tmp_path / "c", target="cortex-m7", test_inputs=x[:3])
    make = ["make", "-s", "-C", str(tmp_path / "c")]
    subprocess.run([*make, "cortex-m7"], check=True, capture_output=True)
    res = subprocess.run([*make, "run-cortex-m7"], capture_output=True, text=True, timeout=120)
    rows = [line.split(":")[1].split() for line in res.stdout.splitlines() if line[:4] == "out "]
    assert res.returncode == 0 and np.array_equal(np.array(rows, np.int8), theirs[:3])
