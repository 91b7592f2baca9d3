"""Figures people would rather look at than read; matplotlib with a non-interactive backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: Sequence[dict[str, float]], *, title: str) -> Any:
    """Train loss, validation AUC and validation logloss against epoch, side by side."""
    plt = _pyplot()
    epochs = [int(h["epoch"]) for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, key, label in zip(
        axes,
        ("train_loss", "valid_auc", "valid_logloss"),
        ("train loss", "validation AUC", "validation logloss"),
        strict=True,
    ):
        ax.plot(epochs, [h[key] for h in history], marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
