"""Classify image files with a checkpoint or an exported ``.onnx``/``.tflite`` file (any
:class:`mobilenets.backend.Backend`).

Decoding, resizing and normalization are :func:`transforms.decode_image` and
:func:`transforms.to_model_input`, the code evaluation uses, with the preprocessing stored in
the checkpoint or in the ONNX file's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import MobilenetsError, UsageError
from .preprocess import Preprocess
from .transforms import decode_image, preprocess_images

if TYPE_CHECKING:
    from .backend import ForeignInput

ImageLike = str | Path | torch.Tensor | np.ndarray  # or a PIL image


class Predictor:
    """A model ready to classify images: ``Predictor(path).predict(images_or_paths, top_k)``.

    ``path`` is a checkpoint folder (or ``last.ckpt``/``best.ckpt``) run in PyTorch, an
    exported ``.onnx`` file (fp32 or int8) run in onnxruntime (``threads`` intra-op threads,
    ``spin``: onnxruntime's ``session.intra_op.allow_spinning``; False on a busy machine), or a
    ``.tflite`` file run in LiteRT with its reference kernels (``fast``: its optimized kernels,
    which may differ by a few LSB) or, for int8 files without LiteRT, in the NumPy reference
    ``run_int8``. Its ``preprocessing`` is the :class:`Preprocess` record stored with the model.
    A ``.tflite`` file without our metadata (any converter's) takes ``foreign`` (class names,
    mean/std, resolution); what it did not get is assumed and said in ``assumed``.
    """

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        batch_size: int = 32,
        spin: bool = True,
        fast: bool = False,
        runtime: str | None = None,
        foreign: ForeignInput | None = None,
    ) -> None:
        from .backend import load_backend

        self.path = Path(path)
        self.batch_size = batch_size
        self.backend = load_backend(
            self.path, runtime, threads=threads, spin=spin, fast=fast, batch_size=batch_size,
            foreign=foreign,
        )  # fmt: skip
        meta = self.backend.meta
        self.model = getattr(self.backend, "model", None)
        self.config = meta.config
        self.class_names: list[str] = list(meta.class_names)
        self.preprocessing: Preprocess = meta.preprocess
        self.in_chans = self.config.in_chans
        self.assumed: str = meta.assumed

    def load(self, image: ImageLike) -> torch.Tensor:
        """An image file, a PIL image or a uint8 (C, H, W) / (H, W[, C]) array as uint8 (C, H, W)."""
        if isinstance(image, (str, Path)):
            return decode_image(image, self.in_chans)
        t = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image))
        if t.dtype != torch.uint8:
            raise UsageError(f"images must be uint8, got {t.dtype}")
        if t.ndim == 2:
            t = t[None]
        elif t.ndim == 3 and t.shape[0] not in (1, 3, 4) and t.shape[-1] in (1, 3, 4):
            t = t.permute(2, 0, 1)  # H, W, C
        if t.ndim != 3:
            raise UsageError(f"an image must have 2 or 3 dimensions, got shape {tuple(t.shape)}")
        return t

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (C, H, W) -> the model's float input (1, in_chans, R, R)."""
        return preprocess_images(self.preprocessing, image[None])

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> np.ndarray:
        """Logits for preprocessed float inputs (N, C, R, R); MobilenetsError if any is NaN/inf."""
        out = self.backend.logits(x)
        if not np.isfinite(out).all():
            raise MobilenetsError(
                f"{self.path}: the model gives non-finite outputs (NaN/inf); its weights are "
                "broken (was training diverging?)"
            )
        return out

    def predict(
        self, images: ImageLike | Sequence[ImageLike], top_k: int = 5
    ) -> list[list[dict[str, Any]]]:
        """The ``top_k`` classes of each image: ``[[{"class", "index", "prob"}, ...], ...]``.

        ``images``: file paths or uint8 arrays (any size; each is resized as in evaluation).
        A file that cannot be decoded raises :class:`MobilenetsError` naming it.
        """
        if (
            isinstance(images, (str, Path))
            or hasattr(images, "getpixel")
            or (isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim <= 3)
        ):
            images = [images]
        if top_k < 1:
            raise UsageError(f"top_k must be >= 1, got {top_k}")
        if len(images) == 0:
            return []
        x = torch.cat([self.preprocess(self.load(im)) for im in images])
        return self.rank(self.logits(x), top_k)

    def rank(self, logits: np.ndarray, top_k: int) -> list[list[dict[str, Any]]]:
        """Softmax probabilities of the ``top_k`` classes per row of ``logits``."""
        z = logits.astype(np.float64)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        k = min(top_k, p.shape[1])
        order = np.argsort(-p, axis=1, kind="stable")[:, :k]
        return [
            [{"class": self.class_names[i], "index": int(i), "prob": float(row[i])} for i in idx]
            for row, idx in zip(p, order, strict=True)
        ]
