"""V2 paper Fig. 1: ReLU collapses low-dimensional embeddings of a 2-D spiral.

A spiral ``X`` (2 x N) is embedded by a random Gaussian matrix ``T`` (n x 2) into n dimensions,
passed through ReLU, and mapped back with T's pseudo-inverse: ``X' = pinv(T) ReLU(T X)``.
Two errors per n, both relative to ``||X||``:

- ``error``: ``||X' - X|| / ||X||``, the paper's map as it is;
- ``shape_error``: the same after the best single scale factor s (least squares), because for
  large n, ``pinv(T) ReLU(T x)`` tends to ``x / 2`` (ReLU keeps half of the random directions):
  the spiral's shape survives, only its scale halves.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DIMENSIONS = (2, 3, 5, 15, 30)  # the paper's panels


def spiral(points: int = 1000, turns: float = 2.0) -> np.ndarray:
    """A 2-D spiral around the origin, shape (2, points)."""
    t = np.linspace(0.3, 2 * np.pi * turns, points)
    return np.stack([t * np.cos(t), t * np.sin(t)]) / (2 * np.pi * turns)


def relu_roundtrip(x: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``pinv(T) ReLU(T x)`` for a random Gaussian ``T`` of shape (n, 2)."""
    t = np.random.default_rng(seed).standard_normal((n, x.shape[0]))
    return np.linalg.pinv(t) @ np.maximum(t @ x, 0.0)


def errors(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(relative error, relative error after the best scale) of ``y`` against ``x``."""
    norm = float(np.linalg.norm(x))
    scale = float((x * y).sum() / max((y * y).sum(), 1e-30))
    return float(np.linalg.norm(y - x)) / norm, float(np.linalg.norm(scale * y - x)) / norm


def relu_collapse(
    dims: tuple[int, ...] = DIMENSIONS, seeds: int = 10, points: int = 1000
) -> dict[str, Any]:
    """Errors per n (mean over ``seeds`` random T) and the seed-0 reconstructions for the figure."""
    x = spiral(points)
    rows, curves = [], {}
    for n in dims:
        errs = np.array([errors(x, relu_roundtrip(x, n, s)) for s in range(seeds)])
        rows.append(
            {
                "n": n,
                "error": float(errs[:, 0].mean()),
                "shape_error": float(errs[:, 1].mean()),
                "shape_errors": [float(e) for e in errs[:, 1]],
            }
        )
        curves[n] = relu_roundtrip(x, n, 0)
    return {"seeds": seeds, "points": points, "rows": rows, "input": x, "outputs": curves}
