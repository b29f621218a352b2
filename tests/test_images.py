"""Training images and data folders: bad, huge, 16-bit, EXIF-rotated or mislabeled inputs are decoded, skipped or refused by name."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from support import SYSTEM, TINY, make_imagefolder, one_line, run_cli, write_idx

from mobilenets.errors import MobilenetsError

pytestmark = pytest.mark.usefixtures("one_thread")


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
