"""Training curves and confusion matrices as PNG files (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss and top-1 accuracy (train and val) against epoch, from ``metrics.jsonl`` rows."""
    plt = _pyplot()
    ep = [h["epoch"] for h in history]
    held_out = history[-1].get("eval_set", "val") if history else "val"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(ep, [h["val_loss"] for h in history], "o-", label=held_out)
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.plot(ep, [100 * h["train_top1"] for h in history], "o-", label="train")
    ax2.plot(ep, [100 * h["val_top1"] for h in history], "o-", label=held_out)
    ax2.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_confusion(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path
) -> Path:
    """A confusion matrix (rows: true class, columns: predicted class) as a heat map."""
    import numpy as np

    plt = _pyplot()
    m = np.asarray(matrix)
    n = len(class_names)
    size = min(4 + 0.45 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=90)
        ax.set_yticks(range(n), class_names)
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(m[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if m[i, j] > m.max() / 2 else "black",
                )
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix (n={int(m.sum())})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
