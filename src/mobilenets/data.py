"""Datasets for ``--data SPEC``: ``fashion-mnist``, ``cifar10:PATH``, ``cifar100:PATH``, ``imagefolder:PATH``.

Small datasets (Fashion-MNIST, CIFAR) live in memory as ONE uint8 tensor (N, C, H, W) that is
moved to the training device and augmented there in batches. ImageFolder trees (ImageNet
layout: ``PATH/train/<class>/*`` and ``PATH/val/<class>/*``) are decoded by a DataLoader.
Evaluation preprocessing is :func:`mobilenets.transforms.to_model_input`, the same code that
``predict`` uses, so that eval and predict see identical inputs.
"""

from __future__ import annotations

import functools
import gzip
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import MobilenetsError, UsageError
from .preprocess import Preprocess
from .transforms import adapt_channels, decode_image, preprocess_images, to_model_input

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Debian's dataset-fashion-mnist package installs the four gzipped IDX files here.
SYSTEM_FASHION_MNIST = [Path("/usr/share/datasets/fashion-mnist")]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Split:
    """One split: in-memory uint8 ``images`` (N, C, H, W), or image ``files`` decoded on demand."""

    labels: torch.Tensor
    images: torch.Tensor | None = None
    files: list[Path] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> Split:
        return Split(
            self.labels[idx],
            self.images[idx] if self.images is not None else None,
            [self.files[i] for i in idx.tolist()] if self.files is not None else None,
        )


@dataclass
class Dataset:
    """A dataset with its training defaults (resolution, channels, augmentation, crop_pct)."""

    name: str
    spec: str
    class_names: list[str]
    splits: dict[str, Split]
    channels: int
    resolution: int  # default training resolution
    small_input: bool  # default for the model's small_input option
    crop_pct: float  # evaluation crop, stored in checkpoints for predict
    pad: int = 0  # random-crop padding for in-memory data
    mean: tuple[float, ...] | None = None  # None: computed from the training images
    std: tuple[float, ...] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def in_memory(self) -> bool:
        return self.splits["train"].images is not None

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise UsageError(f"{self.name} has no {name!r} split (it has {', '.join(self.splits)})")
        return self.splits[name]

    def stats(self, in_chans: int) -> tuple[list[float], list[float]]:
        """Per-channel normalization for a model with ``in_chans`` input channels."""
        if self.mean is not None and self.std is not None:
            m = torch.tensor(self.mean).view(1, -1, 1, 1)
            s = torch.tensor(self.std).view(1, -1, 1, 1)
            return adapt_channels(m, in_chans).flatten().tolist(), adapt_channels(
                s, in_chans
            ).flatten().tolist()
        x = self.splits["train"].images[:20000]
        x = adapt_channels(x, in_chans).float().div_(255)
        return x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``'cifar10:/data/c10'`` -> ``('cifar10', '/data/c10')``."""
    kind, _, path = spec.partition(":")
    kind = kind.lower()
    if kind in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        return "fashion-mnist", path or None
    if kind in ("cifar10", "cifar100", "imagefolder"):
        if not path:
            raise UsageError(f"--data {kind} needs a folder: --data {kind}:PATH")
        return kind, path
    raise UsageError(
        f"unknown --data {spec!r}; use fashion-mnist, cifar10:PATH, cifar100:PATH or imagefolder:PATH"
    )


def load_dataset(spec: str, data_dir: str | Path | None = None) -> Dataset:
    """Load the dataset named by ``--data SPEC`` (see the module docstring)."""
    kind, path = parse_spec(spec)
    if kind == "fashion-mnist":
        return load_fashion_mnist(path or data_dir)
    if kind in ("cifar10", "cifar100"):
        return load_cifar(kind, Path(path))
    return load_imagefolder(Path(path))


# ---------------------------------------------------------------- Fashion-MNIST


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) as a uint8 array."""
    try:
        data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise MobilenetsError(f"{path}: unreadable IDX file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise MobilenetsError(f"{path}: not a uint8 IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise MobilenetsError(
            f"{path}: truncated IDX file ({len(data) - offset} bytes for shape {dims})"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find_idx(folder: Path, base: str) -> Path | None:
    for sub in ("", "fashion-mnist", "FashionMNIST/raw"):
        for name in (base, base + ".gz"):
            p = folder / sub / name
            if p.is_file():
                return p
    return None


def _fashion_from(folder: Path) -> dict[str, Split] | None:
    found = {s: [_find_idx(folder, b) for b in bases] for s, bases in FASHION_MNIST_FILES.items()}
    if any(p is None for paths in found.values() for p in paths):
        return None
    splits = {}
    for s, (img_path, lbl_path) in found.items():
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise MobilenetsError(f"{img_path}: images and labels do not match")
        check_labels(labels, len(FASHION_MNIST_CLASSES), lbl_path)
        splits[s] = Split(
            torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(images.copy()).unsqueeze(1)
        )
    return splits


def check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    """Refuse labels outside ``0..num_classes-1``, naming the file and the first bad one."""
    bad = np.flatnonzero(labels.astype(np.int64) >= num_classes)
    if len(bad):
        raise MobilenetsError(
            f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside "
            f"0..{num_classes - 1} ({len(bad)} such labels)"
        )


def _download_fashion_mnist(root: Path) -> Path:
    """Download into ``root/FashionMNIST/raw``; a failed download leaves no folder behind."""
    import shutil

    import torchvision

    made = not (root / "FashionMNIST").exists()
    try:
        torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
        torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
    except BaseException:
        if made:
            shutil.rmtree(root / "FashionMNIST", ignore_errors=True)
        raise
    return root


def _refuse_partial(folder: Path) -> None:
    """Refuse a ``--data-dir`` that holds some of the four IDX files but not all, naming the
    missing ones (a download there would mix two copies, and leave a folder behind)."""
    bases = [b for pair in FASHION_MNIST_FILES.values() for b in pair]
    missing = [b for b in bases if _find_idx(folder, b) is None]
    if missing and len(missing) < len(bases):
        raise MobilenetsError(
            f"--data-dir {folder}: Fashion-MNIST is incomplete there, missing "
            f"{', '.join(missing)}[.gz]; add them (nothing was downloaded)"
        )


def load_fashion_mnist(data_dir: str | Path | None = None) -> Dataset:
    """Fashion-MNIST from ``data_dir``, ``$MOBILENETS_DATA``, Debian's package, or a download.

    Set ``MOBILENETS_OFFLINE=1`` to never try the download.
    """
    env = os.environ.get("MOBILENETS_DATA")
    candidates: list[tuple[str, Path]] = []
    if data_dir:  # a folder the user names is the only place looked at
        candidates.append(("--data-dir", Path(data_dir)))
        if not Path(data_dir).is_dir():
            raise MobilenetsError(f"--data-dir {data_dir}: no such folder")
        _refuse_partial(Path(data_dir))
    else:
        if env:
            candidates.append(("$MOBILENETS_DATA", Path(env)))
        candidates += [("dataset-fashion-mnist", p) for p in SYSTEM_FASHION_MNIST]
    splits = None
    for _, folder in candidates:
        splits = _fashion_from(folder)
        if splits is not None:
            break
    download_error = "skipped: MOBILENETS_OFFLINE is set"
    if splits is None and not os.environ.get("MOBILENETS_OFFLINE"):
        root = Path(data_dir or env or Path.home() / ".cache" / "mobilenets")
        try:
            splits = _fashion_from(_download_fashion_mnist(root))
            download_error = "" if splits else "files missing after download"
        except Exception as e:  # torchvision raises URLError, RuntimeError, OSError...
            download_error = f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    if splits is None:
        looked = ", ".join(f"{what} ({p})" for what, p in candidates)
        raise MobilenetsError(
            f"Fashion-MNIST not found in {looked}; download {download_error}. "
            "Get it with `apt-get install dataset-fashion-mnist`, or put the four IDX files "
            "(train-images-idx3-ubyte[.gz], ...) in a folder given by --data-dir or $MOBILENETS_DATA"
        )
    return Dataset(
        "fashion-mnist",
        "fashion-mnist",
        list(FASHION_MNIST_CLASSES),
        splits,
        channels=1,
        resolution=28,
        small_input=True,
        crop_pct=1.0,
        pad=2,
    )


# ---------------------------------------------------------------- CIFAR


def load_cifar(kind: str, path: Path) -> Dataset:
    """CIFAR-10/100 from the standard python-pickle folder (``cifar-10-batches-py``) at ``path``."""
    import torchvision

    cls = torchvision.datasets.CIFAR10 if kind == "cifar10" else torchvision.datasets.CIFAR100
    root = path.parent if path.name == cls.base_folder else path
    splits = {}
    try:
        # torchvision unpickles the batch files; that is CIFAR's own distribution format
        # (numpy arrays and lists), and it checks their MD5 sums against the official release.
        for split, train in (("train", True), ("test", False)):
            d = cls(str(root), train=train, download=False)
            images = torch.from_numpy(np.ascontiguousarray(d.data)).permute(0, 3, 1, 2).contiguous()
            splits[split] = Split(torch.tensor(d.targets, dtype=torch.int64), images)
    except RuntimeError:
        raise MobilenetsError(
            f"{kind}: no valid {cls.base_folder} folder at {path}; download the python version "
            f"from https://www.cs.toronto.edu/~kriz/cifar.html and extract it there"
        ) from None
    return Dataset(kind, f"{kind}:{path}", list(d.classes), splits, 3, 32, True, 1.0, pad=4)


# ---------------------------------------------------------------- ImageFolder


def _imagefolder_split(root: Path, classes: list[str], train: bool) -> Split:
    """The files of ``root/<class>/*`` for the train/ ``classes``, labelled by class index;
    one-line errors for classes train/ lacks, an empty class folder in train/, no images."""
    extra = sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and not d.name.startswith(".") and d.name not in classes
    )
    if extra:
        raise MobilenetsError(
            f"imagefolder: {root} has classes not in train/: {', '.join(extra[:5])}"
        )
    files, labels = [], []
    for i, c in enumerate(classes):
        found = [
            f
            for f in (sorted((root / c).rglob("*")) if (root / c).is_dir() else [])
            if f.is_file() and not f.name.startswith(".")
        ]
        if train and not found:
            raise MobilenetsError(
                f"imagefolder: class folder {root / c} has no images (a class with no "
                f"training images cannot be learned; add images or remove the folder)"
            )
        files += found
        labels += [i] * len(found)
    if not files:
        raise MobilenetsError(f"imagefolder: no images in {root}")
    return Split(torch.tensor(labels, dtype=torch.int64), files=files)


def load_imagefolder(path: Path) -> Dataset:
    """An ImageNet-layout tree: ``path/train/<class>/*`` and ``path/val/<class>/*``.

    Every non-hidden file in a class folder counts as an image; one that does not decode is an
    error naming it, unless training runs with ``--skip-bad-images``. Hidden folders (``.*``)
    are skipped in train/ and val/ alike; one class folder in train/ gives a warning.
    """
    if not (path / "train").is_dir():
        raise MobilenetsError(
            f"imagefolder: {path / 'train'} is not a folder (expected {path}/train/<class>/*)"
        )
    classes = sorted(
        d.name for d in (path / "train").iterdir() if d.is_dir() and not d.name.startswith(".")
    )
    if not classes:
        raise MobilenetsError(f"imagefolder: no class folders in {path / 'train'}")
    if len(classes) == 1:  # every prediction is right: training reports a meaningless 100%
        warnings.warn(
            f"imagefolder: {path / 'train'} has one class folder ({classes[0]}): a model "
            f"trained on it is 100% accurate without learning anything; classification needs "
            f"at least 2 classes (hidden folders, named .*, are skipped)",
            stacklevel=2,
        )
    splits = {}
    for split, folder in (("train", "train"), ("test", "val")):
        if (path / folder).is_dir():
            splits[split] = _imagefolder_split(path / folder, classes, split == "train")
    if "test" not in splits:
        raise MobilenetsError(
            f"imagefolder: {path / 'val'} is not a folder (expected {path}/val/<class>/*)"
        )
    return Dataset(
        "imagefolder",
        f"imagefolder:{path}",
        classes,
        splits,
        3,
        224,
        False,
        0.875,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


class _FileDataset(torch.utils.data.Dataset):
    """Decodes one file; returns ``(image or None, label, path)`` so bad files never raise in workers."""

    def __init__(
        self, split: Split, in_chans: int, resolution: int, train: bool, mean, std, crop_pct: float
    ):
        self.split, self.in_chans, self.resolution, self.train = split, in_chans, resolution, train
        self.mean, self.std, self.crop_pct = mean, std, crop_pct
        if train:
            from torchvision.transforms import v2

            self.aug = v2.Compose(
                [v2.RandomResizedCrop(resolution, antialias=True), v2.RandomHorizontalFlip()]
            )

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        path = self.split.files[i]
        try:
            img = decode_image(path, self.in_chans)
        except MobilenetsError:
            return None, int(self.split.labels[i]), str(path)
        if self.train:
            return self.aug(img), int(self.split.labels[i]), None
        x = to_model_input(img[None], self.resolution, self.mean, self.std, None, self.crop_pct)[0]
        return x, int(self.split.labels[i]), None


def _collate(items):
    good = [(x, y) for x, y, bad in items if bad is None]
    bad = [b for _, _, b in items if b is not None]
    if not good:
        return None, None, bad
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), bad


class BadImages:
    """Files that failed to decode: raise naming the first, or count them with ``skip``."""

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.paths: set[str] = set()

    def add(self, paths: Sequence[str]) -> None:
        if paths and not self.skip:
            raise MobilenetsError(
                f"{paths[0]}: not a readable image (pass --skip-bad-images to skip such files)"
            )
        self.paths.update(paths)

    def __len__(self) -> int:
        return len(self.paths)


def check_images(split: Split, bad: BadImages, workers: int = 0) -> None:
    """Open every file of ``split`` (headers only) so an unreadable one stops before training.

    With ``--skip-bad-images`` (``bad.skip``) such files are recorded in ``bad`` instead.
    """
    if split.files is None:
        return
    from concurrent.futures import ThreadPoolExecutor

    from .transforms import probe_image

    with ThreadPoolExecutor(max(1, min(workers, 8))) as pool:
        failed = [
            str(p)
            for p, ok in zip(split.files, pool.map(probe_image, split.files), strict=True)
            if not ok
        ]
    bad.add(failed)


# ---------------------------------------------------------------- batches


def holdout(split: Split, n: int, seed: int) -> tuple[Split, Split]:
    """Split off ``n`` images (a seeded random choice) for validation: ``(train, val)``."""
    if not 0 < n < len(split):
        raise UsageError(f"--val-split must be between 1 and {len(split) - 1}, got {n}")
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(perm[n:].sort().values), split.subset(perm[:n].sort().values)


def random_crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Batched random crop (zero padding ``pad``) and horizontal flip of uint8 (N, C, H, W) on its device.

    The random numbers come from ``gen`` (CPU) so that results do not depend on the device.
    """
    n, c, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    if pad:
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
        xp = F.pad(x, (pad, pad, pad, pad))
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        b = torch.arange(n, device=x.device)[:, None, None, None]
        ch = torch.arange(c, device=x.device)[None, :, None, None]
        x = xp[b, ch, rows, cols]
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def train_batches(
    ds: Dataset,
    split: Split,
    batches: list[torch.Tensor],
    prep: Preprocess,
    gen: torch.Generator,
    device: torch.device,
    images_on_device: torch.Tensor | None,
    workers: int,
    bad: BadImages,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Augmented, normalized training batches for this rank's index lists ``batches``."""
    if images_on_device is not None:
        labels = split.labels.to(device)
        for idx in batches:
            dev_idx = idx.to(device)
            x = random_crop_flip(images_on_device[dev_idx], ds.pad, gen)
            yield (
                to_model_input(x, prep.resolution, prep.mean, prep.std, prep.in_chans, 1.0),
                labels[dev_idx],
            )
        return
    fds = _FileDataset(
        split, prep.in_chans, prep.resolution, True, prep.mean, prep.std, prep.crop_pct
    )
    loader = torch.utils.data.DataLoader(
        fds,
        batch_sampler=[b.tolist() for b in batches],
        num_workers=workers,
        collate_fn=_collate,
        generator=gen,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    for x, y, paths in loader:
        bad.add(paths)
        if x is None:
            continue
        x = x.to(device, non_blocking=True)
        yield (
            to_model_input(x, prep.resolution, prep.mean, prep.std, None, 1.0),
            y.to(device, non_blocking=True),
        )


def eval_batches(
    split: Split,
    prep: Preprocess,
    batch_size: int,
    device: torch.device,
    indices: torch.Tensor | None = None,
    workers: int = 0,
    bad: BadImages | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation batches (optionally only ``indices``), preprocessed as ``predict`` does."""
    idx = indices if indices is not None else torch.arange(len(split))
    if split.images is not None:
        for chunk in idx.split(batch_size):
            yield (
                preprocess_images(prep, split.images[chunk].to(device)),
                split.labels[chunk].to(device),
            )
        return
    bad = bad if bad is not None else BadImages(False)
    fds = _FileDataset(
        split, prep.in_chans, prep.resolution, False, prep.mean, prep.std, prep.crop_pct
    )
    loader = torch.utils.data.DataLoader(
        fds,
        batch_sampler=[c.tolist() for c in idx.split(batch_size)],
        num_workers=workers,
        collate_fn=_collate,
    )
    for x, y, paths in loader:
        bad.add(paths)
        if x is not None:
            yield x.to(device), y.to(device)


# ---------------------------------------------------------------- calibration and test inputs


@functools.lru_cache(maxsize=1)
def _dataset(spec: str, data_dir: str | None):
    return load_dataset(spec, data_dir)


def calibration_inputs(
    spec: str,
    prep: Preprocess,
    n: int = 512,
    data_dir: str | Path | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """``n`` training images (a seeded random choice) of dataset ``spec``, preprocessed by ``prep``.

    ``spec`` ``random`` gives standard-normal inputs: only for untrained models and timing.
    """
    if spec == "random":
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, prep.in_chans, prep.resolution, prep.resolution, generator=g)
    split = _dataset(spec, None if data_dir is None else str(data_dir)).split("train")
    idx = (
        torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    )
    xs = [x for x, _ in eval_batches(split, prep, 256, torch.device("cpu"), idx)]
    return torch.cat(xs)


def test_batches(
    spec: str,
    prep: Preprocess,
    n: int | None = None,
    data_dir: str | Path | None = None,
    batch_size: int = 256,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Preprocessed (inputs, labels) batches of the first ``n`` (default all) test images."""
    split = _dataset(spec, None if data_dir is None else str(data_dir)).split("test")
    idx = torch.arange(len(split) if n is None else min(n, len(split)))
    yield from eval_batches(split, prep, batch_size, torch.device("cpu"), idx)
