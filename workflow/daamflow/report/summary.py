"""``summary.md`` (each dataset's protocol table, links to every table, embedded tables such as the claims) and
``summary.json`` (mean, std and n of every method per dataset and protocol: DVC ``metrics``)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from daamflow.atomic import write_json, write_text
from daamflow.report.paper import PAPER_NAMES
from daamflow.report.tables import display_table, fold_table, protocol_table

STAND_IN_NOTE = (
    "Numbers on the embedded default come from offline stand-ins (small real datasets and tiny or small encoders); "
    "they test the pipeline and are **not** the paper's numbers."
)


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
            display_table(protocol_table(ds_runs)).to_markdown(index=False), "",
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
