"""``daamflow report dataset``: of each dataset in the run tables, a table per protocol (methods × folds/seeds), the
protocols side by side, and the accuracy figure."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from daamflow.report.figures import accuracy_figure
from daamflow.report.tables import fold_table, protocol_table, write_table


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
