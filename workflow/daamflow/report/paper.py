"""The paper's tables with ours beside the published numbers (config/published.yaml).

For a dataset that is (or stands in for) one of the paper's (``paper_dataset``), each protocol gets the paper's table
regenerated with, per cell, ours, the published number and Δ = ours − published (``*_vs_paper``);
``paper_summary_table`` is the paper's summary table (best DAAM / MHA / best LoRA) in the same form.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from daamflow import catalog
from daamflow.report.claims import lora_candidates
from daamflow.report.published import UNITS, load_published, published_parameters, published_table
from daamflow.report.tables import fold_table, write_table

PAPER_NAMES = {"iemocap": "IEMOCAP", "cifar100": "CIFAR-100", "agnews": "AG News"}
_OWN = ("params", "params_without_classifier")
SUMMARY_KEYS = ("mha", "best_lora", "best_daam", "delta_vs_mha", "delta_vs_lora")


def _nan(value) -> float:
    return float("nan") if value is None or pd.isna(value) else float(value)


def published_params_label(method: str, published: dict) -> str:
    """Table 1's parameter count for a method (millions, excluding the classifier), or the appendix Mixture count."""
    base = catalog.base(method)
    if base not in catalog.PUBLISHED_METHODS:
        return ""
    for table in ("v4", "mixture"):
        row = published_parameters(base, table, published)
        if row is not None:
            total, unit = row["total"], "M" if row["unit"] == "millions" else ""
            return f"{total[0]:g}–{total[1]:g}{unit}" if isinstance(total, list) else f"{total:g}{unit}"
    return ""


def paper_table(runs: pd.DataFrame, paper_dataset: str, published: dict | None = None) -> pd.DataFrame:
    """One dataset × protocol in the shape of the paper's table for ``paper_dataset``: the paper's rows in its order
    (a published row we did not run keeps empty "ours" cells), then our methods it lacks. Per fold/run column
    (F1.. or R1.., ours in our fold order) and for mean and std: ``<col>_ours``, ``<col>_published``,
    ``<col>_delta`` (ours − published); our parameter counts and Table 1's (``published_params``)."""
    pub_all = load_published() if published is None else published
    pub = published_table(paper_dataset, pub_all)
    prefix = UNITS[pub_all["accuracy"][paper_dataset]["unit"]]
    ours = fold_table(runs).set_index("method")
    folds = [c for c in ours.columns if c not in ("mean", "std", *_OWN)]
    columns = [f"{prefix}{i + 1}" for i in range(max(len(folds), len(pub.columns) - 2))]
    pairs = []  # (our method or None, published row or None)
    for m in pub.index:
        pairs += [(o, m) for o in ours.index if catalog.base(o) == m] or [(None, m)]
    pairs += [(o, None) for o in ours.index if catalog.base(o) not in pub.index]
    rows = []
    for mine, theirs in pairs:
        row = {"method": mine or theirs}
        ours_vals = {col: _nan(ours.loc[mine, f]) if mine else float("nan") for col, f in zip(columns, folds)}
        ours_vals.update({stat: _nan(ours.loc[mine, stat]) if mine else float("nan") for stat in ("mean", "std")})
        for col in [*columns, "mean", "std"]:
            o = ours_vals.get(col, float("nan"))
            p = _nan(pub.loc[theirs, col]) if theirs is not None and col in pub.columns else float("nan")
            row.update({f"{col}_ours": o, f"{col}_published": p, f"{col}_delta": o - p})
        for key in _OWN:
            row[key] = ours.loc[mine, key] if mine else float("nan")
        row["published_params"] = published_params_label(row["method"], pub_all)
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(ours: float, pub: float, std_ours: float | None = None, std_pub: float | None = None) -> str:
    """"ours (published; Δ)"; a side that is missing is left out."""
    fmt = (lambda m, s: f"{m:.1f}") if std_ours is None else (lambda m, s: f"{m:.1f} ± {s:.2f}")
    if pd.isna(ours) and pd.isna(pub):
        return ""
    if pd.isna(pub):
        return fmt(ours, std_ours)
    if pd.isna(ours):
        return f"– ({fmt(pub, std_pub)})"
    return f"{fmt(ours, std_ours)} ({fmt(pub, std_pub)}; {ours - pub:+.1f})"


def display_paper_table(table: pd.DataFrame) -> pd.DataFrame:
    """Readable copy of :func:`paper_table`: each cell "ours (published; Δ)"."""
    units = [c[: -len("_ours")] for c in table.columns if c.endswith("_ours") and c not in ("mean_ours", "std_ours")]
    shown = pd.DataFrame({"method": table["method"]})
    for unit in units:
        shown[unit] = [_cell(o, p) for o, p in zip(table[f"{unit}_ours"], table[f"{unit}_published"])]
    shown["μ ± σ"] = [
        _cell(om, pm, os_, ps) for om, pm, os_, ps in
        zip(table["mean_ours"], table["mean_published"], table["std_ours"], table["std_published"])
    ]
    shown["params (ours)"] = table["params"].map(lambda v: f"{int(v):,}" if pd.notna(v) else "")
    shown["params (paper, excl. classifier)"] = table["published_params"]
    return shown


def _paper_caption(dataset: str, encoder: str, protocol: str, paper_dataset: str, stand_in: bool, pub: dict) -> str:
    block = pub["accuracy"][paper_dataset]
    name = PAPER_NAMES[paper_dataset]
    caption = (
        f"{dataset} ({encoder}), protocol '{protocol}', beside the paper's {name} table ({block['source']}; "
        f"{block.get('encoder', '')}): accuracy (%), each cell ours (published; Δ = ours − published), "
        "mean ± population std; our fold/run k sits under the paper's k-th column"
    )
    if stand_in:
        caption += (
            f". STAND-IN: {dataset} stands in for {name}; the published numbers are the paper's {name} numbers, "
            "ours come from a small offline stand-in, so Δ measures the distance to the paper, not a reproduction"
        )
    return caption


def paper_report(
    runs: pd.DataFrame, paper_dataset: str, tables_dir: Path, stand_in: bool, published: dict | None = None
) -> list[Path]:
    """``{dataset}_{protocol}_vs_paper`` (csv, md, tex) for every dataset and protocol in ``runs``."""
    pub = load_published() if published is None else published
    written = []
    for dataset, ds_runs in runs.groupby("dataset", sort=True):
        encoder = ds_runs["encoder"].iloc[0]
        for protocol, pr_runs in ds_runs.groupby("protocol", sort=True):
            table = paper_table(pr_runs, paper_dataset, pub)
            caption = _paper_caption(dataset, encoder, protocol, paper_dataset, stand_in, pub)
            written += write_table(table, tables_dir / f"{dataset}_{protocol}_vs_paper", caption,
                                   shown=display_paper_table(table))
    return written


def paper_summary_table(runs: pd.DataFrame, paper_of: dict[str, str], published: dict | None = None) -> pd.DataFrame:
    """The paper's summary table (MHA, best LoRA, best DAAM and the two differences) per dataset and protocol, each
    as ours / published / Δ. Our best DAAM is the best of the main-table variants we ran, our best LoRA the best of
    LoRA r=4/r=8 (NaN where none ran)."""
    pub = load_published() if published is None else published
    rows = []
    for dataset, paper in paper_of.items():
        ref = pub["summary"]["datasets"][paper]
        for protocol, pr_runs in runs[runs["dataset"] == dataset].groupby("protocol", sort=True):
            means = pr_runs.groupby("method")["accuracy_pct"].mean()
            daam = [m for m in catalog.MAIN_DAAM if m in means.index]
            lora = lora_candidates(means.index)
            best_daam = max(daam, key=means.get) if daam else ""
            best_lora = max(lora, key=means.get) if lora else ""
            ours = {"mha": _nan(means.get("mha")), "best_lora": _nan(means.get(best_lora)),
                    "best_daam": _nan(means.get(best_daam))}
            ours["delta_vs_mha"] = ours["best_daam"] - ours["mha"]
            ours["delta_vs_lora"] = ours["best_daam"] - ours["best_lora"]
            row = {"dataset": dataset, "paper_dataset": paper, "modality": ref["modality"], "protocol": protocol,
                   "best_daam_method": best_daam, "best_daam_method_published": ref["best_daam_method"],
                   "best_lora_method": best_lora, "best_lora_method_published": ref["best_lora_method"]}
            for key in SUMMARY_KEYS:
                row.update({f"{key}_ours": ours[key], f"{key}_published": float(ref[key]),
                            f"{key}_delta": ours[key] - float(ref[key])})
            rows.append(row)
    return pd.DataFrame(rows)


def display_paper_summary(table: pd.DataFrame) -> pd.DataFrame:
    shown = pd.DataFrame({
        "dataset (protocol)": [f"{d} ({p})" for d, p in zip(table["dataset"], table["protocol"])],
        "paper dataset": [PAPER_NAMES[p] for p in table["paper_dataset"]],
    })
    labels = {"mha": "MHA", "best_lora": "best LoRA", "best_daam": "best DAAM", "delta_vs_mha": "DAAM − MHA",
              "delta_vs_lora": "DAAM − LoRA"}
    for key, label in labels.items():
        shown[label] = [_cell(o, p) for o, p in zip(table[f"{key}_ours"], table[f"{key}_published"])]
    shown["best DAAM / LoRA: ours (paper)"] = [
        f"{a or '–'} / {b or '–'} ({pa} / {pb})" for a, b, pa, pb in zip(
            table["best_daam_method"], table["best_lora_method"],
            table["best_daam_method_published"], table["best_lora_method_published"])
    ]
    return shown
