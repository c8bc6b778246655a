"""Tables from the run contracts: per dataset and protocol, methods × folds/seeds in the paper's shape.

Accuracies are percentages; mean ± std over folds/seeds uses the population std (ddof=0), as the paper mostly did
(docs/paper-notes.md#88-standard-deviation-convention). Every table is one CSV (the data) rendered to Markdown and
LaTeX (``write_table``, used by every table of the report and the analyses).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from daamflow import catalog
from daamflow.atomic import write_csv, write_text


def _fold_key(name: str) -> int:
    return int("".join(ch for ch in name if ch.isdigit()) or 0)


def fold_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One dataset × protocol: rows = methods, columns = folds/seeds, mean, std (population), params."""
    wide = runs.pivot_table(index="method", columns="fold", values="accuracy_pct", aggfunc="first")
    wide = wide[sorted(wide.columns, key=_fold_key)]
    values = wide.to_numpy()
    table = wide.copy()
    table["mean"] = values.mean(axis=1)
    table["std"] = values.std(axis=1, ddof=0)
    params = runs.groupby("method")[["params", "params_without_classifier"]].first()
    table = table.join(params)
    table = table.loc[catalog.order(table.index)]
    table.columns.name = None
    return table.reset_index()


def protocol_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One dataset: rows = methods, columns = mean ± std under each protocol, and the parameter counts."""
    stats = runs.groupby(["method", "protocol"])["accuracy_pct"].agg(
        mean="mean", std=lambda s: float(np.std(s, ddof=0)), n="count"
    )
    wide = stats.unstack("protocol")
    wide.columns = [f"{p}_{stat}" for stat, p in wide.columns]
    params = runs.groupby("method")[["params", "params_without_classifier"]].first()
    wide = wide.join(params).loc[catalog.order(stats.index.get_level_values(0).unique())]
    return wide.reset_index()


def display_table(table: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """Human-readable copy: one decimal like the paper, mean ± std merged, counts with thousands separators."""
    shown = table.copy()
    for stat_mean in [c for c in shown.columns if c == "mean" or c.endswith("_mean")]:
        prefix = stat_mean[: -len("mean")]
        shown[f"{prefix}μ ± σ"] = [
            ("" if pd.isna(m) else f"{m:.1f}" if pd.isna(s) else f"{m:.1f} ± {s:.2f}")
            for m, s in zip(shown[stat_mean], shown[f"{prefix}std"])
        ]
        shown = shown.drop(columns=[stat_mean, f"{prefix}std"] + ([f"{prefix}n"] if f"{prefix}n" in shown else []))
    params = [c for c in shown.columns if c.startswith("params")]
    shown = shown[[c for c in shown.columns if c not in params] + params]  # accuracy first, counts last
    for col in shown.columns:
        if col.startswith("params"):
            shown[col] = shown[col].map(lambda v: f"{int(v):,}" if pd.notna(v) else "")
        elif shown[col].dtype.kind == "f":
            shown[col] = shown[col].map(lambda v: f"{v:.{digits}f}" if pd.notna(v) else "")
    return shown


def write_table(
    table: pd.DataFrame, stem: Path, caption: str, digits: int = 1, shown: pd.DataFrame | None = None,
    markdown: dict | None = None,
) -> list[Path]:
    """``stem``.csv (full precision), .md and .tex (rendered with ``digits`` decimals, or ``shown`` as given;
    ``markdown``: options of ``DataFrame.to_markdown``, e.g. column alignment)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    shown = display_table(table, digits) if shown is None else shown
    md = f"**{caption}**\n\n" + shown.to_markdown(index=False, **(markdown or {})) + "\n"
    tex = shown.to_latex(index=False, caption=caption, label=f"tab:{stem.name}")
    outputs = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")]
    write_csv(outputs[0], table)
    write_text(outputs[1], md)
    write_text(outputs[2], tex)
    return outputs
