"""Tables and figures from the run contracts: per dataset and protocol, methods × folds/seeds in the paper's shape.

Accuracies are percentages; mean ± std over folds/seeds uses the population std (ddof=0), as the paper mostly did
(docs/paper-notes.md#88-standard-deviation-convention). Every table is one CSV (the data) rendered to Markdown and LaTeX; ``summary.md`` links them and
``summary.json`` holds the headline metrics (DVC `metrics`).

For a dataset that is (or stands in for) one of the paper's (``paper_dataset``), each protocol also gets the paper's
table regenerated with, per cell, ours, the published number and Δ = ours − published (``*_vs_paper``);
``paper_summary`` is the paper's summary table (best DAAM / MHA / best LoRA) in the same form, ``parameters`` its
parameter table from the model registry, ``claims`` the headline claims with a paired comparison per protocol
(``daamflow.report.claims``), ``paired`` every DAAM method against every baseline. ``curves/`` holds plot-ready CSVs
(per-epoch history, per-layer IF and probe accuracy) for ``dvc plots``.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from daamflow.report import claims as C
from daamflow.atomic import atomic_write, write_csv, write_json, write_text
from daamflow.report.published import METHODS as PUBLISHED_METHODS
from daamflow.report.published import UNITS, load_published, published_parameters, published_table

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
    table: pd.DataFrame, stem: Path, caption: str, digits: int = 1, shown: pd.DataFrame | None = None
) -> list[Path]:
    """``stem``.csv (full precision), .md and .tex (rendered with ``digits`` decimals, or ``shown`` as given)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    shown = _display(table, digits) if shown is None else shown
    md = f"**{caption}**\n\n" + shown.to_markdown(index=False) + "\n"
    tex = shown.to_latex(index=False, caption=caption, label=f"tab:{stem.name}")
    outputs = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")]
    write_csv(outputs[0], table)
    write_text(outputs[1], md)
    write_text(outputs[2], tex)
    return outputs


def accuracy_figure(runs: pd.DataFrame, path: Path, title: str) -> None:
    """Per-fold accuracy of each method (dots) with the mean (bar), one colour per protocol."""
    import matplotlib  # here, not at module level: the table-only report jobs never draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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

# ---- the paper's tables, ours beside the published numbers ------------------------------------------------------

PAPER_NAMES = {"iemocap": "IEMOCAP", "cifar100": "CIFAR-100", "agnews": "AG News"}
_OWN = ("params", "params_without_classifier")
SUMMARY_KEYS = ("mha", "best_lora", "best_daam", "delta_vs_mha", "delta_vs_lora")


def _base(method: str) -> str:
    return method.split("@", 1)[0]


def _nan(value) -> float:
    return float("nan") if value is None or pd.isna(value) else float(value)


def published_params_label(method: str, published: dict) -> str:
    """Table 1's parameter count for a method (millions, excluding the classifier), or the appendix Mixture count."""
    base = _base(method)
    if base not in PUBLISHED_METHODS:
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
        pairs += [(o, m) for o in ours.index if _base(o) == m] or [(None, m)]
    pairs += [(o, None) for o in ours.index if _base(o) not in pub.index]
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
            daam = [m for m in C.MAIN_DAAM if m in means.index]
            lora = C.lora_candidates(means.index)
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


def parameters_report(tables_dir: Path) -> list[Path]:
    """The paper's parameter table (Table 1 and the appendix Mixture count) from the model registry
    (``daamflow.report.paramtable``), with the published value and the difference."""
    from daamflow.report.paramtable import render, parameter_table

    table = parameter_table()
    stem = Path(tables_dir) / "parameters"
    stem.parent.mkdir(parents=True, exist_ok=True)
    caption = ("Learnable parameters at the paper's encoder shapes (registry models, final classifier excluded as "
               "in Table 1) beside the published counts (P Table 1, Table 3)")
    outputs = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")]
    write_csv(outputs[0], table)
    write_text(outputs[1], f"**{caption}**\n\n" + render(table, "markdown") + "\n")
    write_text(outputs[2], "\\begin{table}\n\\caption{" + caption + "}\n\\label{tab:parameters}\n"
               + render(table, "latex") + "\\end{table}\n")
    return outputs


def claims_report(runs: pd.DataFrame, paper_of: dict[str, str], params_csv: Path, tables_dir: Path,
                  alpha: float = C.ALPHA, margins: dict | None = None, items: pd.DataFrame | None = None,
                  seeded: frozenset[str] | set[str] = frozenset(), published: dict | None = None) -> list[Path]:
    """``claims`` (each headline claim → published → ours per protocol → test → verdict), ``paired`` (every DAAM
    method against every baseline, Holm-adjusted p) and ``claims.json`` (the claims' numbers, DVC ``metrics``)."""
    pub = load_published() if published is None else published
    table = C.claims_table(runs, paper_of, pub, pd.read_csv(params_csv), alpha, margins, items, seeded)
    stand = ("; accuracy claims are evaluated on the stand-in datasets named in each row" if paper_of else "")
    items_note = (f"; on {', '.join(sorted(seeded))} (one fixed test set) the same test also runs over the test "
                  "items and both must reject" if seeded else "")
    written = write_table(
        table, Path(tables_dir) / "claims",
        f"The paper's headline claims against our runs: mean paired difference over folds/seeds with its "
        f"{100 * (1 - 2 * alpha):g}% t-interval, the claim's paired t-test (raw p and Holm-adjusted over the claims of "
        f"one dataset and protocol), verdict at α={alpha:g}, margin in accuracy points{items_note}{stand}. "
        "Parameter claims: the registry's counts at the paper's shapes, the bracket is the rounding interval of "
        "Table 1's LoRA count",
        shown=C.display_claims(table),
    )
    paired = C.paired_comparisons(runs, alpha)
    written += write_table(
        paired, Path(tables_dir) / "paired",
        f"Every DAAM method against every baseline: mean paired difference in accuracy points over folds/seeds, "
        f"{100 * (1 - alpha):g}% t-interval, two-sided paired t-test p, raw and Holm-adjusted over the comparisons "
        "of one dataset and protocol (no verdicts), parameter counts",
        shown=C.display_paired(paired),
    )
    write_json(Path(tables_dir) / "claims.json", C.claims_metrics(table))
    return [*written, Path(tables_dir) / "claims.json"]


# ---- plot-ready curves (DVC plots) --------------------------------------------------------------------------------

def history_curve(run_table: Path) -> tuple[str, pd.DataFrame]:
    """Per-epoch selection accuracy (%) and training loss of one runs.csv, averaged over its folds/seeds."""
    runs = pd.read_csv(run_table)
    frames = []
    for fold in runs["fold"]:
        path = Path(run_table).parent / fold / "history.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (every fold of {run_table} should have its history)")
        frames.append(pd.read_csv(path))
    history = pd.concat(frames, ignore_index=True)
    curve = history.groupby("epoch").agg(select_accuracy=("select_accuracy", "mean"),
                                         train_loss=("train_loss", "mean"), folds=("epoch", "size")).reset_index()
    curve["select_accuracy_pct"] = 100 * curve.pop("select_accuracy")
    name = "_".join(str(runs[k].iloc[0]) for k in ("dataset", "protocol", "method"))
    return name, curve[["epoch", "select_accuracy_pct", "train_loss", "folds"]]


def layer_curve(per_layer: Path, probe: Path | None) -> pd.DataFrame:
    """Per layer: share of the summed IF (%) and the linear probe's mean accuracy (%), empty when not probed (the
    column is always there: a `dvc plots` definition naming it fails on a file without it)."""
    table = pd.read_csv(per_layer)
    curve = pd.DataFrame({"layer": table["layer"], "if_share_pct": 100 * table["share_mean"]})
    acc = pd.read_csv(probe).groupby("layer")["accuracy"].mean() if probe is not None else pd.Series(dtype=float)
    curve["probe_accuracy_pct"] = 100 * curve["layer"].map(acc).astype(float)
    return curve


def write_curves(run_tables: list[Path], per_layer: list[Path], probes: list[Path], out_dir: Path) -> list[Path]:
    """``history/{dataset}_{protocol}_{method}.csv`` and ``layers/{dataset}_{protocol}.csv`` under ``out_dir``.

    ``per_layer`` and ``probes`` follow the workflow's layout (``…/{dataset}/{protocol}/per_layer.csv``,
    ``…/{dataset}/{protocol}/probe.csv``): dataset and protocol are read from the two parent folders."""
    written = []
    for path in run_tables:
        name, curve = history_curve(Path(path))
        target = Path(out_dir) / "history" / f"{name}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_csv(target, curve)
        written.append(target)
    key = lambda p: (Path(p).parent.parent.name, Path(p).parent.name)  # noqa: E731 (dataset, protocol)
    probe_of = {key(p): Path(p) for p in probes}
    for path in per_layer:
        dataset, protocol = key(path)
        target = Path(out_dir) / "layers" / f"{dataset}_{protocol}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_csv(target, layer_curve(Path(path), probe_of.get((dataset, protocol))))
        written.append(target)
    return written



def summary(
    runs: pd.DataFrame,
    out_md: Path,
    out_json: Path,
    stand_in: bool = True,
    paper_of: dict[str, str] | None = None,
    stand_ins: tuple[str, ...] | list[str] = (),
    embed: list[tuple[str, Path]] | None = None,
) -> dict:
    """``summary.md`` (each dataset's protocol table, links to every table, then each ``embed``ded (title, markdown
    file), e.g. the claims table) and ``summary.json`` (mean, std and n of every method, DVC ``metrics``).

    Args:
        stand_in: print the general note that the embedded default's numbers are not the paper's.
        paper_of: dataset -> the paper dataset it is (or stands in for); links its ``*_vs_paper`` tables.
        stand_ins: the datasets of ``paper_of`` that are stand-ins (labelled as such).
    """
    paper_of = paper_of or {}
    lines = ["# daamflow results", ""]
    if stand_in:
        lines += [f"> {STAND_IN_NOTE}", ""]
    if stand_ins:
        named = ", ".join(f"`{d}` for {PAPER_NAMES[paper_of[d]]}" for d in stand_ins)
        lines += [f"> Stand-ins: {named}. The published numbers beside them are the paper's datasets' numbers: the "
                  "differences show how far a stand-in is from the paper, not whether the paper reproduces.", ""]
    metrics: dict = {}
    for dataset, ds_runs in runs.groupby("dataset", sort=True):
        encoder = ds_runs["encoder"].iloc[0]
        protocols = sorted(ds_runs["protocol"].unique())
        links = ", ".join(f"[{p}]({dataset}_{p}.md)" for p in protocols)
        lines += [
            f"## {dataset} ({encoder})", "",
            f"Per fold/seed: {links}; side by side: [{dataset}_protocols.md]({dataset}_protocols.md).", "",
        ]
        if dataset in paper_of:
            role = "stands in for" if dataset in stand_ins else "is"
            vs = ", ".join(f"[{p}]({dataset}_{p}_vs_paper.md)" for p in protocols)
            lines += [f"`{dataset}` {role} the paper's {PAPER_NAMES[paper_of[dataset]]}; its table with ours, "
                      f"published and Δ per cell: {vs}.", ""]
        lines += [
            _display(protocol_table(ds_runs)).to_markdown(index=False), "",
            f"![{dataset} accuracy](../figures/{dataset}_accuracy.png)", "",
        ]
        for protocol, pr_runs in ds_runs.groupby("protocol", sort=True):
            table = fold_table(pr_runs)
            counts = pr_runs.groupby("method")["fold"].nunique()
            metrics.setdefault(dataset, {})[protocol] = {
                row["method"]: {"mean": round(float(row["mean"]), 4), "std": round(float(row["std"]), 4),
                                "n": int(counts[row["method"]])}
                for _, row in table.iterrows()
            }
    for title, path in embed or []:
        lines += [f"## {title}", "", Path(path).read_text().strip(), "", f"(also [{Path(path).name}]({Path(path).name}))", ""]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    write_text(out_md, "\n".join(lines) + "\n")
    write_json(out_json, metrics)
    return metrics


def add_arguments(p: argparse.ArgumentParser) -> None:
    runs_help = "runs.csv files written by `daamflow train` / `daamflow finetune`"
    pairs_help = "DATASET=PAPER_DATASET for each dataset that is (or stands in for) one of the paper's"
    sub = p.add_subparsers(dest="part", required=True, metavar="part")
    d = sub.add_parser("dataset", help="tables and figure of the datasets in the given run tables")
    d.add_argument("--runs", nargs="+", required=True, type=Path, help=runs_help)
    d.add_argument("--tables", required=True, type=Path, help="output folder for tables (csv, md, tex)")
    d.add_argument("--figures", required=True, type=Path, help="output folder for figures (png)")
    pp = sub.add_parser("paper", help="the paper's table of one dataset per protocol: ours, published and Δ per cell")
    pp.add_argument("--runs", nargs="+", required=True, type=Path, help=runs_help)
    pp.add_argument("--paper-dataset", required=True, choices=sorted(PAPER_NAMES), help="the paper's dataset")
    pp.add_argument("--stand-in", action="store_true", help="our dataset only stands in for it (labelled)")
    pp.add_argument("--tables", required=True, type=Path, help="output folder")
    ps = sub.add_parser("paper-summary", help="the paper's summary table (MHA, best LoRA, best DAAM): ours vs published")
    ps.add_argument("--runs", nargs="+", required=True, type=Path, help=runs_help)
    ps.add_argument("--paper-datasets", nargs="+", required=True, help=pairs_help)
    ps.add_argument("--out-table", required=True, type=Path, help="table stem (.csv/.md/.tex are written)")
    pa = sub.add_parser("parameters", help="the paper's parameter table from the model registry, beside Table 1")
    pa.add_argument("--tables", required=True, type=Path, help="output folder")
    c = sub.add_parser("claims", help="the paper's claims vs our runs (paired, per protocol), and all DAAM-vs-baseline pairs")
    c.add_argument("--runs", nargs="+", required=True, type=Path, help=runs_help)
    c.add_argument("--paper-datasets", nargs="*", default=[], help=pairs_help)
    c.add_argument("--parameters", required=True, type=Path, help="parameters.csv from `report parameters`")
    c.add_argument("--tables", required=True, type=Path, help="output folder")
    c.add_argument("--alpha", type=float, default=C.ALPHA, help="level of every verdict, after Holm")
    c.add_argument("--margins", nargs="*", default=[], metavar="DATASET=POINTS",
                   help="margin in accuracy points per our or paper dataset (config claims.margins)")
    c.add_argument("--seeded", nargs="*", default=[], metavar="DATASET",
                   help="datasets with one fixed test set (scheme seeds): item-level test from their predictions.csv")
    q = sub.add_parser("quirks", help="each released-code quirk's switch off vs on, per dataset, paired over folds")
    q.add_argument("--runs", nargs="+", required=True, type=Path, help=runs_help)
    q.add_argument("--out-table", required=True, type=Path, help="table stem (.csv/.md/.tex are written)")
    q.add_argument("--alpha", type=float, default=C.ALPHA, help="1 − the level of the t-intervals")
    cu = sub.add_parser("curves", help="plot-ready CSVs: per-epoch history per method, per-layer IF and probe accuracy")
    cu.add_argument("--runs", nargs="+", required=True, type=Path, help=runs_help)
    cu.add_argument("--per-layer", nargs="*", default=[], type=Path, help="per_layer.csv files of `importance map`")
    cu.add_argument("--probes", nargs="*", default=[], type=Path, help="probe.csv files of `importance probe`")
    cu.add_argument("--out", required=True, type=Path, help="output folder (history/, layers/)")
    s = sub.add_parser("summary", help="summary.md and summary.json over all run tables")
    s.add_argument("--runs", nargs="+", required=True, type=Path, help=runs_help)
    s.add_argument("--out-md", required=True, type=Path)
    s.add_argument("--out-json", required=True, type=Path)
    s.add_argument("--paper-grid", action="store_true", help="real datasets and encoders: no stand-in disclaimer")
    s.add_argument("--paper-datasets", nargs="*", default=[], help=pairs_help)
    s.add_argument("--stand-ins", nargs="*", default=[], help="datasets of --paper-datasets that are stand-ins")
    s.add_argument("--embed", nargs="*", default=[], metavar="TITLE=FILE.md", help="markdown files to include")


def main(args: argparse.Namespace) -> int:
    if args.part == "parameters":
        parameters_report(args.tables)
        return 0
    runs = load_runs(args.runs)
    if args.part == "dataset":
        written = dataset_report(runs, args.tables, args.figures)
        log.info("wrote %d files", len(written))
    elif args.part == "paper":
        paper_report(runs, args.paper_dataset, args.tables, args.stand_in)
    elif args.part == "paper-summary":
        table = paper_summary_table(runs, C.parse_pairs(args.paper_datasets))
        write_table(table, args.out_table,
                    "The paper's summary table (B Table 5): ours (published; Δ) per dataset and protocol",
                    shown=display_paper_summary(table))
    elif args.part == "claims":
        margins = {}
        for key, value in C.parse_pairs(args.margins, "--margins").items():
            try:
                margins[key] = float(value)
            except ValueError:
                raise ValueError(f"--margins: {key}={value!r} is not a number of accuracy points") from None
        claims_report(runs, C.parse_pairs(args.paper_datasets), args.parameters, args.tables, args.alpha, margins,
                      C.load_items(args.runs, args.seeded), set(args.seeded))
    elif args.part == "quirks":
        from daamflow.report import quirks

        table = quirks.quirk_table(runs, alpha=args.alpha)
        write_table(table, args.out_table, quirks.caption(alpha=args.alpha),
                    shown=quirks.display_quirks(table, args.alpha))
    elif args.part == "curves":
        write_curves(args.runs, args.per_layer, args.probes, args.out)
    else:
        bad = [item for item in args.embed if "=" not in item]
        if bad:
            raise ValueError(f"--embed: expected TITLE=FILE.md, got {bad}")
        embed = [tuple(item.split("=", 1)) for item in args.embed]
        summary(runs, args.out_md, args.out_json, stand_in=not args.paper_grid,
                paper_of=C.parse_pairs(args.paper_datasets), stand_ins=args.stand_ins, embed=embed)
        log.info("summary -> %s", args.out_md)
    return 0
