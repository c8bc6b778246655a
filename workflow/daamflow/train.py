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
import hashlib
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import __version__, heads
from .atomic import atomic_write, write_csv, write_json
from .config import read_settings, settings_json
from .features import load_store
from .folds import Split, make_splits

log = logging.getLogger(__name__)


VERIFY_MAX_BYTES = 2 << 30  # feature stores up to 2 GiB get their sha256 checked before training


class Interrupted(RuntimeError):
    """Raised by ``stop_after_epoch`` (tests, preemption drills) once the checkpoint of that epoch is on disk."""


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(settings_json(settings).encode()).hexdigest()[:16]


def versions() -> dict:
    return {
        "daamflow": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no GPU; use --device cpu or auto")
    return torch.device(device)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """The released code's focal loss: mean of α·(1 − p_t + 1e-6)^γ · CE."""
    ce = F.cross_entropy(logits, target, reduction="none")
    p_t = torch.exp(-ce)
    return (alpha * (1 - p_t + 1e-6) ** gamma * ce).mean()


class Batches:
    """Mini-batches read from the (memory-mapped, float16) feature array; only the needed rows are materialised."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, rows: np.ndarray, layers: list[int] | None):
        self.features, self.labels, self.rows, self.layers = features, labels, rows, layers

    def iterate(self, batch_size: int, generator: torch.Generator | None = None):
        order = self.rows
        if generator is not None:
            order = self.rows[torch.randperm(len(self.rows), generator=generator).numpy()]
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x = np.asarray(self.features[idx], dtype=np.float32)
            if self.layers is not None:
                x = x[:, self.layers]
            yield torch.from_numpy(x), torch.from_numpy(self.labels[idx].astype(np.int64)), idx


def _evaluate(model, batches: Batches, batch_size: int, device, with_density: bool = False):
    model.eval()
    preds, density_sum, count = [], None, 0
    with torch.no_grad():
        for x, _, _ in batches.iterate(batch_size):
            x = x.to(device)
            preds.append(model(x).argmax(dim=1).cpu())
            if with_density:
                g = heads.density_map(model, x)
                if g is not None:
                    s = g.float().sum(dim=0).cpu()
                    density_sum = s if density_sum is None else density_sum + s
                    count += len(x)
    pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    density = None if density_sum is None else (density_sum / count).numpy()
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
    hp, method = settings["hyper"], settings["method"]
    digest = settings_hash(settings)
    dev = resolve_device(device)
    layers = settings.get("layers")
    num_layers = len(layers) if layers is not None else features.shape[1]

    torch.manual_seed(split.seed)
    model = heads.build_model(method, num_layers, features.shape[2], num_classes, **settings["model_options"]).to(dev)
    optimiser = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, mode="max", factor=hp["scheduler_factor"], patience=hp["scheduler_patience"]
    )
    use_amp = hp["amp"] == "auto" and dev.type == "cuda"

    train_b = Batches(features, labels, split.train, layers)
    select_b = Batches(features, labels, split.select, layers)
    test_b = Batches(features, labels, split.test, layers)

    start_epoch, history, best = 1, [], {"accuracy": -1.0, "epoch": 0, "state": None}
    ckpt_path = out_dir / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=dev, weights_only=False)
        if ckpt.get("settings_hash") == digest:
            model.load_state_dict(ckpt["model"])
            optimiser.load_state_dict(ckpt["optimiser"])
            scheduler.load_state_dict(ckpt["scheduler"])
            start_epoch, history, best = ckpt["epoch"] + 1, ckpt["history"], ckpt["best"]
            log.info("%s: resuming at epoch %d from %s", split.name, start_epoch, ckpt_path)
        else:
            log.warning("%s: checkpoint was written with other settings; starting over", split.name)

    t0 = time.perf_counter()
    epochs = range(start_epoch, hp["epochs"] + 1)
    bar = tqdm(epochs, desc=f"{method}/{split.name}", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        gen = torch.Generator().manual_seed(split.seed * 100_003 + epoch)
        total, seen = 0.0, 0
        for x, y, _ in train_b.iterate(hp["batch_size"], gen):
            x, y = x.to(dev), y.to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
            logits = logits.float()
            if hp["loss"] == "focal":
                loss = focal_loss(logits, y, hp["focal_alpha"], hp["focal_gamma"])
            else:
                loss = F.cross_entropy(logits, y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if hp.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), hp["grad_clip"])
            optimiser.step()
            total += loss.item() * len(y)
            seen += len(y)
        pred, _ = _evaluate(model, select_b, hp["batch_size"], dev)
        acc = float((pred == labels[split.select]).mean())
        scheduler.step(acc)
        history.append(
            {"epoch": epoch, "train_loss": total / max(seen, 1), "select_accuracy": acc, "lr": optimiser.param_groups[0]["lr"]}
        )
        if acc > best["accuracy"]:  # strict, as the released code: the earliest best epoch wins
            best = {"accuracy": acc, "epoch": epoch, "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        bar.set_postfix(loss=f"{total / max(seen, 1):.3f}", sel=f"{acc:.3f}")
        state = {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": history,
            "best": best,
            "settings_hash": digest,
        }
        atomic_write(ckpt_path, lambda p: torch.save(state, p))
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < hp["epochs"]:
            raise Interrupted(f"{split.name}: stopped after epoch {epoch} (checkpoint saved)")

    model.load_state_dict(best["state"])
    atomic_write(out_dir / "model.pt", lambda p: torch.save(best["state"], p))
    pred, _ = _evaluate(model, test_b, hp["batch_size"], dev)
    _, density = _evaluate(model, select_b, hp["batch_size"], dev, with_density=True)
    truth = labels[split.test]
    matrix = confusion(truth, pred, num_classes)
    metrics = {
        "accuracy": float((pred == truth).mean()),
        "macro_f1": macro_f1(matrix),
        "confusion": matrix.tolist(),
        "support": np.bincount(truth, minlength=num_classes).tolist(),
        "best_epoch": best["epoch"],
        "select_accuracy": best["accuracy"],
        "epochs_run": len(history),
        "seed": split.seed,
        "split": split.as_dict(),
        "selection": "test" if settings["protocol"] == "paper" else "dev",
        "wall_time_s": time.perf_counter() - t0,
        "params": heads.count_parameters(model, include_classifier=True),
        "params_without_classifier": heads.count_parameters(model, include_classifier=False),
        "layers": layers,
        "model": getattr(model, "resolved", {}),  # the options the registry actually used (e.g. DAAM heads for N)
        "settings": settings,
        "settings_hash": digest,
        "device": str(dev),
        "versions": versions(),
    }
    write_csv(out_dir / "history.csv", pd.DataFrame(history))
    write_csv(out_dir / "predictions.csv", pd.DataFrame({"id": ids[split.test], "label": truth, "pred": pred}))
    if density is not None:
        atomic_write(out_dir / "density.npy", lambda p: _save_npy(p, density))
    gaussians = heads.gaussian_parameters(model)
    if gaussians is not None:
        write_json(out_dir / "gaussians.json", gaussians)
    weights = heads.layer_weights(model)
    if weights is not None:  # weighted_sum: the learned softmax layer weights, compared with IF in the analyses
        write_json(out_dir / "layer_weights.json", {"weights": weights.detach().cpu().tolist()})
    write_json(out_dir / "metrics.json", metrics)  # last: its presence marks the fold finished
    log.info("%s %s: best epoch %d (selection accuracy %.4f), test accuracy %.4f, macro-F1 %.4f",
             method, split.name, best["epoch"], best["accuracy"], metrics["accuracy"], metrics["macro_f1"])
    return metrics


def confusion(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (truth, pred), 1)
    return matrix


def macro_f1(matrix: np.ndarray) -> float:
    """Mean over classes of F1 = 2 TP / (2 TP + FP + FN); a class never seen nor predicted scores 0."""
    tp = np.diag(matrix).astype(float)
    denominator = 2 * tp + (matrix.sum(axis=0) - tp) + (matrix.sum(axis=1) - tp)
    return float(np.mean(np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as fh:  # a file object: np.save would append ".npy" to a bare temp name
        np.save(fh, array.astype(np.float32))


def finished(fold_dir: Path, digest: str) -> dict | None:
    path = fold_dir / "metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    return metrics if metrics.get("settings_hash") == digest else None


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
