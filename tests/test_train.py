"""Training: learning on real data, outputs, exact resume after SIGKILL, torchrun, NaN, safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import make_imagefolder, needs_fashion, run_cli

from mobilenets import train
from mobilenets.checkpoint import load_checkpoint, load_training_state

# Two cores shared with other jobs: one thread per process avoids OpenMP oversubscription.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TINY = [
    "--model",
    "mobilenet_v1",
    "--width",
    "0.25",
    "--data",
    "fashion-mnist",
    "--batch-size",
    "64",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@needs_fashion
def test_training_learns_and_writes_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, _ = run_cli(
        [
            "train",
            *TINY,
            "--epochs",
            "2",
            "--max-train-samples",
            "2560",
            "--max-eval-samples",
            "1000",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert rc == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in (
        "train_loss",
        "train_top1",
        "val_loss",
        "val_top1",
        "val_top5",
        "lr",
        "images_per_s",
        "elapsed_s",
    ):
        assert key in rows[0]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_test_top1"] > 0.35, summary  # chance is 0.10
    assert summary["final_val_top1"] == rows[-1]["val_top1"] and 0 <= summary["final_val_top5"] <= 1
    assert summary["config"]["in_chans"] == 1 and summary["config"]["small_input"] is True
    for key in ("best_val_top1", "epochs", "wall_s", "images_per_s", "hardware", "versions"):
        assert key in summary
    assert (out / "curves.png").stat().st_size > 1000
    assert os.readlink(out / "last.ckpt") == "epoch-0002.ckpt"
    assert sorted(p.name for p in out.glob("epoch-*")) == sorted(
        {os.readlink(out / "best.ckpt"), "epoch-0002.ckpt"}
    )
    ck = load_checkpoint(out / "last.ckpt")
    assert ck.class_names[0] == "T-shirt/top" and ck.mean[0] == pytest.approx(0.286, abs=0.003)
    assert ck.preprocess.crop_pct == 1.0 and ck.meta["epoch"] == 2
    state = load_training_state(out / "last.ckpt")  # weights_only=True
    assert {"model", "optimizer", "scheduler", "ema", "rng", "epoch"} <= set(state)
    assert "top-1" in stdout and "%" in stdout


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {
        **load_file(folder / "model.safetensors"),
        **{f"raw.{k}": v for k, v in load_training_state(folder)["model"].items()},
    }


@needs_fashion
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    base = [
        sys.executable,
        "-m",
        "mobilenets",
        "train",
        *TINY,
        "--epochs",
        "2",
        "--max-train-samples",
        "1536",
        "--max-eval-samples",
        "200",
        "--seed",
        "3",
    ]
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run([*base, "--out", str(full)], env=ENV, check=True, capture_output=True)

    # The run SIGKILLs itself after optimizer step 29 (epoch 2, step 5 of 24): a kill at a
    # known point, not after a sleep.
    r = subprocess.run(
        [*base, "--out", str(cut)],
        env={**ENV, train.KILL_AT_STEP: "29"},
        capture_output=True,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert os.readlink(cut / "last.ckpt") == "epoch-0001.ckpt"
    load_checkpoint(cut / "last.ckpt")  # intact

    subprocess.run([*base, "--out", str(cut), "--resume"], env=ENV, check=True, capture_output=True)
    a, b = tensors(full / "last.ckpt"), tensors(cut / "last.ckpt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][
        :5
    ]
    rows = [json.loads(line)["epoch"] for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2]


@needs_fashion
def test_torchrun_two_ranks_train_disjoint_shards(tmp_path):
    out, dbg = tmp_path / "run", tmp_path / "debug"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "mobilenets",
        "train",
        *TINY,
        "--epochs",
        "2",
        "--max-train-samples",
        "512",
        "--max-eval-samples",
        "200",
        "--out",
        str(out),
    ]
    r = subprocess.run(
        cmd,
        env={**ENV, "MOBILENETS_DEBUG_SHARDS": str(dbg)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for epoch in (1, 2):
        r0 = json.loads((dbg / f"rank0-epoch{epoch}.json").read_text())
        r1 = json.loads((dbg / f"rank1-epoch{epoch}.json").read_text())
        assert len(r0) == len(r1) == 256  # 8 global batches of 64 = 8 x 32 per rank
        assert not set(r0) & set(r1) and set(r0) | set(r1) <= set(range(512))
    assert json.loads((dbg / "rank0-epoch1.json").read_text()) != json.loads(
        (dbg / "rank0-epoch2.json").read_text()
    )
    assert (dbg / "rank0.log").read_text().split() == [
        "checkpoint",
        "epoch-0001.ckpt",
        "checkpoint",
        "epoch-0002.ckpt",
    ]
    assert not (dbg / "rank1.log").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert load_training_state(out / "last.ckpt")["epoch"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 64


@needs_fashion
def test_nan_loss_stops_naming_the_step(tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    real = train.make_criterion

    def poisoned(smoothing):
        loss = real(smoothing)

        def f(logits, y):
            calls["n"] += 1
            value = loss(logits, y)
            return value * float("nan") if calls["n"] == 4 + 3 else value  # epoch 2, step 3

        return f

    monkeypatch.setattr(train, "make_criterion", poisoned)
    out = tmp_path / "run"
    rc, _, err = run_cli(
        [
            "train",
            *TINY,
            "--epochs",
            "3",
            "--max-train-samples",
            "256",
            "--max-eval-samples",
            "64",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert rc == 1
    assert err.count("\n") == 1 and "epoch 2 step 3/4" in err and "non-finite loss" in err
    assert os.readlink(out / "last.ckpt") == "epoch-0001.ckpt"
    assert load_training_state(out / "last.ckpt")["epoch"] == 1
    assert all(
        torch.isfinite(v).all() for v in load_file(out / "last.ckpt" / "model.safetensors").values()
    )


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@needs_fashion
def test_resume_refuses_pickled_objects(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        *TINY,
        "--max-train-samples",
        "128",
        "--max-eval-samples",
        "64",
        "--out",
        str(out),
    ]
    assert run_cli([*args, "--epochs", "1"], capsys)[0] == 0
    marker = tmp_path / "pwned"
    torch.save({"epoch": 1, "model": Payload(marker)}, out / "last.ckpt" / "training_state.pt")
    rc, _, err = run_cli([*args, "--epochs", "2", "--resume"], capsys)
    assert rc == 1 and "refusing to load" in err and err.count("\n") == 1
    assert not marker.exists()


def test_missing_dataset_is_one_line_with_instructions(tmp_path, capsys, monkeypatch):
    from mobilenets import data

    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", [tmp_path / "absent"])
    monkeypatch.delenv("MOBILENETS_DATA", raising=False)
    monkeypatch.setenv("MOBILENETS_OFFLINE", "1")
    rc, _, err = run_cli(
        [
            "train",
            *TINY,
            "--epochs",
            "1",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "r"),
        ],
        capsys,
    )
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "apt-get install dataset-fashion-mnist" in err and "$MOBILENETS_DATA" in err


def test_imagefolder_bad_image_is_named_or_skipped(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "imgs", bad=True)
    args = [
        "train",
        "--model",
        "mobilenet_v1",
        "--width",
        "0.25",
        "--resolution",
        "32",
        "--data",
        f"imagefolder:{root}",
        "--epochs",
        "1",
        "--batch-size",
        "13",
        "--workers",
        "0",
    ]
    rc, _, err = run_cli([*args, "--out", str(tmp_path / "a")], capsys)
    assert rc == 1 and "broken.png" in err and "--skip-bad-images" in err and err.count("\n") == 1
    rc, out, _ = run_cli([*args, "--out", str(tmp_path / "b"), "--skip-bad-images"], capsys)
    assert rc == 0 and "skipped 1 unreadable image" in out
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["skipped_images"] == 1 and summary["eval_images"]["test"] == 4
    ck = load_checkpoint(tmp_path / "b" / "last.ckpt")
    assert ck.class_names == ["circle", "square"] and ck.preprocess.crop_pct == 0.875
    assert ck.mean == pytest.approx([0.485, 0.456, 0.406])


@needs_fashion
def test_finetune_from_torchvision_state_dict(tmp_path, capsys):
    import torchvision

    from mobilenets import create_model

    src = torchvision.models.mobilenet_v2(width_mult=0.35)  # 1000 classes, 3 channels
    path = tmp_path / "tv.pth"
    torch.save(src.state_dict(), path)
    out = tmp_path / "run"
    rc, _, err = run_cli(
        [
            "train",
            "--model",
            "mobilenet_v2",
            "--width",
            "0.35",
            "--data",
            "fashion-mnist",
            "--pretrained",
            str(path),
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--max-train-samples",
            "64",
            "--max-eval-samples",
            "64",
            "--lr",
            "1e-12",
            "--no-ema",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert rc == 0, err
    ck = load_checkpoint(out / "last.ckpt")
    assert ck.config.num_classes == 10 and ck.config.in_chans == 1 and ck.config.small_input
    expected = create_model(
        "mobilenet_v2",
        width_mult=0.35,
        resolution=28,
        num_classes=10,
        in_chans=1,
        small_input=True,
        pretrained=str(path),
    ).state_dict()
    scratch = create_model(
        "mobilenet_v2", width_mult=0.35, resolution=28, num_classes=10, in_chans=1, small_input=True
    )
    got = ck.model.state_dict()
    convs = [k for k in got if k.endswith("conv.weight")]
    assert len(convs) > 40
    assert all(
        torch.allclose(got[k], expected[k], atol=1e-6) for k in convs
    )  # lr ~ 0: still the imported weights
    assert not torch.allclose(got[convs[5]], scratch.state_dict()[convs[5]])


def test_rmsprop_tf_matches_timm_and_keeps_eps_inside_the_root():
    timm_optim = pytest.importorskip("timm.optim")
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(a.detach().clone())
    ours = train.RMSpropTF([a], lr=0.045, decay=0.9, momentum=0.9, eps=1.0)
    ref = timm_optim.RMSpropTF([b], lr=0.045, alpha=0.9, eps=1.0, momentum=0.9)
    for step in range(5):
        g = torch.randn(5, 3) * 10**step
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    # eps inside the root (and the mean square starting at 1) bounds the first step:
    # lr * |g| / sqrt(0.9 + 0.1 g^2 + eps) <= lr * sqrt(10), however large the gradient
    p = torch.nn.Parameter(torch.zeros(1))
    p.grad = torch.tensor([1e6])
    train.RMSpropTF([p], lr=0.045).step()
    assert abs(float(p.detach())) <= 0.045 * 10**0.5 * (1 + 1e-6)


# ---------------------------------------------------------------- fit() misuse (issue 20 item 10)


@pytest.mark.parametrize(
    "args, kwargs, error, named",
    [
        (("mobilenet_v1", None, "o", 1), {}, TypeError, "fit(data=...): expected a"),
        (("mobilenet_v1", "np", "o", 1), {}, TypeError, "fit(data=...): expected a"),
        (("mobilenet_v1", "fashion-mnist", "o", "2"), {}, TypeError, "fit(epochs=...)"),
        (("mobilenet_v1", "fashion-mnist", "o", 0), {}, ValueError, "fit(epochs=...)"),
        (("mobilenet_v1", "fashion-mnist", "o", 1), {"batch_size": 1.5}, TypeError, "batch_size"),
        (("module", "fashion-mnist", "o", 1), {}, TypeError, "fit(config=...): expected a"),
    ],
)
def test_fit_misuse_names_the_argument_and_what_it_accepts(tmp_path, args, kwargs, error, named):
    import numpy as np

    from mobilenets import create_model

    config, data, _, epochs = args
    if data == "np":
        data = np.zeros((4, 28, 28), dtype=np.uint8)
    if config == "module":
        config = create_model("mobilenet_v1", width_mult=0.25)
    with pytest.raises(error) as e:
        train.fit(config, data, tmp_path / "r", epochs, **kwargs)
    msg = str(e.value)
    assert named in msg and "\n" not in msg and not (tmp_path / "r").exists()
    if error is TypeError and "config" in named:
        assert "ModelConfig or a model name" in msg and "nn.Module" not in msg


# ---------------------------------------------------------------- RunPlan: the run.json record


@needs_fashion
def test_study_cells_are_checked_against_the_whole_run_record(tmp_path):
    from mobilenets.data import load_dataset
    from mobilenets.runfolder import RECORD
    from mobilenets.runplan import TrainArgs, resolve_run
    from mobilenets.study.cells import Cell, Training, Variant

    ds = load_dataset("fashion-mnist")
    training = Training("fashion-mnist", 1, 64, 256, 64)
    cell = Cell(Variant("mobilenet_v1", width=0.25), 0)
    kw, options = cell.fit_kwargs(training, tmp_path), cell.variant.options()
    args = TrainArgs(**{k: v for k, v in kw.items() if k not in options}, model_options=options)
    record = resolve_run(args, ds, world=1).record
    folder = cell.folder(tmp_path)
    folder.mkdir(parents=True)

    def stored(defining):
        (folder / RECORD).write_text(json.dumps({"defining": defining, "epochs": 1}))
        return cell.mismatch(training, tmp_path, ds)

    assert stored(record) is None
    # values the old subset check never saw: the recipe, the model, the data
    recipe = {**record["recipe"], "weight_decay": 0.5}
    assert stored({**record, "recipe": recipe}).startswith("recipe weight_decay 0.5 (this study:")
    model = {**record["model"], "drop_rate": 0.0}
    assert stored({**record, "model": model}) == "model drop_rate 0.0 (this study: 0.2)"
    assert stored({**record, "val_split": 100}) == "val_split 100 (this study: 0)"
