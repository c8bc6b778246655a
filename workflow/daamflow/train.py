"""Train one head on cached features: every fold/seed of one (dataset, encoder, protocol, method).

Each fold writes the run contract of DESIGN §3 into ``<out>/<fold>/``: ``metrics.json``, ``history.csv``,
``predictions.csv``, ``checkpoint.pt`` (resume state, written atomically after every epoch), ``model.pt`` (the selected
weights) and, for DAAM methods, ``density.npy`` and ``gaussians.json``. ``<out>/runs.csv`` gathers the folds.

Resume is exact: shuffling draws from a generator seeded by (seed, epoch), so a run restarted from
``checkpoint.pt`` at epoch e+1 ends with the numbers an uninterrupted run gives. A fold whose ``metrics.json``
carries the same settings hash is finished and never recomputed; a different hash means the settings changed, and
the fold starts over.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from . import heads
from .atomic import atomic_write, write_csv, write_json
from .config import read_settings
from .features import load_store
from .fit import conclude, finished, fit, resolve_device, settings_hash
from .folds import Split, make_splits

log = logging.getLogger(__name__)


VERIFY_MAX_BYTES = 2 << 30  # feature stores up to 2 GiB get their sha256 checked before training


def _inputs(features: np.ndarray, rows: np.ndarray, layers: list[int] | None, dev: torch.device) -> torch.Tensor:
    """float32 rows of the (memory-mapped, float16) feature array; only the needed rows are materialised."""
    x = np.asarray(features[rows], dtype=np.float32)
    return torch.from_numpy(x[:, layers] if layers is not None else x).to(dev)


def _evaluate(model, features: np.ndarray, rows: np.ndarray, layers: list[int] | None, batch_size: int, dev,
              with_density: bool = False):
    """Predictions for ``rows`` and, with ``with_density``, the mean DAAM density map over them (None otherwise)."""
    model.eval()
    preds, density_sum = [], None
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            x = _inputs(features, rows[start:start + batch_size], layers, dev)
            preds.append(model(x).argmax(dim=1).cpu())
            g = heads.density_map(model, x) if with_density else None
            if g is not None:
                s = g.float().sum(dim=0).cpu()
                density_sum = s if density_sum is None else density_sum + s
    pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    density = None if density_sum is None else (density_sum / len(rows)).numpy()
    return pred, density


def run_split(
    features: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray,
    num_classes: int,
    split: Split,
    settings: dict,
    out_dir: Path,
    device: str = "auto",
    stop_after_epoch: int | None = None,
    progress: bool = True,
) -> dict:
    """Train, select and test one fold/seed; resumable from ``out_dir/checkpoint.pt``. Returns its metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    hp = settings["hyper"]
    dev = resolve_device(device)
    layers = settings.get("layers")
    num_layers = len(layers) if layers is not None else features.shape[1]

    torch.manual_seed(split.seed)
    model = heads.build_model(settings["method"], num_layers, features.shape[2], num_classes,
                              **settings["model_options"]).to(dev)
    optimiser = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])

    def predict(rows: np.ndarray) -> np.ndarray:
        return _evaluate(model, features, rows, layers, hp["batch_size"], dev)[0]

    fitted = fit(model, optimiser, split, labels, settings, out_dir, dev,
                 logits=lambda rows: model(_inputs(features, rows, layers, dev)), predict=predict,
                 weights=model.state_dict, load_weights=model.load_state_dict, stop_after_epoch=stop_after_epoch,
                 progress=progress)
    metrics = conclude(fitted, model, split, labels, ids, num_classes, settings, out_dir, dev,
                       predict=predict, load_weights=model.load_state_dict)
    _, density = _evaluate(model, features, split.select, layers, hp["batch_size"], dev, with_density=True)
    metrics.update({
        "params": heads.count_parameters(model, include_classifier=True),
        "params_without_classifier": heads.count_parameters(model, include_classifier=False),
        "layers": layers,
        "model": getattr(model, "resolved", {}),  # the options the registry actually used (e.g. DAAM heads for N)
    })
    if density is not None:
        atomic_write(out_dir / "density.npy", lambda p: _save_npy(p, density))
    gaussians = heads.gaussian_parameters(model)
    if gaussians is not None:
        write_json(out_dir / "gaussians.json", gaussians)
    weights = heads.layer_weights(model)
    if weights is not None:  # weighted_sum: the learned softmax layer weights, compared with IF in the analyses
        write_json(out_dir / "layer_weights.json", {"weights": weights.detach().cpu().tolist()})
    write_json(out_dir / "metrics.json", metrics)  # last: its presence marks the fold finished
    log.info("%s %s: best epoch %d (selection accuracy %.4f), test accuracy %.4f, macro-F1 %.4f", settings["method"],
             split.name, metrics["best_epoch"], metrics["select_accuracy"], metrics["accuracy"], metrics["macro_f1"])
    return metrics


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as fh:  # a file object: np.save would append ".npy" to a bare temp name
        np.save(fh, array.astype(np.float32))


def splits_of(store, settings: dict) -> list[Split]:
    return make_splits(
        store.labels, store.groups, store.splits, settings["evaluation"], settings["protocol"], settings["seed"],
        settings["hyper"]["dev_fraction"],
    )


def run_fold(store_dir: Path, settings: dict, out_dir: Path, fold: str, device: str = "auto", threads: int = 1) -> dict:
    """Run (or resume, or reuse) one fold/seed; a top-level function so that launchers can ship it to a worker."""
    torch.set_num_threads(threads)
    store = load_store(store_dir, verify=False)  # verified once by train_all before any fold is launched
    split = {s.name: s for s in splits_of(store, settings)}[fold]
    fold_dir = Path(out_dir) / fold
    metrics = finished(fold_dir, settings_hash(settings))
    if metrics is not None:
        log.info("%s: finished earlier with the same settings; reused", fold)
        return metrics
    ids = store.index["id"].astype(str).to_numpy()
    num_classes = int(store.labels.max()) + 1
    return run_split(store.features, store.labels, ids, num_classes, split, settings, fold_dir, device, progress=False)


def train_all(
    store_dir: Path,
    settings: dict,
    out_dir: Path,
    device: str = "auto",
    only: list[str] | None = None,
    threads: int = 1,
    launcher: dict | None = None,
) -> pd.DataFrame:
    """Run every fold/seed (or those in ``only``) and write ``out_dir/runs.csv``; finished folds are reused.

    ``launcher`` (see daamflow.launch) sends the unfinished folds out as one job array; by default they run here.
    """
    # hashing a multi-GB store in each of its many train jobs costs minutes each; embed wrote and hashed it, and
    # shape/dtype/index are still checked; small stores are verified in full
    size = (Path(store_dir) / "features.npy").stat().st_size if (Path(store_dir) / "features.npy").exists() else 0
    store = load_store(store_dir, verify=size <= VERIFY_MAX_BYTES)
    splits = splits_of(store, settings)
    return run_folds(run_fold, splits, settings, out_dir, only, threads, launcher, store.manifest,
                     store_dir=store_dir, device=device)


def run_folds(
    fold_fn,
    splits: list[Split],
    settings: dict,
    out_dir: Path,
    only: list[str] | None,
    threads: int,
    launcher: dict | None,
    store_manifest: dict,
    **call_args,
) -> pd.DataFrame:
    """Shared by train and finetune: run the unfinished folds (here, or as one job array through ``launcher``) with
    ``fold_fn(fold=…, settings=…, out_dir=…, threads=…, **call_args)``, then write ``out_dir/runs.csv``."""
    if only:
        unknown = sorted(set(only) - {s.name for s in splits})
        if unknown:
            raise ValueError(f"unknown fold/run {unknown}; this dataset has {[s.name for s in splits]}")
        splits = [s for s in splits if s.name in only]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "settings.json", settings)
    digest = settings_hash(settings)
    todo = [s.name for s in splits if finished(out_dir / s.name, digest) is None]
    calls = [dict(call_args, settings=settings, out_dir=out_dir, fold=f, threads=threads) for f in todo]
    if calls and launcher and launcher.get("kind", "inline") != "inline":
        from .launch import run_calls

        for call in calls:  # a fold job gets the CPUs it asked SLURM for, not the submitting job's threads
            call["threads"] = launcher.get("cpus_per_task", threads)
        run_calls(fold_fn, calls, launcher, out_dir)
    else:
        for kwargs in tqdm(calls, desc=f"{settings['method']} folds", disable=len(calls) < 2, leave=False):
            fold_fn(**kwargs)
    rows = []
    for split in splits:
        metrics = finished(out_dir / split.name, digest)
        if metrics is None:  # a launcher that returned without the fold's metrics.json is a failure, never a success
            raise RuntimeError(f"{split.name}: no finished metrics.json in {out_dir / split.name} after its run")
        rows.append(run_row(settings, split.name, metrics, store_manifest))
    frame = pd.DataFrame(rows)
    write_csv(out_dir / "runs.csv", frame)
    return frame


def run_row(settings: dict, fold: str, metrics: dict, store_manifest: dict) -> dict:
    return {
        "dataset": settings["dataset"],
        "encoder": settings["encoder"],
        "protocol": settings["protocol"],
        "method": settings.get("label", settings["method"]),  # e.g. daam_v1@high for an ablation
        "fold": fold,
        "seed": metrics["seed"],
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "best_epoch": metrics["best_epoch"],
        "epochs_run": metrics["epochs_run"],
        "params": metrics["params"],
        "params_without_classifier": metrics["params_without_classifier"],
        "wall_time_s": metrics["wall_time_s"],
        "settings_hash": metrics["settings_hash"],
        "features_sha256": store_manifest.get("sha256", {}).get("features.npy", ""),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", required=True, type=Path, help="feature store directory (from `daamflow embed`)")
    p.add_argument("--out", required=True, type=Path, help="run directory: <out>/<fold>/… and <out>/runs.csv")
    p.add_argument(
        "--settings", required=True,
        help="JSON (inline or a file) from daamflow.config.train_settings: method, protocol, seed, evaluation, hyper, model_options",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--folds", default=None, help="comma-separated subset of folds/runs, e.g. fold1,fold3 (default all)")
    p.add_argument("--layers-from", type=Path, default=None,
                   help="layers.json from `daamflow importance map`: train on the layers of --selection only")
    p.add_argument("--selection", choices=["high", "low", "random"], default=None,
                   help="which layer set of --layers-from (the run is labelled <method>@<selection>)")
    p.add_argument("--launcher", default=None,
                   help="launcher JSON (inline or a file): {kind: inline|local|slurm, ...}; default: in this process")


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    settings = read_settings(args.settings)
    if (args.layers_from is None) != (args.selection is None):
        raise SystemExit("--layers-from and --selection go together")
    if args.layers_from is not None:
        chosen = json.loads(args.layers_from.read_text())
        settings = {**settings, "layers": chosen[args.selection], "label": f"{settings['method']}@{args.selection}"}
    only = args.folds.split(",") if args.folds else None
    launcher = read_settings(args.launcher) if args.launcher else None
    frame = train_all(args.features, settings, args.out, args.device, only, args.threads, launcher)
    log.info("%s/%s/%s: accuracy %s", settings["dataset"], settings["protocol"], settings["method"],
             ", ".join(f"{a:.3f}" for a in frame["accuracy"]))
    return 0
