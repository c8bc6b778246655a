"""Plot-ready curves for ``dvc plots``: per-epoch history of each run table, per-layer IF share and probe accuracy."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from daamflow.atomic import write_csv
from daamflow.report.runs import read_run_table


def history_curve(run_table: Path) -> tuple[str, pd.DataFrame]:
    """Per-epoch selection accuracy (%) and training loss of one runs.csv, averaged over its folds/seeds."""
    runs = read_run_table(run_table)
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
