"""Train one head on cached features: every fold/seed of one (dataset, encoder, protocol, method).

Each fold writes its run contract into ``<out>/<fold>/``: ``metrics.json``, ``history.csv``,
``predictions.csv``, ``checkpoint.pt`` (resume state, written atomically after every epoch), ``model.pt`` (the selected
weights) and, for DAAM methods, ``density.npy`` (the selected model's gate averaged over the select part),
``density_all_epochs.npy`` (the same map of every epoch's model, averaged) and ``gaussians.json``. ``<out>/runs.csv``
gathers the folds.

Resume is exact: shuffling draws from a generator seeded by (seed, epoch), so a run restarted from
``checkpoint.pt`` at epoch e+1 ends with the numbers an uninterrupted run gives. A fold whose ``metrics.json``
carries the same fold identity (settings hash and the store's checksums, ``identity.fold_identity``) is finished and
never recomputed; changed settings or a changed store start the fold over.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from daamflow.analysis.importance import read_fold_layers
from daamflow.atomic import save_npy, write_json
from daamflow.catalog import SELECTIONS
from daamflow.config import read_settings
from daamflow.data.features import FEATURES, INDEX, load_store
from daamflow.data.folds import Split, make_splits
from daamflow.data.prefetch import DEPTH, Prefetch, resident
from daamflow.device import resolve_device
from daamflow.models import heads
from daamflow.run.dispatch import (
    add_fold_arguments, add_launcher_argument, check_identity, fold_options, run_folds, unless_finished,
)
from daamflow.run.fit import Learner, conclude, fit, refit, refits
from daamflow.run.identity import fold_identity

log = logging.getLogger(__name__)


def store_inputs(manifest: dict) -> dict[str, str]:
    """A head fold's inputs for ``fold_identity``: the store's recorded checksums (verified by ``train_all``)."""
    return {name: manifest["sha256"][name] for name in (FEATURES, INDEX)}


def _evaluate(model, features: np.ndarray, rows: np.ndarray, layers: list[int] | None, batch_size: int, dev,
              with_density: bool = False, prefetch: int = DEPTH):
    """Predictions for ``rows`` and, with ``with_density``, the mean DAAM density map over them (None otherwise).
    ``prefetch``: batches read ahead in a background thread (``data.prefetch``; 0 reads each in this thread)."""
    model.eval()
    preds, density_sum = [], None
    batches = [rows[start:start + batch_size] for start in range(0, len(rows), batch_size)]
    with torch.no_grad(), Prefetch(features, batches, layers, dev, prefetch) as stream:
        for part in batches:
            x = stream.take(part)
            preds.append(model(x).argmax(dim=1).cpu())
            g = heads.density_map(model, x) if with_density else None
            if g is not None:
                s = g.float().sum(dim=0).cpu()
                density_sum = s if density_sum is None else density_sum + s
    pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    density = None if density_sum is None else (density_sum / len(rows)).numpy()
    return pred, density


class HeadLearner(Learner):
    """``fit``'s view of a head on cached features. With ``density``, every prediction pass also keeps the mean DAAM
    density map of its rows, and ``accumulate`` sums the selection passes' maps over the epochs (the released
    attention maps accumulate over all epochs).

    ``batches`` starts reading the epoch's batches ahead of the model (``prefetch`` of them, in a background thread;
    0: each is read in ``logits``), and ``logits`` must then be asked for those batches in order. Use the learner as
    a context manager (or call ``close``): an epoch left unfinished (an error, a divergence) stops its reader there.
    """

    def __init__(self, model: torch.nn.Module, features: np.ndarray, layers: list[int] | None, batch_size: int,
                 dev: torch.device, density: bool = False, prefetch: int = DEPTH) -> None:
        self.model, self.features, self.layers, self.batch_size, self.dev = model, features, layers, batch_size, dev
        self.density, self.latest, self.prefetch = density, None, prefetch
        self.epoch: Prefetch | None = None

    def batches(self, order: np.ndarray, batch_size: int, seed: int) -> list[np.ndarray]:
        batches = super().batches(order, batch_size, seed)
        self.close()
        self.epoch = Prefetch(self.features, batches, self.layers, self.dev, self.prefetch)
        return batches

    def logits(self, rows: np.ndarray) -> torch.Tensor:
        if self.epoch is None:
            raise RuntimeError("HeadLearner.logits: no epoch started; ask batches() for the epoch's batches first")
        return self.model(self.epoch.take(rows))

    def predict(self, rows: np.ndarray) -> np.ndarray:
        pred, self.latest = _evaluate(self.model, self.features, rows, self.layers, self.batch_size, self.dev,
                                      with_density=self.density, prefetch=self.prefetch)
        return pred

    def close(self) -> None:
        """Stop the current epoch's reader (it has ended by itself when the epoch's batches were all taken)."""
        if self.epoch is not None:
            self.epoch.close()
            self.epoch = None

    def __enter__(self) -> "HeadLearner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def weights(self) -> dict:
        return self.model.state_dict()

    def load_weights(self, state: dict) -> None:
        self.model.load_state_dict(state)

    def accumulate(self, total: dict | None) -> dict | None:
        if self.latest is None:
            return None
        density = torch.from_numpy(self.latest)
        return {"sum": density, "epochs": 1} if total is None else {"sum": total["sum"] + density,
                                                                     "epochs": total["epochs"] + 1}


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
    prefetch: int = DEPTH,
) -> dict:
    """Train, select and test one fold/seed; resumable from ``out_dir/checkpoint.pt``. Returns its metrics.

    ``inputs``: the digests of the store the features come from (``store_inputs``), part of the fold's identity.
    ``prefetch``: batches read ahead of the model in a background thread (``data.prefetch``; 0: none); the results
    are the same bit for bit.
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
    # the selection passes keep the density maps; the refit's passes and the test do not need them
    selecting = HeadLearner(model, features, layers, hp["batch_size"], dev, density=True, prefetch=prefetch)
    learner = HeadLearner(model, features, layers, hp["batch_size"], dev, prefetch=prefetch)
    with selecting, learner:  # an epoch cut short (Diverged, Interrupted, an error) stops its reader here
        fitted = fit(selecting, optimiser, split, labels, settings, out_dir, dev, inputs=inputs,
                     stop_after_epoch=stop_after_epoch, progress=progress)
        tested, refitted = split, {"refit": False}
        if initial is not None:
            fitted, tested, refitted = refit(fitted, learner, make_optimiser, initial, split, labels, settings,
                                             out_dir, dev, inputs=inputs, stop_after_epoch=stop_after_epoch,
                                             progress=progress)
        metrics = conclude(fitted, learner, tested, labels, ids, num_classes, settings, out_dir, dev, inputs=inputs)
    metrics.update(refitted)
    _, density = _evaluate(model, features, split.select, layers, hp["batch_size"], dev, with_density=True,
                           prefetch=prefetch)
    metrics.update({
        "params": heads.count_parameters(model, include_classifier=True),
        "params_without_classifier": heads.count_parameters(model, include_classifier=False),
        "layers": layers,
        "model": getattr(model, "resolved", {}),  # the options the registry actually used (e.g. DAAM heads for N)
    })
    if density is not None:
        save_npy(out_dir / "density.npy", density.astype(np.float32))
    if fitted.accumulated is not None:
        all_epochs = (fitted.accumulated["sum"] / fitted.accumulated["epochs"]).numpy()
        save_npy(out_dir / "density_all_epochs.npy", all_epochs.astype(np.float32))
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


def splits_of(store, settings: dict) -> list[Split]:
    return make_splits(
        store.labels, store.groups, store.splits, settings["evaluation"], settings["protocol"], settings["seed"],
        settings["hyper"]["dev_fraction"],
    )


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
    ids = store.index["id"].astype(str).to_numpy()
    num_classes = int(store.labels.max()) + 1

    def train() -> dict:
        features, depth = resident(store.features)
        return run_split(features, store.labels, ids, num_classes, split, settings, fold_dir, device, progress=False,
                         inputs=inputs, prefetch=depth)

    return unless_finished(fold_dir, identity, "settings and features", train)


def train_all(store_dir: Path, settings: dict, out_dir: Path, device: str = "auto", **options) -> pd.DataFrame:
    """Every fold/seed of a head, and ``out_dir/runs.csv``: ``dispatch.run_folds`` (``options``: only, threads,
    launcher) over the store's splits."""
    store = load_store(store_dir)  # checksums verified here, once, not in each fold job
    splits = splits_of(store, settings)
    return run_folds(run_fold, splits, settings, out_dir, store_inputs(store.manifest), store_dir=store_dir,
                     device=device, **options)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", required=True, type=Path, help="feature store directory (from `daamflow embed`)")
    p.add_argument("--out", required=True, type=Path, help="run directory: <out>/<fold>/… and <out>/runs.csv")
    p.add_argument(
        "--settings", required=True,
        help="JSON (inline or a file) from daamflow.config.train_settings: method, protocol, seed, evaluation, hyper, model_options",
    )
    add_fold_arguments(p)
    p.add_argument("--layers-from", type=Path, default=None,
                   help="layers.json from `daamflow importance map`: train on the layers of --selection only")
    p.add_argument("--selection", choices=SELECTIONS, default=None,
                   help="which layer set of --layers-from (the run is labelled <method>@<selection>)")
    p.add_argument("--label", default=None,
                   help="the run's method label in the tables (default <method>@<selection> with --selection)")
    add_launcher_argument(p)


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    settings = read_settings(args.settings)
    if (args.layers_from is None) != (args.selection is None):
        raise SystemExit("--layers-from and --selection go together")
    if args.layers_from is not None:  # every fold's own layers, hashed with the settings
        settings = {**settings, "layers": read_fold_layers(args.layers_from, args.selection),
                    "label": args.label or f"{settings['method']}@{args.selection}"}
    frame = train_all(args.features, settings, args.out, args.device, **fold_options(args))
    log.info("%s/%s/%s: accuracy %s", settings["dataset"], settings["protocol"], settings["method"],
             ", ".join(f"{a:.3f}" for a in frame["accuracy"]))
    return 0
