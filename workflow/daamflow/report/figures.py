"""Figures of the report: per-fold accuracy of each method beside its mean, one colour per protocol.

matplotlib is imported inside the functions: the table-only report jobs never draw.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from daamflow import catalog
from daamflow.atomic import atomic_write

DPI = 120


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_plot(runs: pd.DataFrame, title: str):
    """The figure (open: close it): per-fold accuracy of each method (dots) with the mean (bar), one colour per
    protocol, methods in the report's order."""
    plt = _pyplot()
    methods = catalog.order(runs["method"].unique())
    protocols = sorted(runs["protocol"].unique())
    width = 0.8 / len(protocols)
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(methods) + 2), 4))
    for j, proto in enumerate(protocols):
        sub = runs[runs["protocol"] == proto]
        for i, m in enumerate(methods):
            vals = sub.loc[sub["method"] == m, "accuracy_pct"].to_numpy()
            if len(vals) == 0:
                continue
            x = i + (j - (len(protocols) - 1) / 2) * width
            ax.bar(x, vals.mean(), width=width * 0.9, color=f"C{j}", alpha=0.35, label=proto if i == 0 else None)
            ax.scatter(np.full(len(vals), x), vals, color=f"C{j}", s=12, zorder=3)
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(title="protocol")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def accuracy_figure(runs: pd.DataFrame, path: Path, title: str) -> None:
    """:func:`accuracy_plot` saved to ``path`` (its suffix is the format) at ``DPI``."""
    fig = accuracy_plot(runs, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: fig.savefig(p, format=path.suffix[1:], dpi=DPI))
    _pyplot().close(fig)

