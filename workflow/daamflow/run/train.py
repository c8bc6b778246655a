"""Train one head on cached features: every fold/seed of one (dataset, encoder, protocol, method).

Each fold writes its run contract into ``<out>/<fold>/``: ``metrics.json``, ``history.csv``,
``predictions.csv``, ``checkpoint.pt`` (resume state, written atomically after every epoch), ``model.pt`` (the selected
weights) and, for DAAM methods, ``density.npy`` (the selected model's gate averaged over the select part),
``density_all_epochs.npy`` (the same map of every epoch's model, averaged) and ``gaussians.json``. ``<out>/runs.csv``
gathers the folds.

Resume is exact: shuffling draws from a generator seeded by (seed, epoch), so a run restarted from
``checkpoint.pt`` at epoch e+1 ends with the numbers an uninterrupted run gives. A fold whose ``metrics.json``
carries the same fold identity (settings hash and the store's checksums, ``fit.fold_identity``) is finished and never
recomputed; changed settings or a changed store start the fold over.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from daamflow.models import heads
from daamflow.atomic import atomic_write, write_csv, write_json
from daamflow.config import read_settings
from daamflow.data.features import FEATURES, INDEX, load_store
from daamflow.run.fit import conclude, finished, fit, fold_identity, fold_lock, refit, refits, resolve_device
from daamflow.data.folds import Split, make_splits
from daamflow.analysis.importance import read_fold_layers

log = logging.getLogger(__name__)


def store_inputs(manifest: dict) -> dict[str, str]:
    """A head fold's inputs for ``fold_identity``: the store's recorded checksums (verified by ``train_all``)."""
    return {name: manifest["sha256"][name] for name in (FEATURES, INDEX)}


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
    inputs: dict[str, str] | None = None,
) -> dict:
    """Train, select and test one fold/seed; resumable from ``out_dir/checkpoint.pt``. Returns its metrics.

    ``inputs``: the digests of the store the features come from (``store_inputs``), part of the fold's identity.
    """
    inputs = inputs or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    hp = settings["hyper"]
    dev = resolve_device(device)
    layers = fold_layers(settings, split.name)
    num_layers = len(layers) if layers is not None else features.shape[1]

    torch.manual_seed(split.seed)
    model = heads.build_model(settings["method"], num_layers, features.shape[2], num_classes,
                              **settings["model_options"]).to(dev)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()} if refits(settings) else None

    def make_optimiser() -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])

    optimiser = make_optimiser()

    def predict(rows: np.ndarray) -> np.ndarray:
        return _evaluate(model, features, rows, layers, hp["batch_size"], dev)[0]

    latest = {}  # the density map of the latest selection pass (DAAM methods)

    def select(rows: np.ndarray) -> np.ndarray:  # fit's selection pass, once per epoch
        pred, latest["density"] = _evaluate(model, features, rows, layers, hp["batch_size"], dev, with_density=True)
        return pred

    def accumulate(total: dict | None) -> dict | None:
        """Sum of every epoch's select-part density map: the released attention maps accumulate over all epochs."""
        if latest.get("density") is None:
            return None
        density = torch.from_numpy(latest["density"])
        return {"sum": density, "epochs": 1} if total is None else {"sum": total["sum"] + density,
                                                                     "epochs": total["epochs"] + 1}

    fitted = fit(model, optimiser, split, labels, settings, out_dir, dev,
                 logits=lambda rows: model(_inputs(features, rows, layers, dev)), predict=select,
                 weights=model.state_dict, load_weights=model.load_state_dict, inputs=inputs, accumulate=accumulate,
                 stop_after_epoch=stop_after_epoch, progress=progress)
    tested, refitted = split, {"refit": False}
    if initial is not None:
        fitted, tested, refitted = refit(
            fitted, model, make_optimiser, initial, split, labels, settings, out_dir, dev,
            logits=lambda rows: model(_inputs(features, rows, layers, dev)), predict=predict,
            weights=model.state_dict, load_weights=model.load_state_dict, inputs=inputs,
            stop_after_epoch=stop_after_epoch, progress=progress)
    metrics = conclude(fitted, model, tested, labels, ids, num_classes, settings, out_dir, dev,
                       predict=predict, load_weights=model.load_state_dict, inputs=inputs)
    metrics.update(refitted)
    _, density = _evaluate(model, features, split.select, layers, hp["batch_size"], dev, with_density=True)
    metrics.update({
        "params": heads.count_parameters(model, include_classifier=True),
        "params_without_classifier": heads.count_parameters(model, include_classifier=False),
        "layers": layers,
        "model": getattr(model, "resolved", {}),  # the options the registry actually used (e.g. DAAM heads for N)
    })
    if density is not None:
        atomic_write(out_dir / "density.npy", lambda p: _save_npy(p, density))
    if fitted.accumulated is not None:
        all_epochs = (fitted.accumulated["sum"] / fitted.accumulated["epochs"]).numpy()
        atomic_write(out_dir / "density_all_epochs.npy", lambda p: _save_npy(p, all_epochs))
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


def fold_layers(settings: dict, fold: str) -> list[int] | None:
    """The layers a fold trains on: ``settings["layers"]`` is a list for every fold, or ``{fold: list}`` when each fold
    has its own (an IF ablation: each fold's layers come from models that never saw its test part)."""
    layers = settings.get("layers")
    if not isinstance(layers, dict):
        return layers
    if fold not in layers:
        raise ValueError(f"settings.layers has no layers for {fold} (it has {sorted(layers)}): the layer choice was "
                         "made on other folds; rerun `daamflow importance map` on the current runs")
    return layers[fold]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as fh:  # a file object: np.save would append ".npy" to a bare temp name
        np.save(fh, array.astype(np.float32))


def splits_of(store, settings: dict) -> list[Split]:
    return make_splits(
        store.labels, store.groups, store.splits, settings["evaluation"], settings["protocol"], settings["seed"],
        settings["hyper"]["dev_fraction"],
    )


def check_identity(fold: str, expected: str, found: str, what: str) -> None:
    """A fold job runs only on the inputs it was submitted for (its ``identity`` is part of the launcher's call)."""
    if expected != found:
        raise RuntimeError(f"{fold}: {what} changed after this fold was submitted (identity {found}, submitted as "
                           f"{expected}); rerun the workflow to train on the current inputs")


def run_fold(store_dir: Path, settings: dict, out_dir: Path, fold: str, identity: str, device: str = "auto",
             threads: int = 1) -> dict:
    """Run (or resume, or reuse) one fold/seed; a top-level function so that launchers can ship it to a worker.

    ``identity`` is the ``fold_identity`` the caller computed; the fold holds ``<fold>/.lock`` while it runs.
    """
    torch.set_num_threads(threads)
    store = load_store(store_dir, verify=False)  # verified once by train_all before any fold is launched
    inputs = store_inputs(store.manifest)
    check_identity(fold, identity, fold_identity(settings, inputs), f"feature store {store_dir}")
    split = {s.name: s for s in splits_of(store, settings)}[fold]
    fold_dir = Path(out_dir) / fold
    with fold_lock(fold_dir):
        metrics = finished(fold_dir, identity)
        if metrics is not None:
            log.info("%s: finished earlier with the same settings and features; reused", fold)
            return metrics
        ids = store.index["id"].astype(str).to_numpy()
        num_classes = int(store.labels.max()) + 1
        return run_split(store.features, store.labels, ids, num_classes, split, settings, fold_dir, device,
                         progress=False, inputs=inputs)


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

    ``launcher`` (see daamflow.run.launch) sends the unfinished folds out as one job array; by default they run here.
    """
    store = load_store(store_dir)  # checksums verified here, once, not in each fold job
    splits = splits_of(store, settings)
    return run_folds(run_fold, splits, settings, out_dir, only, threads, launcher, store_inputs(store.manifest),
                     store_dir=store_dir, device=device)


def run_folds(
    fold_fn,
    splits: list[Split],
    settings: dict,
    out_dir: Path,
    only: list[str] | None,
    threads: int,
    launcher: dict | None,
    inputs: dict[str, str],
    **call_args,
) -> pd.DataFrame:
    """Shared by train and finetune: run the unfinished folds (here, or as one job array through ``launcher``) with
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
        from daamflow.run.launch import run_calls

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


def run_row(settings: dict, fold: str, metrics: dict) -> dict:
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
        "identity": metrics["identity"],
        "features_sha256": metrics["inputs"].get(FEATURES, ""),
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
    p.add_argument("--label", default=None,
                   help="the run's method label in the tables (default <method>@<selection> with --selection)")
    p.add_argument("--launcher", default=None,
                   help="launcher JSON (inline or a file): {kind: inline|local|slurm, ...}; default: in this process")


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    settings = read_settings(args.settings)
    if (args.layers_from is None) != (args.selection is None):
        raise SystemExit("--layers-from and --selection go together")
    if args.layers_from is not None:  # every fold's own layers, hashed with the settings
        settings = {**settings, "layers": read_fold_layers(args.layers_from, args.selection),
                    "label": args.label or f"{settings['method']}@{args.selection}"}
    only = args.folds.split(",") if args.folds else None
    launcher = read_settings(args.launcher) if args.launcher else None
    frame = train_all(args.features, settings, args.out, args.device, only, args.threads, launcher)
    log.info("%s/%s/%s: accuracy %s", settings["dataset"], settings["protocol"], settings["method"],
             ", ".join(f"{a:.3f}" for a in frame["accuracy"]))
    return 0
