"""Tables and figures from the run contracts: per dataset and protocol, methods × folds/seeds in the paper's shape.

Accuracies are percentages; mean ± std over folds/seeds uses the population std (ddof=0), as the paper mostly did
(dossier §8.8). Every table is one CSV (the data) rendered to Markdown and LaTeX; ``summary.md`` links them and
``summary.json`` holds the headline metrics (DVC `metrics`).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .atomic import atomic_write, write_csv, write_json, write_text  # noqa: E402

log = logging.getLogger(__name__)

METHOD_ORDER = [
    "linear", "weighted_sum", "identity", "mha", "mha_bn", "gqa", "gqdaam", "daam_v2", "daam_v1", "mixture",
    "lora_r4", "lora_r8", "loraplus_r4", "loraplus_r8",
]
STAND_IN_NOTE = (
    "Numbers on the embedded default come from offline stand-ins (small real datasets and tiny or small encoders); "
    "they test the pipeline and are **not** the paper's numbers."
)


def load_runs(paths: list[Path]) -> pd.DataFrame:
    frames = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"run table missing: {path} (run `daamflow train` for it first)")
        frames.append(pd.read_csv(path))
    if not frames:
        raise ValueError("no run tables given")
    runs = pd.concat(frames, ignore_index=True)
    runs["accuracy_pct"] = 100 * runs["accuracy"]
    return runs


def _order(methods) -> list[str]:
    known = [m for m in METHOD_ORDER if m in set(methods)]
    return known + sorted(set(methods) - set(known))


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
    table = table.loc[_order(table.index)]
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
    wide = wide.join(params).loc[_order(stats.index.get_level_values(0).unique())]
    return wide.reset_index()


def _display(table: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """Human-readable copy: one decimal like the paper, mean ± std merged, counts with thousands separators."""
    shown = table.copy()
    for stat_mean in [c for c in shown.columns if c == "mean" or c.endswith("_mean")]:
        prefix = stat_mean[: -len("mean")]
        shown[f"{prefix}μ ± σ"] = [
            f"{m:.1f} ± {s:.2f}" if pd.notna(m) else "" for m, s in zip(shown[stat_mean], shown[f"{prefix}std"])
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


def write_table(table: pd.DataFrame, stem: Path, caption: str, digits: int = 1) -> list[Path]:
    """``stem``.csv (full precision), .md and .tex (rendered with ``digits`` decimals)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    shown = _display(table, digits)
    md = f"**{caption}**\n\n" + shown.to_markdown(index=False) + "\n"
    tex = shown.to_latex(index=False, caption=caption, label=f"tab:{stem.name}")
    outputs = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")]
    write_csv(outputs[0], table)
    write_text(outputs[1], md)
    write_text(outputs[2], tex)
    return outputs


def accuracy_figure(runs: pd.DataFrame, path: Path, title: str) -> None:
    """Per-fold accuracy of each method (dots) with the mean (bar), one colour per protocol."""
    methods = _order(runs["method"].unique())
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


def dataset_report(runs: pd.DataFrame, tables_dir: Path, figures_dir: Path) -> list[Path]:
    """Tables (one per protocol + the protocols side by side) and the accuracy figure of each dataset in ``runs``."""
    written = []
    for dataset, ds_runs in runs.groupby("dataset", sort=True):
        encoder = ds_runs["encoder"].iloc[0]
        for protocol, pr_runs in ds_runs.groupby("protocol", sort=True):
            unit = "folds" if pr_runs["fold"].iloc[0].startswith("fold") else "seeded runs"
            caption = f"{dataset} ({encoder}), protocol '{protocol}': accuracy (%) per {unit}, mean ± population std"
            written += write_table(fold_table(pr_runs), tables_dir / f"{dataset}_{protocol}", caption)
        written += write_table(
            protocol_table(ds_runs), tables_dir / f"{dataset}_protocols",
            f"{dataset} ({encoder}): accuracy (%) under each protocol, with parameter counts",
        )
        figure = figures_dir / f"{dataset}_accuracy.png"
        accuracy_figure(ds_runs, figure, f"{dataset} ({encoder})")
        written.append(figure)
    return written


def summary(runs: pd.DataFrame, out_md: Path, out_json: Path, stand_in: bool = True) -> dict:
    """``summary.md`` (each dataset's protocol table, links to every table) and ``summary.json`` (mean/std)."""
    lines = ["# daamflow results", ""]
    if stand_in:
        lines += [f"> {STAND_IN_NOTE}", ""]
    metrics: dict = {}
    for dataset, ds_runs in runs.groupby("dataset", sort=True):
        encoder = ds_runs["encoder"].iloc[0]
        links = ", ".join(f"[{p}]({dataset}_{p}.md)" for p in sorted(ds_runs["protocol"].unique()))
        lines += [
            f"## {dataset} ({encoder})", "",
            f"Per fold/seed: {links}; side by side: [{dataset}_protocols.md]({dataset}_protocols.md).", "",
            _display(protocol_table(ds_runs)).to_markdown(index=False), "",
            f"![{dataset} accuracy](../figures/{dataset}_accuracy.png)", "",
        ]
        for protocol, pr_runs in ds_runs.groupby("protocol", sort=True):
            table = fold_table(pr_runs)
            metrics.setdefault(dataset, {})[protocol] = {
                row["method"]: {"mean": round(float(row["mean"]), 4), "std": round(float(row["std"]), 4)}
                for _, row in table.iterrows()
            }
    out_md.parent.mkdir(parents=True, exist_ok=True)
    write_text(out_md, "\n".join(lines) + "\n")
    write_json(out_json, metrics)
    return metrics


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="part", required=True, metavar="part")
    d = sub.add_parser("dataset", help="tables and figure of the datasets in the given run tables")
    d.add_argument("--runs", nargs="+", required=True, type=Path, help="runs.csv files written by `daamflow train`")
    d.add_argument("--tables", required=True, type=Path, help="output folder for tables (csv, md, tex)")
    d.add_argument("--figures", required=True, type=Path, help="output folder for figures (png)")
    s = sub.add_parser("summary", help="summary.md and summary.json over all run tables")
    s.add_argument("--runs", nargs="+", required=True, type=Path, help="runs.csv files written by `daamflow train`")
    s.add_argument("--out-md", required=True, type=Path)
    s.add_argument("--out-json", required=True, type=Path)
    s.add_argument("--paper-grid", action="store_true", help="real datasets and encoders: no stand-in disclaimer")


def main(args: argparse.Namespace) -> int:
    runs = load_runs(args.runs)
    if args.part == "dataset":
        written = dataset_report(runs, args.tables, args.figures)
        log.info("wrote %d files", len(written))
    else:
        summary(runs, args.out_md, args.out_json, stand_in=not args.paper_grid)
        log.info("summary -> %s", args.out_md)
    return 0
