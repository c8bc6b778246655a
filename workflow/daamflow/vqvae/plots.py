"""The VQ-VAE's figures: a run's loss and perplexity curves, and mosaics of originals above reconstructions."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from daamflow.atomic import atomic_write


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(path: Path, history: list[dict[str, float]], title: str) -> None:
    plt = _figure()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(10, 3.6))
    trained = [r for r in history if "train_loss" in r]
    for key, label in (("train_loss", "train loss (recon + VQ)"), ("train_recon_mse", "train recon MSE")):
        ax_loss.plot([r["epoch"] for r in trained], [r[key] for r in trained], marker="o", label=label)
    ax_loss.plot(epochs, [r["test_mse"] for r in history], marker="s", label="held-out recon MSE (clamped)")
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log", title=title)
    ax_loss.legend(fontsize=8)
    ax_ppl.plot(epochs, [r["test_perplexity"] for r in history], marker="s", color="C3")
    ax_ppl.set(xlabel="epoch", ylabel="held-out codebook perplexity", title="codebook perplexity")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


def plot_grid(path: Path, originals: np.ndarray, rows: list[tuple[str, np.ndarray]]) -> None:
    """Originals in the first row, one row per (label, reconstructions) below; one mosaic image (fast to draw)."""
    plt = _figure()
    all_rows = [("originals", originals), *rows]
    n, c, h, w = originals.shape
    pad = 2
    mosaic = np.ones((len(all_rows) * (h + pad) - pad, n * (w + pad) - pad, c), dtype=np.float32)
    for r, (_, images) in enumerate(all_rows):
        for i in range(n):
            top, left = r * (h + pad), i * (w + pad)
            mosaic[top:top + h, left:left + w] = np.clip(images[i], 0, 1).transpose(1, 2, 0)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * n + 1.5), 0.9 * len(all_rows) + 0.3))
    ax.imshow(mosaic[..., 0] if c == 1 else mosaic, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * (h + pad) + h / 2 for r in range(len(all_rows))], [label for label, _ in all_rows], fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=150))
    plt.close(fig)
