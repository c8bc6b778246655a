"""Fold dispatch shared by ``train`` (heads) and ``finetune`` (LoRA): run the unfinished folds of one job, here or
through a launcher, then gather them into ``runs.csv`` (docs/architecture.md#4-runscsv-schema), whose columns are
defined here once for the writer and every reader.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable

import pandas as pd
from tqdm import tqdm

from daamflow.atomic import write_csv, write_json
from daamflow.config import read_settings
from daamflow.data.features import FEATURES
from daamflow.data.folds import Split
from daamflow.run.fit import finished, fold_lock
from daamflow.run.identity import fold_identity
from daamflow.run.runs_table import RUNS_COLUMNS

log = logging.getLogger(__name__)


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


def unless_finished(fold_dir: Path, identity: str, same: str, train: Callable[[], dict]) -> dict:
    """A fold job under the fold's lock: its metrics when it finished under ``identity`` (``same`` names what that
    means, for the log), else ``train()``."""
    with fold_lock(fold_dir):
        metrics = finished(fold_dir, identity)
        if metrics is not None:
            log.info("%s: finished earlier with the same %s; reused", fold_dir.name, same)
            return metrics
        return train()


def run_folds(
    fold_fn: Callable[..., dict],
    splits: list[Split],
    settings: dict,
    out_dir: Path,
    inputs: dict[str, str],
    *,
    only: list[str] | None = None,
    threads: int = 1,
    launcher: dict | None = None,
    **call_args,
) -> pd.DataFrame:
    """Run the unfinished folds (all, or those in ``only``; here, or as one job array through ``launcher``, see
    daamflow.run.launch) with ``fold_fn(fold=…, settings=…, out_dir=…, threads=…, identity=…, **call_args)``, then
    write ``out_dir/runs.csv``. Finished folds are reused.

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


def add_fold_arguments(p: argparse.ArgumentParser) -> None:
    """Options ``daamflow train`` and ``daamflow finetune`` share; ``add_launcher_argument`` adds ``--launcher`` after
    a command's own options, where its help has always listed it."""
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--folds", default=None, help="comma-separated subset of folds/runs, e.g. fold1,fold3 (default all)")


def add_launcher_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--launcher", default=None,
                   help="launcher JSON (inline or a file): {kind: inline|local|slurm, ...}; default: in this process")


def fold_options(args: argparse.Namespace) -> dict:
    """``run_folds``' ``only``, ``threads`` and ``launcher`` from the command line."""
    return {"only": args.folds.split(",") if args.folds else None, "threads": args.threads,
            "launcher": read_settings(args.launcher) if args.launcher else None}
