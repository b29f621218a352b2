"""Dataset loading, search order, augmentation and hold-out splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from support import needs_fashion, write_idx

from mobilenets import data
from mobilenets.errors import MobilenetsError, UsageError


def fake_fashion(folder: Path, n: int = 6, label: int = 3, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for img, lbl in data.FASHION_MNIST_FILES.values():
        write_idx(folder / img, rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(folder / lbl, np.full(n, label), gz)
    return folder


@pytest.fixture
def no_system(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", [tmp_path / "nowhere"])
    monkeypatch.delenv("MOBILENETS_DATA", raising=False)
    monkeypatch.setenv("MOBILENETS_OFFLINE", "1")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_gzipped_or_not(tmp_path, no_system, gz):
    ds = data.load_fashion_mnist(fake_fashion(tmp_path / "d", gz=gz))
    train = ds.split("train")
    assert train.images.shape == (6, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [3] * 6
    assert (ds.channels, ds.resolution, ds.small_input, ds.crop_pct) == (1, 28, True, 1.0)


def test_data_dir_comes_before_env(tmp_path, no_system, monkeypatch):
    monkeypatch.setenv("MOBILENETS_DATA", str(fake_fashion(tmp_path / "env", label=7)))
    assert data.load_fashion_mnist(None).split("test").labels[0] == 7
    assert (
        data.load_fashion_mnist(fake_fashion(tmp_path / "dir", label=1)).split("test").labels[0]
        == 1
    )
    # a --data-dir without the files stops the run (issue 7): it never falls through
    with pytest.raises(MobilenetsError, match="no such folder"):
        data.load_fashion_mnist(tmp_path / "empty")


def test_truncated_idx_is_named(tmp_path, no_system):
    folder = fake_fashion(tmp_path / "d", gz=False)
    f = folder / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(MobilenetsError, match="train-images-idx3-ubyte: truncated"):
        data.load_fashion_mnist(folder)


def test_missing_dataset_says_how_to_get_it(tmp_path, no_system):
    with pytest.raises(MobilenetsError) as e:
        data.load_fashion_mnist(tmp_path)
    msg = str(e.value)
    assert (
        "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg and "\n" not in msg
    )


@needs_fashion
def test_real_fashion_mnist():
    ds = data.load_dataset("fashion-mnist")
    assert len(ds.split("train")) == 60000 and len(ds.split("test")) == 10000
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert torch.bincount(ds.split("test").labels).tolist() == [1000] * 10
    mean, std = ds.stats(1)
    assert mean[0] == pytest.approx(0.286, abs=0.002) and std[0] == pytest.approx(0.353, abs=0.002)
    mean3, _ = ds.stats(3)
    assert mean3 == pytest.approx([mean[0]] * 3)


def test_spec_parsing():
    assert data.parse_spec("cifar10:/x") == ("cifar10", "/x")
    with pytest.raises(UsageError, match="needs a folder"):
        data.parse_spec("imagefolder")
    with pytest.raises(UsageError, match="unknown --data"):
        data.parse_spec("mnist")


def test_cifar_missing_folder_is_explained(tmp_path):
    with pytest.raises(MobilenetsError, match="cifar-10-batches-py"):
        data.load_dataset(f"cifar10:{tmp_path}")


def test_random_crop_flip():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.uint8).view(2, 1, 4, 5).repeat(50, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    flipped = data.random_crop_flip(x, 0, g)
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()
    a = data.random_crop_flip(x, 2, torch.Generator().manual_seed(1))
    b = data.random_crop_flip(x, 2, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    # every crop is a shifted window of the zero-padded image
    padded = torch.nn.functional.pad(x[:1], (2, 2, 2, 2))
    windows = {
        padded[0, :, i : i + 4, j : j + 5].flatten().tolist().__repr__()
        for i in range(5)
        for j in range(5)
    }
    windows |= {
        padded[0, :, i : i + 4, j : j + 5].flip(-1).flatten().tolist().__repr__()
        for i in range(5)
        for j in range(5)
    }
    assert a[0].flatten().tolist().__repr__() in windows


def test_holdout_is_disjoint_and_seeded():
    split = data.Split(torch.arange(100), torch.zeros(100, 1, 2, 2, dtype=torch.uint8))
    split.images[:, 0, 0, 0] = torch.arange(100, dtype=torch.uint8)
    train, val = data.holdout(split, 10, seed=5)
    assert len(train) == 90 and len(val) == 10
    assert not set(train.labels.tolist()) & set(val.labels.tolist())
    assert torch.equal(val.images[:, 0, 0, 0].long(), val.labels)
    assert torch.equal(data.holdout(split, 10, seed=5)[1].labels, val.labels)
    with pytest.raises(UsageError):
        data.holdout(split, 100, seed=0)


def test_imagefolder_layout(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (10, 12), "red").save(tmp_path / split / c / "a.png")
    (tmp_path / "train" / "dog" / ".DS_Store").write_bytes(b"junk")
    ds = data.load_dataset(f"imagefolder:{tmp_path}")
    assert ds.class_names == ["cat", "dog"] and ds.crop_pct == 0.875 and ds.resolution == 224
    assert len(ds.split("train")) == 2 and ds.split("test").labels.tolist() == [0, 1]
    prep = data.Preprocess(32, 3, *ds.stats(3), ds.crop_pct)
    ((x, y),) = list(data.eval_batches(ds.split("test"), prep, 8, torch.device("cpu")))
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [0, 1]


# ---------------------------------------------------------------- issue 20, item 12


def test_float_tiff_with_values_0_to_1_is_scaled_to_0_255(tmp_path):
    """A mode-F image holding 0..1 intensities (the float convention) is scaled by 255, not
    rounded to 0 and 1; a float image in 0..255 keeps its values."""
    from PIL import Image

    from mobilenets.transforms import decode_image

    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tiff")
    got = decode_image(tmp_path / "unit.tiff", 1)[0].numpy()
    assert got.min() == 0 and got.max() == 255
    np.testing.assert_array_equal(got, np.rint(unit * 255).astype(np.uint8))
    Image.fromarray(unit * 200, mode="F").save(tmp_path / "bytes.tiff")
    np.testing.assert_array_equal(
        decode_image(tmp_path / "bytes.tiff", 1)[0].numpy(), np.rint(unit * 200).astype(np.uint8)
    )


def test_imagefolder_with_one_class_warns_that_its_accuracy_means_nothing(tmp_path):
    from support import make_imagefolder

    root = make_imagefolder(tmp_path / "imgs")
    for split in ("train", "val"):
        shutil.rmtree(root / split / "square")
    with pytest.warns(UserWarning, match=r"one class folder \(circle\).*100%"):
        ds = data.load_imagefolder(root)
    assert ds.class_names == ["circle"]


def test_hidden_class_folder_is_skipped_in_train_and_val_alike(tmp_path):
    """``..dots`` starts with a dot: hidden, skipped in train/; it must not then be reported
    as "a class not in train/" of train/ itself, nor of val/."""
    from support import make_imagefolder

    root = make_imagefolder(tmp_path / "imgs")
    for split in ("train", "val"):
        shutil.copytree(root / split / "circle", root / split / "..dots")
    ds = data.load_imagefolder(root)
    assert ds.class_names == ["circle", "square"]
    assert len(ds.split("train")) == 12 and len(ds.split("test")) == 4


def fake_download(monkeypatch) -> list[Path]:
    """torchvision's FashionMNIST download replaced by one that makes its folder and fails."""
    import torchvision

    calls: list[Path] = []

    def download(root, train=True, download=False):
        calls.append(Path(root))
        (Path(root) / "FashionMNIST" / "raw").mkdir(parents=True, exist_ok=True)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", download)
    monkeypatch.delenv("MOBILENETS_OFFLINE", raising=False)
    return calls


def test_data_dir_with_only_the_training_files_is_refused_without_a_download(
    tmp_path, no_system, monkeypatch
):
    calls = fake_download(monkeypatch)
    folder = fake_fashion(tmp_path / "d")
    for name in data.FASHION_MNIST_FILES["test"]:
        (folder / f"{name}.gz").unlink()
    with pytest.raises(MobilenetsError, match="incomplete.*t10k-images-idx3-ubyte") as e:
        data.load_fashion_mnist(folder)
    assert "train-images" not in str(e.value) and calls == []
    assert sorted(p.name for p in folder.iterdir()) == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]


def test_failed_download_leaves_no_folder_behind(tmp_path, no_system, monkeypatch):
    calls = fake_download(monkeypatch)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MobilenetsError, match="download failed"):
        data.load_fashion_mnist(tmp_path / "empty")
    assert calls and list((tmp_path / "empty").iterdir()) == []


def test_mean_with_too_many_values_for_one_channel_says_one_value():
    with pytest.raises(UsageError) as e:
        data.Preprocess(28, 1, (0.1, 0.2), (0.3,))
    assert "mean needs 1 value (in_chans=1), got 2" in str(e.value)
    assert "1 or 1" not in str(e.value)
    with pytest.raises(UsageError, match=r"std needs 1 or 3 values \(in_chans=3\), got 2"):
        data.Preprocess(28, 3, (0.1,), (0.3, 0.2))
