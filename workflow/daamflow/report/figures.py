"""Figures of the report: per-fold accuracy of each method beside its mean, one colour per protocol.

matplotlib is imported inside the functions: the table-only report jobs never draw.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from daamflow.atomic import atomic_write
from daamflow.report.tables import method_order


def accuracy_figure(runs: pd.DataFrame, path: Path, title: str) -> None:
    """Per-fold accuracy of each method (dots) with the mean (bar), one colour per protocol."""
    import matplotlib  # here, not at module level: the table-only report jobs never draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = method_order(runs["method"].unique())
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
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: fig.savefig(p, format=path.suffix[1:], dpi=120))
    plt.close(fig)

