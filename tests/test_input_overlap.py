"""The stem's row ring written over the input rows the stem no longer reads (TinyEngine-style
in-place placement): the planner's bound, ``Plan.check``'s row-by-row verification of it, and
the generated C on a model whose peak is at the stem, bit for bit against the NumPy reference
and ``tflite-micro``."""

from __future__ import annotations

import dataclasses
import subprocess

import numpy as np
import pytest
from support import build_host_program
from test_ops import _G, HAVE_CC, needs_tflm

from mobilenets.errors import MobilenetsError
from mobilenets.micro.planner import ALIGN, plan_memory
from mobilenets.micro.reference import run_int8
from mobilenets.micro.runtimes import tflm_outputs
from mobilenets.micro.tflite import write_tflite

PADDINGS = {"same": (0, 1, 0, 1), "symmetric": (1, 1, 1, 1)}
# The stem's ring (3 rows of 24 x 16 = 384 B) over the input's rows (48 x 3 = 144 B): row r of
# the stem reads input rows 2r - top .. 2r - top + 2, so rows below 2r - top are dead when it
# writes slot r % 3; the ring must start below the input by max over r of
# (r % 3 + 1) * 384 - max(2r - top, 0) * 144, reached at r = 2: 1152 - 4 * 144 = 576 for 'same'
# (top 0) and 1152 - 3 * 144 = 720 for symmetric padding (top 1).
RING_DELTA = {"same": 576, "symmetric": 720}


def stem_peak(pad: str):
    """48x48x3 -> 3x3 stride-2 conv to 16 channels -> 3x3 stride-2 depthwise -> 1x1 to 8: the
    peak is at the stem, while the input (6,912 B) is held whole. Symmetric padding is a PAD op
    before each VALID convolution (as TensorFlow's converter writes it; the planner folds it)."""
    g = _G(5, (1, 48, 48, 3))

    def padded(t: int, h: int, c: int) -> tuple[int, dict]:
        if pad == "same":
            return t, {"padding": PADDINGS["same"]}
        q = g.tensors[t]
        p = g.op(
            "pad",
            [t],
            (1, h + 2, h + 2, c),
            scale=q.scale,
            zp=q.zero_point,
            padding=PADDINGS["symmetric"],
        )
        return p, {}

    t, kw = padded(g.x, 48, 3)
    a = g.weighted("conv2d", t, (1, 24, 24, 16), (16, 3, 3, 3), "relu6", stride=(2, 2), **kw)
    t, kw = padded(a, 24, 16)
    b = g.weighted(
        "depthwise_conv2d", t, (1, 12, 12, 16), (1, 3, 3, 16), "relu6", stride=(2, 2), **kw
    )
    return g.model(g.weighted("conv2d", b, (1, 12, 12, 8), (8, 1, 1, 16)))


def _input_and_stem(plan):
    x = next(b for b in plan.buffers if b.tensor == plan.input)
    stem = next(b for b in plan.buffers if b.tensor == plan.stages[0].output)
    return x, stem


@pytest.mark.parametrize("pad", list(PADDINGS))
def test_rows_are_planned_over_dead_input_rows(pad):
    plan = plan_memory(stem_peak(pad))
    x, stem = _input_and_stem(plan)
    assert plan.peak_stage == 0 and plan.tensors[stem.tensor].ring == 3
    assert plan.deltas[(x.tensor, stem.tensor)] == RING_DELTA[pad]
    inside = [
        b
        for b in plan.buffers
        if b is not x and b.first <= x.last and x.offset < b.offset + b.size <= x.offset + x.size
    ]
    assert inside, "no buffer is written over the input's dead rows"
    assert plan.arena_bytes < 8928  # the plan without it (main before this change)


@pytest.mark.parametrize("pad", list(PADDINGS))
def test_check_verifies_each_row_write_over_the_input(pad):
    """The ring exactly at its bound passes; one aligned step higher, or starting at the input
    itself (row 0 written while the stem reads input row 0), the check names both buffers,
    whatever the planner's ``deltas`` say (they are not an exemption)."""
    plan = plan_memory(stem_peak(pad))
    x, stem = _input_and_stem(plan)
    x = dataclasses.replace(x, offset=1024)
    bound = x.offset - RING_DELTA[pad]

    def pair(offset: int):
        ring = dataclasses.replace(stem, offset=offset)
        lax = {(x.tensor, stem.tensor): -(10**6)}
        return dataclasses.replace(plan, buffers=[x, ring], arena_bytes=16384, deltas=lax)

    pair(bound).check()
    pair(bound - ALIGN).check()
    for wrong in (bound + ALIGN, x.offset):
        with pytest.raises(MobilenetsError, match=f"{x.name} .* {stem.name} .* overlap"):
            pair(wrong).check()


@pytest.mark.skipif(not HAVE_CC, reason="needs a C compiler")
@needs_tflm
@pytest.mark.parametrize("pad", list(PADDINGS))
def test_stem_peak_model_is_bit_exact_in_host_c(tmp_path, pad):
    qm = stem_peak(pad)
    x = np.random.default_rng(1).integers(-128, 128, (20, 48, 48, 3)).astype(np.int8)
    theirs = tflm_outputs(write_tflite(qm, tmp_path / "m.tflite"), x).reshape(len(x), -1)
    ours = run_int8(qm, x).reshape(len(x), -1)
    exe, _ = build_host_program(qm, tmp_path / "c", None)
    res = subprocess.run([str(exe)], input=x.tobytes(), capture_output=True, check=True)
    host = np.frombuffer(res.stdout, np.int8).reshape(len(x), -1)
    assert np.array_equal(ours, theirs) and np.array_equal(host, theirs)
    assert len(np.unique(theirs)) > 10  # not a collapsed output
    assert "Inference overwrites it" in (tmp_path / "c" / "model.h").read_text()
