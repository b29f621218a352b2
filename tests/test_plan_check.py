"""``Plan.check``: the memory planner's self-check (runs after every plan), and the planner's
rows around squeeze-excite (its input held whole only there)."""

from __future__ import annotations

import dataclasses

import pytest
from test_ops import _G, CASES

from mobilenets import create_model
from mobilenets.errors import MobilenetsError
from mobilenets.micro.planner import plan_memory, plan_model


def _se_chain():
    """conv 3x3 -> depthwise 3x3 -> HARD_SWISH (x) -> MEAN -> 1x1 -> 1x1 -> MUL(x, s) -> 1x1."""
    g = _G(11, (1, 16, 16, 4))
    a = g.weighted("conv2d", g.x, (1, 16, 16, 8), (8, 3, 3, 4), "relu", padding=(1, 1, 1, 1))
    b = g.weighted("depthwise_conv2d", a, (1, 16, 16, 8), (1, 3, 3, 8), padding=(1, 1, 1, 1))
    x = g.op("hard_swish", [b], (1, 16, 16, 8))
    m = g.op("mean", [x], (1, 1, 1, 8))
    s = g.weighted("conv2d", m, (1, 1, 1, 8), (8, 1, 1, 8))
    y = g.op("mul", [x, s], (1, 16, 16, 8))
    out = g.weighted("conv2d", y, (1, 16, 16, 4), (4, 1, 1, 8))
    return g.model(out), (a, b, x, y)


def test_squeeze_excite_input_is_whole_only_there():
    qm, (a, b, x, y) = _se_chain()
    plan = plan_memory(qm)
    rings = {t: plan.tensors[t].ring for t in (a, b, x, y)}
    assert rings[x] == 16, rings  # the pooled scale needs all of x before MUL's first row
    assert rings[a] < 16 and rings[b] < 16 and rings[y] < 16, rings  # bands elsewhere


@pytest.mark.parametrize("name", ["squeeze-excite", "conv2d-k5-s2-same-relu6", "mean"])
def test_plans_pass_their_check(name):
    plan_memory(CASES[name]()).check()
    plan_memory(CASES[name](), streaming=False).check()


def test_real_networks_pass_the_check():
    plan_model(create_model("mobilenet_v2", 0.35, 96, num_classes=10)).check()


def test_check_finds_overlap_and_overflow():
    qm, _ = _se_chain()
    plan = plan_memory(qm)
    live = [b for b in plan.buffers if b.first <= 0 <= b.last and b.size]
    a, b = live[0], live[1]
    plan.buffers[plan.buffers.index(b)] = dataclasses.replace(b, offset=a.offset)
    with pytest.raises(MobilenetsError, match="overlap while both are live"):
        plan.check()
    plan = plan_memory(qm)
    plan.buffers[0] = dataclasses.replace(plan.buffers[0], offset=plan.arena_bytes)
    with pytest.raises(MobilenetsError, match="outside the"):
        plan.check()
