"""Issue 7, training side: run folders are never overwritten or mixed, checkpoints are verified
and finite, bad or unusual images and data folders are handled, options are range-checked."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from support import SYSTEM, make_imagefolder, needs_fashion, run_cli, write_idx

from mobilenets import checkpoint, cli, train
from mobilenets.checkpoint import load_checkpoint, load_training_state
from mobilenets.errors import MobilenetsError, UsageError

TINY = [
    "train",
    "--model",
    "mobilenet_v1",
    "--width",
    "0.25",
    "--data",
    "fashion-mnist",
    "--batch-size",
    "64",
    "--max-train-samples",
    "128",
    "--max-eval-samples",
    "64",
    "--quiet",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


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


# ---------------------------------------------------------------- item 1


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


# ---------------------------------------------------------------- item 2, 10, 22


IMAGEFOLDER = [
    "train",
    "--model",
    "mobilenet_v1",
    "--width",
    "0.25",
    "--resolution",
    "32",
    "--epochs",
    "1",
    "--batch-size",
    "6",
    "--workers",
    "0",
    "--quiet",
]


def test_skip_bad_images_applies_to_evaluation_images(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "imgs")
    (root / "val" / "circle" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image")
    args = [*IMAGEFOLDER, "--data", f"imagefolder:{root}"]
    rc, _, err = run_cli([*args, "--out", tmp_path / "a"], capsys)
    assert rc == 1 and one_line(err) and "Thumbs.db" in err and "--skip-bad-images" in err
    assert not list((tmp_path / "a").glob("epoch-*")), "an epoch was trained before the check"
    rc, _, err = run_cli([*args, "--out", tmp_path / "b", "--skip-bad-images"], capsys)
    assert rc == 0, err
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["skipped_images"] == 1


def bomb_png(path: Path, side: int = 30000) -> None:
    """A PNG header claiming side x side pixels (900 MP, over Pillow's bomb limit)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_a_skippable_bad_image(tmp_path, capsys):
    from mobilenets.transforms import decode_image

    root = make_imagefolder(tmp_path / "imgs")
    bomb_png(root / "train" / "square" / "bomb.png")
    with pytest.raises(MobilenetsError, match="bomb.png: not a readable image"):
        decode_image(root / "train" / "square" / "bomb.png", 3)
    args = [*IMAGEFOLDER, "--data", f"imagefolder:{root}"]
    rc, _, err = run_cli([*args, "--out", tmp_path / "a"], capsys)
    assert rc == 1 and one_line(err) and "bomb.png" in err
    rc, _, err = run_cli([*args, "--out", tmp_path / "b", "--skip-bad-images"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["skipped_images"] == 1


def test_empty_class_folder_is_refused_naming_it(tmp_path):
    from mobilenets.data import load_imagefolder

    root = make_imagefolder(tmp_path / "imgs")
    (root / "train" / "triangle").mkdir()
    with pytest.raises(MobilenetsError, match="triangle has no images"):
        load_imagefolder(root)


# ---------------------------------------------------------------- item 3


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


# ---------------------------------------------------------------- item 4

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


# ---------------------------------------------------------------- item 5


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


# ---------------------------------------------------------------- item 6


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


# ---------------------------------------------------------------- item 7, 8


def test_16_bit_and_every_pillow_mode_decode_to_8_bits(tmp_path):
    from PIL import Image

    from mobilenets.transforms import decode_image

    ramp = (np.arange(32 * 24).reshape(24, 32) * 85).astype(np.uint16)  # 0..65195
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    got = decode_image(tmp_path / "g16.png", 1)[0].numpy()
    assert np.array_equal(got, (ramp >> 8).astype(np.uint8))  # scaled, not clipped at 255

    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.save(tmp_path / "p.png", transparency=0)
    t = decode_image(tmp_path / "p.png", 3)
    assert t[:, 0, 0].tolist() == [255, 255, 255] and t[:, 1, 1].tolist() == [10, 20, 30]

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[0, 0, 3], rgba[1, 1, 3] = 0, 255
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    t = decode_image(tmp_path / "rgba.png", 3)
    assert t[:, 0, 0].tolist() == [255] * 3 and t[:, 1, 1].tolist() == [200] * 3
    Image.fromarray(np.ascontiguousarray(rgba[..., [0, 3]])).save(tmp_path / "la.png")
    t = decode_image(tmp_path / "la.png", 1)
    assert t[0, 0, 0] == 255 and t[0, 1, 1] == 200

    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")
    assert decode_image(tmp_path / "cmyk.tif", 3)[:, 0, 0].tolist() == [255, 0, 0]

    Image.fromarray(np.full((4, 4), 77, np.int32)).save(tmp_path / "i.tif")
    assert decode_image(tmp_path / "i.tif", 1).unique().tolist() == [77]
    Image.fromarray(np.full((4, 4), 300, np.int32)).save(tmp_path / "i300.tif")
    Image.fromarray(np.full((4, 4), -1.5, np.float32)).save(tmp_path / "f.tif")
    for name in ("i300.tif", "f.tif"):
        with pytest.raises(MobilenetsError, match=rf"{name}: .* outside 0\.\.255") as e:
            decode_image(tmp_path / name, 3)
        assert "\n" not in str(e.value)

    from mobilenets.transforms import pil_to_tensor

    for mode in ("1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA", "RGBX"):
        for mode_chans in (1, 3):
            t = pil_to_tensor(Image.new(mode, (5, 3)), mode_chans)
            assert t.dtype == torch.uint8 and t.shape == (mode_chans, 3, 5), mode
    for mode in ("I;16", "I;16B", "I;16L"):
        im = Image.new(mode, (5, 3))
        im.putpixel((0, 0), 0xABCD)
        assert pil_to_tensor(im, 1)[0, 0, 0] == 0xAB, mode


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    from mobilenets.transforms import decode_image

    upright = np.zeros((20, 30, 3), np.uint8)
    upright[:5, :10] = 255  # a white block top-left
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as a sideways camera
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    stored.save(tmp_path / "sideways.png", exif=exif)
    got = decode_image(tmp_path / "sideways.png", 3).permute(1, 2, 0).numpy()
    assert np.array_equal(got, upright)


# ---------------------------------------------------------------- item 11


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


# ---------------------------------------------------------------- item 13, 20


def test_named_data_dir_is_used_or_the_run_stops(tmp_path, capsys, monkeypatch):
    from mobilenets import data

    monkeypatch.setenv("MOBILENETS_OFFLINE", "1")
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", [SYSTEM])  # a fallback that must not be used
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, says in ((tmp_path / "mispelled", "no such folder"), (empty, "not found in")):
        rc, _, err = run_cli(
            [*TINY, "--epochs", "1", "--data-dir", folder, "--out", tmp_path / "r"], capsys
        )
        assert rc == 1 and one_line(err) and str(folder) in err and says in err, err
        assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_fashion_mnist_labels_outside_0_9_are_refused_on_load(tmp_path):
    from mobilenets.data import load_fashion_mnist

    for images, labels, n in (
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 6),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 4),
    ):
        write_idx(tmp_path / images, np.zeros((n, 28, 28)))
        write_idx(tmp_path / labels, np.arange(n) % 10)
    assert len(load_fashion_mnist(tmp_path).splits["train"]) == 6  # valid files load
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 12, 3]))
    with pytest.raises(MobilenetsError, match=r"t10k-labels-idx1-ubyte: label 12 at index 2"):
        load_fashion_mnist(tmp_path)


# ---------------------------------------------------------------- item 17/18 (train)


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--label-smoothing", "5"),
        ("--label-smoothing", "1"),
        ("--ema-decay", "-1"),
        ("--weight-decay", "-5"),
        ("--weight-decay", "inf"),
        ("--width", "1e9"),
        ("--width", "inf"),
    ],
)
def test_train_option_ranges_are_one_line_usage_errors(tmp_path, capsys, flag, value):
    rc, _, err = run_cli([*TINY, "--epochs", "1", "--out", tmp_path / "r", flag, value], capsys)
    assert rc == 2 and one_line(err) and flag in err and "must be" in err, err
    assert not (tmp_path / "r").exists()


def test_fit_checks_the_same_ranges(tmp_path):
    with pytest.raises(UsageError, match=r"--label-smoothing must be in \[0, 1\)"):
        train.fit("mobilenet_v1", "fashion-mnist", tmp_path / "r", 1, label_smoothing=5.0)


# ---------------------------------------------------------------- item 24, 25, 26


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
