"""One fold's training loop and run contract, shared by the heads (``train.py``) and the LoRA baselines (``finetune.py``).

``fit`` trains on ``split.train``, scores ``split.select`` after every epoch (ReduceLROnPlateau steps on that accuracy,
the earliest best epoch is kept) and rewrites ``checkpoint.pt`` atomically. Resume is exact: the global generators
(dropout, WavLM's layer drop) and the shuffling generator are seeded by (split seed, epoch), so a run restarted at
epoch e+1 ends with the numbers of an uninterrupted run. ``conclude`` restores the selected weights, tests them and
writes ``model.pt``, ``history.csv`` and ``predictions.csv``; the caller writes ``metrics.json`` last, whose presence
(with the same settings hash, see ``finished``) marks the fold done.
"""
from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import __version__
from .atomic import atomic_write, write_csv
from .config import settings_json
from .folds import Split

log = logging.getLogger(__name__)


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


def use_amp(hp: dict, dev: torch.device) -> bool:
    """Mixed precision (bfloat16 autocast, a bfloat16 frozen encoder) only on a GPU, as the paper."""
    return hp["amp"] == "auto" and dev.type == "cuda"


def loss_of(logits: torch.Tensor, target: torch.Tensor, hp: dict) -> torch.Tensor:
    if hp["loss"] == "focal":
        return focal_loss(logits, target, hp["focal_alpha"], hp["focal_gamma"])
    return F.cross_entropy(logits, target)


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


def finished(fold_dir: Path, digest: str) -> dict | None:
    """The fold's metrics if it finished with these settings (hash ``digest``), else None."""
    path = Path(fold_dir) / "metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    return metrics if metrics.get("settings_hash") == digest else None


def _slices(order: np.ndarray, batch_size: int, seed: int) -> list[np.ndarray]:
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


@dataclass
class Fitted:
    history: list[dict]
    best: dict        # {"accuracy", "epoch", "state"}: the earliest epoch with the highest select accuracy
    probe: Any        # what ``after_first_epoch`` returned (kept across a resume)
    seconds: float    # wall time of the epochs run in this process


def fit(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    split: Split,
    labels: np.ndarray,
    settings: dict,
    out_dir: Path,
    dev: torch.device,
    *,
    logits: Callable[[np.ndarray], torch.Tensor],
    predict: Callable[[np.ndarray], np.ndarray],
    weights: Callable[[], dict],
    load_weights: Callable[[dict], None],
    after_first_epoch: Callable[[], Any] | None = None,
    batches: Callable[[np.ndarray, int, int], list[np.ndarray]] | None = None,
    stop_after_epoch: int | None = None,
    progress: bool = True,
) -> Fitted:
    """Train ``model`` on ``split`` for ``settings["hyper"]["epochs"]`` epochs, resuming from ``out_dir/checkpoint.pt``.

    ``logits(rows)`` runs the model on a batch of dataset rows (in training mode, under autocast on a GPU);
    ``predict(rows)`` returns class predictions in evaluation mode; ``weights()`` / ``load_weights(state)`` get and
    put the weights a checkpoint keeps (a head: all; LoRA: adapters and head, never the frozen encoder);
    ``after_first_epoch()`` runs once the first epoch's steps are done, its value is checkpointed and returned;
    ``batches(order, batch_size, seed)`` cuts an epoch's shuffled rows into batches (default: consecutive slices).
    """
    hp = settings["hyper"]
    digest = settings_hash(settings)
    label = settings.get("label", settings["method"])
    amp = use_amp(hp, dev)
    trained = [p for group in optimiser.param_groups for p in group["params"]]
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, mode="max", factor=hp["scheduler_factor"], patience=hp["scheduler_patience"]
    )
    start_epoch, history, best, probe = 1, [], {"accuracy": -1.0, "epoch": 0, "state": None}, None
    ckpt_path = out_dir / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=dev, weights_only=False)
        if ckpt.get("settings_hash") == digest:
            load_weights(ckpt["model"])
            optimiser.load_state_dict(ckpt["optimiser"])
            scheduler.load_state_dict(ckpt["scheduler"])
            start_epoch, history, best, probe = ckpt["epoch"] + 1, ckpt["history"], ckpt["best"], ckpt.get("probe")
            log.info("%s: resuming at epoch %d from %s", split.name, start_epoch, ckpt_path)
        else:
            log.warning("%s: checkpoint was written with other settings; starting over", split.name)

    t0 = time.perf_counter()
    bar = tqdm(range(start_epoch, hp["epochs"] + 1), desc=f"{label}/{split.name}", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        seed = split.seed * 100_003 + epoch
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        order = split.train[torch.randperm(len(split.train), generator=torch.Generator().manual_seed(seed)).numpy()]
        total, seen = 0.0, 0
        for step, rows in enumerate((batches or _slices)(order, hp["batch_size"], seed)):
            y = torch.from_numpy(labels[rows].astype(np.int64)).to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                out = logits(rows)
            loss = loss_of(out.float(), y, hp)
            # no trained parameter on the graph (the released LoRA+ on WavLM: inert q/v adapters, the head left out
            # of the optimiser): nothing can move, the run evaluates the model as initialised, as that script did
            if loss.requires_grad:
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                if hp.get("grad_clip"):
                    torch.nn.utils.clip_grad_norm_(trained, hp["grad_clip"])
                optimiser.step()
            elif step == 0 and epoch == 1:
                log.warning("%s: no trained parameter receives a gradient; the model stays as initialised", split.name)
            total += loss.item() * len(rows)
            seen += len(rows)
        if epoch == 1 and after_first_epoch is not None:
            probe = after_first_epoch()
        model.eval()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            acc = float((predict(split.select) == labels[split.select]).mean())
        scheduler.step(acc)
        history.append({"epoch": epoch, "train_loss": total / max(seen, 1), "select_accuracy": acc,
                        "lr": optimiser.param_groups[0]["lr"]})
        current = weights()
        if acc > best["accuracy"]:  # strict, as the released code: the earliest best epoch wins
            best = {"accuracy": acc, "epoch": epoch, "state": {k: v.detach().cpu().clone() for k, v in current.items()}}
        bar.set_postfix(loss=f"{total / max(seen, 1):.3f}", sel=f"{acc:.3f}")
        state = {
            "epoch": epoch, "model": current, "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(), "history": history, "best": best, "probe": probe,
            "settings_hash": digest,
        }
        atomic_write(ckpt_path, lambda p: torch.save(state, p))
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < hp["epochs"]:
            raise Interrupted(f"{split.name}: stopped after epoch {epoch} (checkpoint saved)")
    return Fitted(history, best, probe, time.perf_counter() - t0)


def conclude(
    fitted: Fitted,
    model: torch.nn.Module,
    split: Split,
    labels: np.ndarray,
    ids: np.ndarray,
    num_classes: int,
    settings: dict,
    out_dir: Path,
    dev: torch.device,
    *,
    predict: Callable[[np.ndarray], np.ndarray],
    load_weights: Callable[[dict], None],
) -> dict:
    """Restore the selected weights, test them, write model.pt, history.csv, predictions.csv; the common metrics."""
    load_weights(fitted.best["state"])
    atomic_write(out_dir / "model.pt", lambda p: torch.save(fitted.best["state"], p))
    model.eval()
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp(settings["hyper"], dev)):
        pred = predict(split.test)
    truth = labels[split.test]
    matrix = confusion(truth, pred, num_classes)
    write_csv(out_dir / "history.csv", pd.DataFrame(fitted.history))
    write_csv(out_dir / "predictions.csv", pd.DataFrame({"id": ids[split.test], "label": truth, "pred": pred}))
    return {
        "accuracy": float((pred == truth).mean()),
        "macro_f1": macro_f1(matrix),
        "confusion": matrix.tolist(),
        "support": np.bincount(truth, minlength=num_classes).tolist(),
        "best_epoch": fitted.best["epoch"],
        "select_accuracy": fitted.best["accuracy"],
        "epochs_run": len(fitted.history),
        "seed": split.seed,
        "split": split.as_dict(),
        "selection": "test" if settings["protocol"] == "paper" else "dev",
        "wall_time_s": fitted.seconds,
        "settings": settings,
        "settings_hash": settings_hash(settings),
        "device": str(dev),
        "versions": versions(),
    }
