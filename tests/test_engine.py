"""Issue 10: the training engine's units (schedule, EMA warm-up, device augmentation), every
ModelConfig option on the command line, the small-input default, and fit() run in-process."""

from __future__ import annotations

import copy
import dataclasses
import gc
import math
import os
import threading
from pathlib import Path

import pytest
import torch
from support import needs_fashion
from torch import nn

from mobilenets import cli, engine, runplan, train
from mobilenets.cli import train as cli_train
from mobilenets.config import _CHOICES, APPLIES_TO, ModelConfig, model_flag
from mobilenets.engine import RECIPES, ModelEma, ema_decay_at, lr_at, warmup_steps

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- the LR schedule


def test_cosine_schedule_warms_up_then_decays_to_zero():
    r = RECIPES["modern"]
    spe, total = 100, 1000  # 10 epochs: warm-up is 1 epoch (10% of the run)
    assert warmup_steps(r, spe, total) == 100
    f = [lr_at(s, r, spe, total) for s in range(total)]
    assert f[0] == pytest.approx(1 / 101) and f[99] == pytest.approx(100 / 101)
    assert all(b > a for a, b in zip(f[:99], f[1:100], strict=True))  # linear ramp
    assert f[100] == pytest.approx(1.0)  # the peak right after warm-up
    assert all(b <= a for a, b in zip(f[100:], f[101:], strict=False))  # then only down
    assert f[550] == pytest.approx(0.5, abs=1e-9)  # the cosine's midpoint
    assert f[-1] < 1e-4


def test_short_run_warms_up_over_a_share_of_the_run_not_three_steps():
    """The issue's 1-epoch run (8,192 images, batch 256 = 32 steps) warmed up in 3.2 steps and
    diverged; the warm-up is now a quarter of such a run, while long runs keep 10%."""
    r = RECIPES["modern"]
    assert warmup_steps(r, 32, 32) == 8
    assert warmup_steps(r, 468, 3 * 468) == pytest.approx(140.4)  # the demo's, as before
    assert warmup_steps(r, 234, 40 * 234) == 234  # a long run: one epoch
    f = [lr_at(s, r, 32, 32) for s in range(32)]
    assert f[1] < 0.3 and max(f) == pytest.approx(1.0, abs=0.02)


def test_paper_schedule_decays_per_epoch():
    r = RECIPES["paper"]
    assert [lr_at(s, r, 10, 100) for s in (0, 9, 10, 25)] == pytest.approx([1, 1, 0.98, 0.98**2])


def test_fast_recipe_is_a_large_batch_with_scaled_lr():
    r = RECIPES["fast"]
    assert r.batch_size == 1024 and r.lr * r.batch_size / r.lr_batch == pytest.approx(0.8)
    assert r.ema_every > 1 and r.warmup_epochs <= 1


# ---------------------------------------------------------------- the run-length rules


def test_the_readme_demo_keeps_its_schedule_ema_and_augmentation():
    """The demo (V1, 3 epochs of 60,000 images at batch 128: 468 x 3 = 1,404 steps, lr 0.1)
    is untouched by the run-length rules: values pinned from the code before they existed."""
    r = RECIPES["modern"]
    length = engine.adapt_to_length(r, 3, 1404)
    assert length.recipe == r and length.lr_scale == 1.0 and length.augment and not length.why
    assert r.ema_decay == 0.9998 and r.label_smoothing == 0.1 and r.random_erasing == 0.0
    w = 140.4  # warm-up: 10% of the run
    f = [lr_at(s, r, 468, 1404) for s in range(1404)]
    for s, v in enumerate(f):
        want = (s + 1) / (w + 1) if s < w else 0.5 * (1 + math.cos(math.pi * (s - w) / (1404 - w)))
        assert v == pytest.approx(want, rel=1e-12, abs=1e-15)
    pinned = {0: 0.007072135785007072, 139: 0.9900990099009901, 140: 0.9971711456859972}
    pinned |= {141: 0.9999994436822206, 700: 0.5892714580492713, 1403: 1.5453266555831568e-06}
    assert {s: f[s] for s in pinned} == pytest.approx(pinned, rel=1e-12)
    decays = {1: 0.18181818181818182, 10: 0.55, 100: 0.9181818181818182}
    decays |= {1000: 0.9910891089108911, 1404: 0.9936350777934936}
    assert {t: ema_decay_at(t, 0.9998) for t in decays} == pytest.approx(decays, rel=1e-12)


def test_short_runs_scale_the_lr_and_drop_the_ema_single_passes_drop_regularizers():
    r = RECIPES["modern"]
    one = engine.adapt_to_length(r, 1, 32)  # issue 10's 1-epoch run: 32 steps
    assert one.lr_scale == pytest.approx(0.32**0.7) and 0.2 * one.lr_scale == pytest.approx(
        0.09, abs=1e-3
    )
    assert one.recipe.ema_decay is None and one.recipe.label_smoothing == 0.0
    assert not one.augment and one.recipe.random_erasing == 0.0
    assert "32 < 100 steps" in one.why and "single pass" in one.why
    # what the user set is kept
    kept = engine.adapt_to_length(r, 1, 32, frozenset({"lr", "ema", "label_smoothing"}))
    assert kept.lr_scale == 1.0 and kept.recipe.ema_decay == r.ema_decay
    assert kept.recipe.label_smoothing == r.label_smoothing and not kept.augment
    # a short run of 2 epochs keeps its augmentation and label smoothing
    two = engine.adapt_to_length(RECIPES["long"], 2, 50)
    assert two.augment and two.recipe.random_erasing == 0.5 and two.recipe.label_smoothing == 0.1
    assert two.lr_scale == pytest.approx(0.5**0.7) and two.recipe.ema_decay is None
    # a long single pass keeps its lr and EMA; 100 steps is no longer short
    big = engine.adapt_to_length(r, 1, 5000)
    assert big.lr_scale == 1.0 and big.recipe.ema_decay == r.ema_decay and not big.augment
    assert engine.adapt_to_length(r, 2, 100).recipe == r
    # the papers' exponential schedule has no warm-up floor: untouched by the step rule
    assert engine.adapt_to_length(RECIPES["paper"], 2, 32).lr_scale == 1.0


def test_a_single_pass_trains_on_the_images_as_they_are():
    imgs = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    prep = engine_prep()
    data = engine.DeviceImages(imgs, torch.arange(6), prep, 2, torch.device("cpu"))
    idx = torch.tensor([4, 1])
    x, y = data.batch(idx, torch.Generator().manual_seed(0), erasing=1.0, augment=False)
    assert torch.equal(x, data.x[idx]) and y.tolist() == [4, 1]
    xa, _ = data.batch(idx, torch.Generator().manual_seed(0), erasing=1.0)
    assert not torch.equal(xa, data.x[idx])


def engine_prep():
    from mobilenets.preprocess import Preprocess

    return Preprocess(8, 1, (0.5,), (0.25,), 1.0)


# ---------------------------------------------------------------- the EMA warm-up


def test_ema_decay_warms_up_and_is_capped():
    assert ema_decay_at(1, 0.9998) == pytest.approx(2 / 11)
    assert ema_decay_at(10**6, 0.9998) == 0.9998
    ds = [ema_decay_at(t, 0.9998) for t in range(1, 5000)]
    assert all(b >= a for a, b in zip(ds, ds[1:], strict=False))
    # after a 1-epoch run of 32 steps, the random start weighs nothing in the average
    assert math.prod(ema_decay_at(t, 0.9998) for t in range(1, 33)) < 1e-6


def _ema_of_a_ramp(every: int, steps: int) -> float:
    """The EMA of a weight that the optimizer moves to t at step t."""
    model = torch.nn.Linear(1, 1, bias=False)
    ema = ModelEma(model, decay=0.99, every=every)
    for t in range(1, steps + 1):
        with torch.no_grad():
            model.weight.fill_(float(t))
        if t % every == 0:
            ema.update(model)
    return float(ema.module.weight)


def test_ema_every_k_steps_matches_every_step():
    """An update every k steps with the decay to the power k tracks the per-step EMA."""
    per_step, every_4 = _ema_of_a_ramp(1, 2000), _ema_of_a_ramp(4, 2000)
    # the decay is 0.99 by then: the average lags the ramp by about 1/(1-0.99) = 100 steps
    assert 1890 < per_step < 1910
    assert every_4 == pytest.approx(per_step, abs=3)  # a lag of 1.5 steps more, at most


# ---------------------------------------------------------------- device augmentation


def test_crop_flip_and_erasing_run_on_the_device_generator():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    fill = torch.full((1, 1, 1, 1), -9.0)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = engine.crop_flip(x, 2, fill, g1), engine.crop_flip(x, 2, fill, g2)
    assert torch.equal(a, b) and a.shape == x.shape  # a function of the generator
    for i in range(2):  # each output is a window of the padded (maybe flipped) image
        padded = torch.nn.functional.pad(x[i : i + 1], (2, 2, 2, 2), value=-9.0)[0, 0]
        windows = [
            w
            for oy in range(5)
            for ox in range(5)
            for w in (padded[oy : oy + 4, ox : ox + 4], padded[oy : oy + 4, ox : ox + 4].flip(-1))
        ]
        assert any(torch.equal(a[i, 0], w) for w in windows)
    assert torch.equal(
        engine.crop_flip(x, 0, fill, torch.Generator().manual_seed(0)).sort(-1)[0], x
    )
    y = torch.zeros(64, 1, 8, 8)
    e = engine.random_erasing(y, 1.0, torch.Generator().manual_seed(0))
    changed = (e != 0).flatten(1).sum(1)
    assert bool((changed > 0).all()) and bool((changed <= 0.4 * 64 + 8).all())
    assert torch.equal(engine.random_erasing(y, 0.0, torch.Generator()), y)


# ---------------------------------------------------------------- the command line


def _parser():
    return cli.build_parser()


def _non_default(name: str, default):
    if name in _CHOICES:
        return next(c for c in _CHOICES[name] if c != default)
    if isinstance(default, bool):
        return not default
    special = {"width_mult": 0.5, "resolution": 32, "num_classes": 10, "in_chans": 3}
    if name in special:
        return special[name]
    return default / 2 if isinstance(default, float) and default else 1


V1_ONLY, V2_ONLY = (), ("bottleneck_activation", "expansion_activation", "shortcut")


def test_every_model_config_option_is_a_train_flag(capsys):
    """Generated from ModelConfig's fields: a new field (int8's padding) becomes a flag."""
    base = ["train", "--data", "fashion-mnist", "--epochs", "1", "--out", "x"]
    fields = [
        f for f in dataclasses.fields(ModelConfig) if f.name not in ("name", "schema_version")
    ]
    assert len(fields) >= 12
    for f in fields:
        value = _non_default(f.name, f.default)
        model = APPLIES_TO.get(f.name, ("mobilenet_v1",))[0]  # a model the option applies to
        flag = model_flag(f.name)
        argv = [*base, "--model", model]
        argv += (
            [flag if value else f"--no-{flag[2:]}"]
            if isinstance(value, bool)
            else [flag, str(value)]
        )
        args = cli_train.args_from_namespace(_parser().parse_args(argv), [])
        assert args.model_options == {f.name: value}, f.name
        cfg = ModelConfig(name=model, **args.model_options)  # what the run builds
        assert getattr(cfg, f.name) == value
    assert model_flag("width_mult") == "--width" and "--schema-version" not in str(
        _parser()._subparsers._group_actions[0].choices["train"].format_help()
    )


def test_train_flags_and_train_args_share_their_defaults():
    ns = _parser().parse_args(
        ["train", "--model", "mobilenet_v1", "--data", "d", "--epochs", "1", "--out", "o"]
    )
    args = cli_train.args_from_namespace(ns, [])
    ref = train.TrainArgs(model="mobilenet_v1", data="d", out="o", epochs=1)
    assert args == ref  # workers, batch size, recipe...: one definition
    assert args.model_options == {}


class _FakeDataset:
    def __init__(self, name: str, small: bool):
        self.name, self.small_input, self.resolution, self.channels = name, small, 28, 1
        self.class_names = [str(i) for i in range(10)]


@pytest.mark.parametrize(
    "options, dataset_small, expect, why",
    [
        ({"resolution": 96}, True, True, "fashion-mnist's default"),
        ({"resolution": 224}, True, True, "fashion-mnist's default"),
        ({"resolution": 32}, False, False, "imagefolder's default"),
        ({"resolution": 96, "small_input": False}, True, False, "--no-small-input given"),
        ({"resolution": 224, "small_input": True}, False, True, "--small-input given"),
    ],
)
def test_small_input_is_the_datasets_default_at_every_resolution(
    options, dataset_small, expect, why
):
    name = "fashion-mnist" if dataset_small else "imagefolder"
    args = train.TrainArgs("mobilenet_v2", "d", "o", 1, model_options=dict(options))
    cfg, reason = runplan.model_config(args, _FakeDataset(name, dataset_small))
    assert cfg.small_input is expect and why in reason


# ---------------------------------------------------------------- fit() in-process


def _process_figures() -> tuple[int, int, float]:
    fds = len(os.listdir("/proc/self/fd"))
    rss_kb = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmRSS")
    )
    return threading.active_count(), fds, rss_kb / 1024


@needs_fashion
def test_fit_runs_three_times_in_one_process_without_leaking(tmp_path):
    from mobilenets.data import load_dataset

    ds = load_dataset("fashion-mnist")
    kw = dict(batch_size=64, max_train_samples=128, max_eval_samples=64, quiet=True)
    figures, summaries = [], []
    for i in range(3):
        summaries.append(
            train.fit("mobilenet_v1", ds, tmp_path / f"r{i}", 1, width_mult=0.25, seed=i, **kw)
        )
        gc.collect()
        figures.append(_process_figures())
    (threads2, fds2, rss2), (threads3, fds3, rss3) = figures[1], figures[2]
    assert threads3 <= threads2 and fds3 <= fds2, figures
    assert rss3 - rss2 <= 50, figures
    assert all(s["final_test_top1"] is not None for s in summaries)
    assert summaries[0]["small_input"]["value"] is True
    # a whole ModelConfig is accepted as well
    cfg = ModelConfig(
        "mobilenet_v1", width_mult=0.25, resolution=28, num_classes=10, in_chans=1, small_input=True
    )
    s = train.fit(cfg, ds, tmp_path / "cfg", 1, **kw)
    assert s["config"] == cfg.to_dict() and "ModelConfig" in s["small_input"]["why"]


# ---------------------------------------------------------------- Precise BN


def _precise_bn_before_update_bn(model: nn.Module, images: torch.Tensor, batch_size: int) -> None:
    """The hand-written Precise BN that ``recalibrate_bn`` replaced with torch's update_bn."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for chunk in images.split(batch_size):
        model(chunk)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_recalibrate_bn_is_bit_identical_to_the_hand_written_version(name):
    from mobilenets import create_model

    torch.manual_seed(0)
    model = create_model(name, width_mult=0.25, resolution=28, num_classes=10, in_chans=1,
                         small_input=True).eval()  # fmt: skip
    x = torch.randn(100, 1, 28, 28) * 3 + 1  # 100 = 3 x 32 + a partial batch of 4
    ref = copy.deepcopy(model)
    torch.manual_seed(1)
    _precise_bn_before_update_bn(ref, x, 32)
    torch.manual_seed(1)
    engine.recalibrate_bn(model, x, 32)
    a, b = ref.state_dict(), model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert any("running_var" in k and not torch.equal(a[k], torch.ones_like(a[k])) for k in a)
    assert not model.training and all(
        m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    )
    before = copy.deepcopy(model.state_dict())
    engine.recalibrate_bn(model, x[:0], 32)  # no images: the statistics are kept
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
