"""Fold dispatch shared by ``train`` (heads) and ``finetune`` (LoRA): run the unfinished folds of one job, here or
through a launcher, then gather them into ``runs.csv`` (docs/architecture.md#4-runscsv-schema), whose columns are
defined here once for the writer and every reader.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
from tqdm import tqdm

from daamflow.atomic import write_csv, write_json
from daamflow.data.features import FEATURES
from daamflow.data.folds import Split
from daamflow.run.fit import finished
from daamflow.run.identity import fold_identity

# runs.csv: one row per fold/seed, in this column order
RUNS_COLUMNS = (
    "dataset",                    # config key of the dataset
    "encoder",                    # config key of the encoder
    "protocol",                   # paper | clean
    "method",                     # the run's label: <method> or <method>@<variant> (daam_v1@high, lora_r4@released)
    "fold",                       # fold/seed name (fold1, run1, ...)
    "seed",                       # the fold's training seed
    "accuracy",                   # test accuracy of the selected model
    "macro_f1",                   # test macro-F1 of the selected model
    "best_epoch",                 # the selected epoch (the earliest with the best selection accuracy)
    "epochs_run",                 # epochs trained
    "params",                     # trained parameters, classifier included
    "params_without_classifier",  # trained parameters without the classifier
    "wall_time_s",                # training wall time of the fold (seconds)
    "settings_hash",              # identity.settings_hash of the job's settings
    "identity",                   # identity.fold_identity: settings and input digests
    "features_sha256",            # the feature store's features.npy digest; empty for LoRA (no store)
)


def run_row(settings: dict, fold: str, metrics: dict) -> dict:
    """The runs.csv row of a finished fold, from its settings and metrics.json."""
    row = {
        "dataset": settings["dataset"],
        "encoder": settings["encoder"],
        "protocol": settings["protocol"],
        "method": settings.get("label", settings["method"]),
        "fold": fold,
        "features_sha256": metrics["inputs"].get(FEATURES, ""),
    }
    return {column: row[column] if column in row else metrics[column] for column in RUNS_COLUMNS}


def check_identity(fold: str, expected: str, found: str, what: str) -> None:
    """A fold job runs only on the inputs it was submitted for (its ``identity`` is part of the launcher's call)."""
    if expected != found:
        raise RuntimeError(f"{fold}: {what} changed after this fold was submitted (identity {found}, submitted as "
                           f"{expected}); rerun the workflow to train on the current inputs")


def run_folds(
    fold_fn: Callable[..., dict],
    splits: list[Split],
    settings: dict,
    out_dir: Path,
    only: list[str] | None,
    threads: int,
    launcher: dict | None,
    inputs: dict[str, str],
    **call_args,
) -> pd.DataFrame:
    """Run the unfinished folds (here, or as one job array through ``launcher``) with
    ``fold_fn(fold=…, settings=…, out_dir=…, threads=…, identity=…, **call_args)``, then write ``out_dir/runs.csv``.

    ``inputs`` (digests of the input files) and the settings make the folds' identity: a fold finished under another
    identity runs again, and a queued job re-attaches only when its call (identity included) is the same.
    """
    if only:
        unknown = sorted(set(only) - {s.name for s in splits})
        if unknown:
            raise ValueError(f"unknown fold/run {unknown}; this dataset has {[s.name for s in splits]}")
        splits = [s for s in splits if s.name in only]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "settings.json", settings)
    identity = fold_identity(settings, inputs)
    todo = [s.name for s in splits if finished(out_dir / s.name, identity) is None]
    calls = [dict(call_args, settings=settings, out_dir=out_dir, fold=f, threads=threads, identity=identity)
             for f in todo]
    if calls and launcher and launcher.get("kind", "inline") != "inline":
        from daamflow.run.launch import run_calls  # submitit only where a launcher is asked for

        for call in calls:  # a fold job gets the CPUs it asked SLURM for, not the submitting job's threads
            call["threads"] = launcher.get("cpus_per_task", threads)
        run_calls(fold_fn, calls, launcher, out_dir)
    else:
        for kwargs in tqdm(calls, desc=f"{settings['method']} folds", disable=len(calls) < 2, leave=False):
            fold_fn(**kwargs)
    rows = []
    for split in splits:
        metrics = finished(out_dir / split.name, identity)
        if metrics is None:  # a launcher that returned without the fold's metrics.json is a failure, never a success
            raise RuntimeError(f"{split.name}: no finished metrics.json in {out_dir / split.name} after its run")
        rows.append(run_row(settings, split.name, metrics))
    frame = pd.DataFrame(rows)
    write_csv(out_dir / "runs.csv", frame)
    return frame
