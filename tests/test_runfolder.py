"""Run folders: never overwritten or mixed, resumed exactly, checkpoints verified and finite, writes atomic and umask-respecting."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import TINY, needs_fashion, one_line, run_cli

from mobilenets import checkpoint, cli, train
from mobilenets.checkpoint import load_checkpoint, load_training_state

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with its link target or content hash (and mtime).

    ``.lock`` is left out: every run takes the lock before it looks at the folder."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if rel == ".lock":
            continue
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            st = p.stat()
            out[rel] = f"{hashlib.sha256(p.read_bytes()).hexdigest()} {st.st_mtime_ns}"
    return out


def stop_after_epoch(monkeypatch, epoch: int) -> None:
    """Simulate a kill right after epoch ``epoch``'s checkpoint is in place."""

    def event(rank, text):
        if text == f"checkpoint epoch-{epoch:04d}.ckpt":
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "HOOKS", train.TrainHooks(on_event=event))


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory) -> Path:
    """A 3-epoch run stopped after epoch 2 (last.ckpt -> epoch-0002.ckpt)."""
    out = tmp_path_factory.mktemp("partial") / "run"
    with pytest.MonkeyPatch.context() as mp:
        stop_after_epoch(mp, 2)
        assert cli.main([*TINY, "--epochs", "3", "--out", str(out)]) == 130
    assert os.readlink(out / "last.ckpt") == "epoch-0002.ckpt"
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main([*TINY, "--epochs", "2", "--out", str(out)]) == 0
    return out


def copy_run(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst, symlinks=True)
    return dst


def epochs_in(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@needs_fashion
def test_broken_last_link_resumes_instead_of_overwriting(partial_run, tmp_path, capsys):
    out = copy_run(partial_run, tmp_path)
    rows = (out / "metrics.jsonl").read_text()
    (out / "last.ckpt").unlink()
    (out / "last.ckpt").symlink_to("epoch-0009.ckpt")  # broken
    before = snapshot(out)

    rc, _, err = run_cli([*TINY, "--epochs", "3", "--out", out], capsys)
    assert rc == 2 and one_line(err) and "already holds a run" in err
    assert snapshot(out) == before  # nothing deleted or rewritten

    rc, stdout, err = run_cli([*TINY, "--epochs", "3", "--out", out, "--resume"], capsys)
    assert rc == 0, err
    assert epochs_in(out) == [1, 2, 3]
    assert (out / "metrics.jsonl").read_text().startswith(rows)  # epochs 1-2 kept as they were
    assert os.readlink(out / "last.ckpt") == "epoch-0003.ckpt"
    assert load_training_state(out / "last.ckpt")["epoch"] == 3


@needs_fashion
def test_run_with_no_complete_checkpoint_left_stops_with_one_line(partial_run, tmp_path, capsys):
    out = copy_run(partial_run, tmp_path)
    for folder in out.glob("epoch-*.ckpt"):
        (folder / "model.safetensors").unlink()  # every epoch folder damaged
    (out / "last.ckpt").unlink()
    before = snapshot(out)
    rc, _, err = run_cli([*TINY, "--epochs", "3", "--out", out, "--resume"], capsys)
    assert rc == 1 and one_line(err)
    assert "last.ckpt is missing" in err and "cannot be resumed" in err
    assert snapshot(out) == before


@needs_fashion
def test_non_finite_validation_or_weights_are_never_saved_as_good(tmp_path, capsys, monkeypatch):
    """A BN running mean turned infinite in epoch 2: the training loss (batch statistics)
    stays finite, the evaluation and the weights do not; nothing of epoch 2 is saved."""
    calls = {"n": 0}
    real_update = train.ModelEma.update

    def update(self, model):  # after each optimizer step
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 2, its last step
            bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_mean.fill_(float("inf"))
        real_update(self, model)

    monkeypatch.setattr(train.ModelEma, "update", update)
    out = tmp_path / "run"
    # --ema: a run this short keeps no EMA unless asked (engine.adapt_to_length)
    rc, _, err = run_cli([*TINY, "--epochs", "2", "--out", out, "--ema"], capsys)
    assert rc == 1 and one_line(err) and "at epoch 2" in err and "non-finite" in err
    assert "last good checkpoint" in err and "epoch-0001.ckpt" in err
    assert not (out / "epoch-0002.ckpt").exists()
    for link in ("last.ckpt", "best.ckpt"):
        assert os.readlink(out / link) == "epoch-0001.ckpt"
        weights = load_file(out / link / "model.safetensors")
        assert all(torch.isfinite(v).all() for v in weights.values())
    assert epochs_in(out) == [1]


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
time.sleep(120)
"""


@needs_fashion
def test_second_writer_is_refused_naming_the_lock_holder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, _, err = run_cli([*TINY, "--epochs", "1", "--out", out], capsys)
        assert rc == 1 and one_line(err) and f"PID {holder.pid}" in err and "in use" in err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the dead holder's lock: the run proceeds
    rc, _, err = run_cli([*TINY, "--epochs", "1", "--out", out], capsys)
    assert rc == 0, err


@needs_fashion
def test_resume_of_a_finished_run_changes_nothing(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path)
    before = snapshot(out)
    rc, stdout, err = run_cli(
        [*TINY[:-1], "--epochs", "2", "--out", out, "--resume"], capsys
    )  # not --quiet
    assert rc == 0 and "complete" in stdout, err
    assert snapshot(out) == before

    rc, _, err = run_cli([*TINY, "--epochs", "4", "--out", out, "--resume"], capsys)
    assert rc == 2 and one_line(err) and "learning-rate schedule" in err
    assert snapshot(out) == before

    (out / "summary.json").unlink()  # killed after the last checkpoint, before the summary
    rc, _, err = run_cli([*TINY, "--epochs", "2", "--out", out, "--resume"], capsys)
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    old = json.loads((finished_run / "summary.json").read_text())
    assert summary["final_test_top1"] == old["final_test_top1"] is not None
    assert epochs_in(out) == [1, 2]


@needs_fashion
@pytest.mark.parametrize(
    "change, named",
    [
        (["--lr", "0.5"], "--lr"),
        (["--seed", "5"], "--seed"),
        (["--recipe", "paper"], "recipe"),
        (["--label-smoothing", "0.2"], "label_smoothing"),
        (["--max-train-samples", "192"], "--max-train-samples"),
    ],
)
def test_resume_refuses_changed_run_defining_values(partial_run, tmp_path, capsys, change, named):
    out = copy_run(partial_run, tmp_path)
    before = snapshot(out)
    rc, _, err = run_cli([*TINY, "--epochs", "3", "--out", out, "--resume", *change], capsys)
    assert rc == 2 and one_line(err) and named in err and "differs" in err, err
    assert snapshot(out) == before


@needs_fashion
def test_resume_accepts_and_records_changed_runtime_options(partial_run, tmp_path, capsys):
    out = copy_run(partial_run, tmp_path)
    rc, _, err = run_cli(
        [*TINY, "--epochs", "3", "--out", out, "--resume", "--workers", "1"], capsys
    )
    assert rc == 0, err
    record = json.loads((out / "run.json").read_text())
    assert [p["workers"] for p in record["processes"]][-1] == 1
    assert len(record["processes"]) == 2 and record["defining"]["seed"] == 0


@needs_fashion
def test_full_disk_stops_with_one_line_and_removes_the_temp_folder(tmp_path, capsys, monkeypatch):
    real = checkpoint._write_file

    def write(path, data):
        if path.parent.name.startswith(".epoch-0002.ckpt.tmp-") and path.name == "config.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(checkpoint, "_write_file", write)
    out = tmp_path / "run"
    rc, _, err = run_cli([*TINY, "--epochs", "2", "--out", out], capsys)
    assert rc == 1 and one_line(err), err
    assert "No space left on device" in err and "epoch-0002.ckpt" in err
    assert "last good checkpoint" in err and "-> epoch-0001.ckpt" in err
    assert not list(out.glob(".*tmp*")), "the partial folder keeps the disk full"
    assert os.readlink(out / "last.ckpt") == "epoch-0001.ckpt"
    load_checkpoint(out / "last.ckpt")


def test_checkpoint_files_follow_the_umask(tmp_path):
    from mobilenets import create_model

    old = os.umask(0o022)
    try:
        folder = checkpoint.save_checkpoint(
            tmp_path / "c", create_model("mobilenet_v1", width_mult=0.25), training_state={"a": 1}
        )
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in folder.iterdir()}
    assert modes == dict.fromkeys(
        ("model.safetensors", "config.json", "training_state.pt"), "0o644"
    )


@needs_fashion
def test_metrics_rewrite_survives_a_kill_and_leftovers_are_cleaned(
    partial_run, tmp_path, capsys, monkeypatch
):
    out = copy_run(partial_run, tmp_path)
    rows = (out / "metrics.jsonl").read_text()
    (out / ".epoch-0003.ckpt.tmp-999999").mkdir()
    (out / ".last.ckpt.tmp-999999").symlink_to("epoch-0009.ckpt")
    (out / ".epoch-0002.ckpt.old-999999").mkdir()
    (out / ".metrics.jsonl.tmp-999999").write_text("partial")
    real_fsync = os.fsync

    def fsync(fd):  # a kill while --resume rewrites metrics.jsonl
        if "metrics.jsonl" in os.readlink(f"/proc/self/fd/{fd}"):
            assert (out / "metrics.jsonl").read_text() == rows  # the old file is still whole
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rc, _, _ = run_cli([*TINY, "--epochs", "3", "--out", out, "--resume"], capsys)
    assert rc == 130 and (out / "metrics.jsonl").read_text() == rows
    monkeypatch.setattr(os, "fsync", real_fsync)
    rc, _, err = run_cli([*TINY, "--epochs", "3", "--out", out, "--resume"], capsys)
    assert rc == 0, err
    assert epochs_in(out) == [1, 2, 3]
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@needs_fashion
@pytest.mark.parametrize("damage", ["truncated weights", "incomplete state"])
def test_damaged_checkpoint_files_are_named_on_resume(partial_run, tmp_path, capsys, damage):
    out = copy_run(partial_run, tmp_path)
    last = out / "last.ckpt"
    if damage == "truncated weights":
        data = (last / "model.safetensors").read_bytes()
        (last / "model.safetensors").write_bytes(data[: len(data) // 2])
        expect = "model.safetensors: unreadable weights"
    else:
        state = load_training_state(last)
        del state["optimizer"]
        torch.save(state, last / "training_state.pt")
        expect = "training_state.pt: incomplete training state (missing optimizer)"
    before = snapshot(out)
    rc, _, err = run_cli([*TINY, "--epochs", "3", "--out", out, "--resume"], capsys)
    assert rc == 1 and one_line(err) and expect in err, err
    assert snapshot(out) == before


def test_run_folder_markers_include_broken_links(tmp_path):
    from mobilenets import runfolder

    (tmp_path / "best.ckpt").symlink_to("epoch-0001.ckpt")
    assert runfolder.markers(tmp_path) == ["best.ckpt"]


def test_resume_accepts_a_record_written_with_an_older_config_schema(tmp_path):
    """run.json written before ``expansion_activation`` (schema 3) defines the same model: resume
    goes on; a model that differs is still refused in one line."""
    from mobilenets.config import ModelConfig
    from mobilenets.errors import UsageError
    from mobilenets.runfolder import RECORD, check_record

    model = ModelConfig("mobilenet_v2", 0.35).to_dict()
    old = {k: v for k, v in model.items() if k != "expansion_activation"}
    (tmp_path / RECORD).write_text(
        json.dumps({"defining": {"model": {**old, "schema_version": 3}}, "epochs": 1})
    )
    check_record(tmp_path, {"model": model}, 1, started=True)
    linear = {**model, "expansion_activation": "linear"}
    with pytest.raises(UsageError, match="expansion_activation: stored 'nonlinear'"):
        check_record(tmp_path, {"model": linear}, 1, started=True)
