"""Decoding and evaluation preprocessing shared by ``eval``, ``predict`` and export checks.

Images travel as uint8 tensors (N, C, H, W) until :func:`to_model_input`, which adapts the
channels to the model, resizes to its resolution and normalizes. ``crop_pct`` < 1 resizes the
shorter side to ``resolution / crop_pct`` and center-crops (the ImageNet evaluation protocol);
``crop_pct`` = 1 resizes the whole image (small datasets such as Fashion-MNIST and CIFAR).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .errors import MobilenetsError

if TYPE_CHECKING:
    from .preprocess import Preprocess


def decode_image(path: str | Path, in_chans: int) -> torch.Tensor:
    """Read an image file as a uint8 (C, H, W) tensor with ``in_chans`` channels, upright.

    The EXIF orientation is applied, and every mode Pillow opens becomes 8-bit gray or RGB
    (see :func:`pil_to_tensor`). Raises MobilenetsError naming the file when it is missing,
    corrupt, not an image, a decompression bomb, or holds values that 8 bits cannot represent.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return pil_to_tensor(im, in_chans, str(path))
    except FileNotFoundError:
        raise MobilenetsError(f"{path}: no such image file") from None
    except Image.DecompressionBombError as e:
        raise MobilenetsError(f"{path}: not a readable image ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise MobilenetsError(f"{path}: not a readable image ({e.__class__.__name__})") from None


def probe_image(path: str | Path) -> bool:
    """Whether Pillow recognizes ``path`` as an image of a sane size (reads the header only)."""
    from PIL import Image

    try:
        with Image.open(path):
            return True
    except Exception:  # UnidentifiedImageError, OSError, DecompressionBombError...
        return False


def pil_to_tensor(im, in_chans: int, name: str = "image") -> torch.Tensor:
    """A PIL image as an upright uint8 (C, H, W) tensor with ``in_chans`` channels.

    - EXIF orientation is applied (``ImageOps.exif_transpose``);
    - 16-bit gray (``I;16*``) keeps its top 8 bits (``>> 8``): scaled, not clipped;
    - float ``F`` images whose values all lie in 0..1 are intensities in 0..1 (the float
      convention): scaled by 255; other ``F`` and 32-bit ``I`` images must hold values in
      0..255 (else MobilenetsError);
    - transparency (``RGBA``, ``LA``, ``PA``, ``P`` or ``L``/``RGB`` with a transparent color)
      is composited onto white, as viewers show such images on a page;
    - other modes (``1``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``...) use Pillow's conversion.
    """
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16"):
        im = Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8))
    elif im.mode in ("I", "F"):
        arr = np.asarray(im)
        if (
            im.mode == "F"
            and arr.size
            and np.isfinite(arr).all()
            and 0 <= arr.min() <= arr.max() <= 1
        ):
            arr = arr * 255.0
        if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 255):
            kind = "32-bit integer" if im.mode == "I" else "floating-point"
            raise MobilenetsError(
                f"{name}: {kind} image with values {arr.min()}..{arr.max()} outside 0..255; "
                f"convert it to 8 bits"
            )
        im = Image.fromarray(np.rint(arr).astype(np.uint8))
    elif im.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im.alpha_composite(rgba)
    target = "L" if in_chans == 1 else "RGB"
    if im.mode != target:
        try:
            im = im.convert(target)
        except ValueError:  # e.g. LAB has no direct conversion to L
            im = im.convert("RGB").convert(target)
    arr = np.asarray(im, dtype=np.uint8).copy()
    t = torch.from_numpy(arr)
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    return adapt_channels(t.unsqueeze(0), in_chans)[0]


def adapt_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Gray -> repeat, RGB -> gray by the mean, otherwise repeat/truncate channels cyclically."""
    c = x.shape[1]
    if c == in_chans:
        return x
    if in_chans == 1:
        return (
            x.float().mean(1, keepdim=True).round().to(x.dtype)
            if x.dtype == torch.uint8
            else x.mean(1, keepdim=True)
        )
    idx = torch.arange(in_chans) % c
    return x[:, idx]


def to_model_input(
    images: torch.Tensor,
    resolution: int,
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int | None = None,
    crop_pct: float = 1.0,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalized float (N, in_chans, resolution, resolution)."""
    kw = {"mode": interpolation}
    if interpolation != "nearest":
        kw.update(antialias=True, align_corners=False)
    x = images if in_chans is None else adapt_channels(images, in_chans)
    x = x.float().div_(255.0)
    h, w = x.shape[-2:]
    if crop_pct < 1.0:
        short = round(resolution / crop_pct)
        scale = short / min(h, w)
        size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
        x = F.interpolate(x, size=size, **kw)
        top = (size[0] - resolution) // 2
        left = (size[1] - resolution) // 2
        x = x[..., top : top + resolution, left : left + resolution]
    elif (h, w) != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), **kw)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def preprocess_images(prep: Preprocess, images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) images -> the model input that the record ``prep`` describes."""
    return to_model_input(
        images,
        prep.resolution,
        prep.mean,
        prep.std,
        prep.in_chans,
        prep.crop_pct,
        prep.interpolation,
    )
