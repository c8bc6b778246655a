"""What the report reads of the runs: the ``runs.csv`` tables (one row per fold/seed; docs/architecture.md) and, for
the item-level test of a ``seeds`` dataset, the ``predictions.csv`` beside them."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from daamflow.run.runs_table import RUNS_COLUMNS


def read_run_table(path: Path) -> pd.DataFrame:
    """One ``runs.csv``, its columns checked against the one schema its writer uses (``RUNS_COLUMNS``)."""
    table = pd.read_csv(path)
    missing = [c for c in RUNS_COLUMNS if c not in table.columns]
    unexpected = [c for c in table.columns if c not in RUNS_COLUMNS]
    if missing or unexpected:
        raise ValueError(f"{path}: not a runs.csv of daamflow.run.runs_table.RUNS_COLUMNS: missing columns {missing}, "
                         f"unexpected columns {unexpected}")
    return table


def load_runs(paths: list[Path]) -> pd.DataFrame:
    """The run tables concatenated, with ``accuracy_pct`` (the report's unit: percent)."""
    frames = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"run table missing: {path} (run `daamflow train` for it first)")
        frames.append(read_run_table(path))
    if not frames:
        raise ValueError("no run tables given")
    runs = pd.concat(frames, ignore_index=True)
    runs["accuracy_pct"] = 100 * runs["accuracy"]
    return runs


def load_items(run_tables: list[Path], datasets) -> pd.DataFrame:
    """Per-item correctness of every run of the given datasets: the ``predictions.csv`` beside each ``runs.csv``
    (``<run dir>/<fold>/predictions.csv``). Columns dataset, protocol, method, fold, id, correct (0/1)."""
    frames = []
    for table in map(Path, run_tables):
        runs = read_run_table(table)
        for r in runs[runs["dataset"].isin(list(datasets))].itertuples():
            path = table.parent / r.fold / "predictions.csv"
            if not path.exists():
                raise FileNotFoundError(f"{path}: predictions of {r.dataset} / {r.protocol} / {r.method} / {r.fold} "
                                        "missing (the item-level test of a `seeds` dataset reads them)")
            pred = pd.read_csv(path)
            missing = {"id", "label", "pred"} - set(pred.columns)
            if missing:
                raise ValueError(f"{path}: columns {sorted(missing)} missing")
            frames.append(pd.DataFrame({"dataset": r.dataset, "protocol": r.protocol, "method": r.method,
                                        "fold": r.fold, "id": pred["id"],
                                        "correct": (pred["label"] == pred["pred"]).astype(float)}))
    columns = ["dataset", "protocol", "method", "fold", "id", "correct"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def accuracy_by_fold(runs: pd.DataFrame) -> pd.DataFrame:
    """fold × method accuracy (percent) of one dataset and protocol: what the paired tests pair."""
    return runs.pivot_table(index="fold", columns="method", values="accuracy_pct", aggfunc="first")
