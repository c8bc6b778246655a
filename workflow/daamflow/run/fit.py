"""One fold's training loop and run contract (docs/architecture.md#3-run-contract), shared by the heads (``train.py``)
and the LoRA baselines (``finetune.py``), each of which hands ``fit`` a ``Learner``: the model and how to run it.

``fit`` trains on ``split.train``, scores ``split.select`` after every epoch (ReduceLROnPlateau steps on that accuracy,
the earliest best epoch is kept) and rewrites ``checkpoint.pt`` atomically. Resume is exact: the global generators
(dropout, WavLM's layer drop) and the shuffling generator are seeded by (split seed, epoch), so a run restarted at
epoch e+1 ends with the numbers of an uninterrupted run. ``conclude`` restores the selected weights, tests them and
writes ``model.pt``, ``history.csv`` and ``predictions.csv``; the caller writes ``metrics.json`` last, whose presence
(with the same fold identity, see ``finished``) marks the fold done.

A fold's identity (``identity.fold_identity``) is its settings hash together with the digests of what it reads (the feature
store's files for a head; the prepared data and the encoder weights for LoRA): a finished fold, a checkpoint and a
queued job are reused only under the same identity, so changed data retrains. Checkpoints load with
``weights_only=True``: a results file can hold tensors and plain containers, never code.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import pickle
import platform
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from daamflow import __version__
from daamflow.atomic import save_torch, write_csv
from daamflow.catalog import SELECTION_PART
from daamflow.data.folds import Split
from daamflow.device import native_bf16
from daamflow.run.identity import fold_identity, settings_hash
from daamflow.run.metrics import confusion, loss_of, macro_f1

log = logging.getLogger(__name__)


class Interrupted(RuntimeError):
    """Raised by ``stop_after_epoch`` (tests, preemption drills) once the checkpoint of that epoch is on disk."""


class Diverged(FloatingPointError):
    """The training loss became NaN or infinite: the fold fails instead of reporting a model that predicts nothing."""


def versions() -> dict:
    return {
        "daamflow": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def use_amp(hp: dict, dev: torch.device) -> bool:
    """Mixed precision (bfloat16 autocast; on a GPU also a bfloat16 frozen encoder) where the device has bfloat16 in
    hardware: ``auto`` on a GPU only, as the paper; ``bf16`` also on a CPU (the demo's text LoRA jobs); ``off`` never.
    Without hardware bfloat16 (GPUs before Ampere, CPUs without AVX-512 BF16/AMX) training runs in float32."""
    if hp["amp"] == "off" or (hp["amp"] == "auto" and dev.type != "cuda"):
        return False
    return native_bf16(dev)


def finished(fold_dir: Path, identity: str) -> dict | None:
    """The fold's metrics if it finished with this ``fold_identity``, else None.

    metrics.json is written atomically, so one that does not parse was damaged from outside: an error naming it
    rather than a silent retrain, so that the damage is seen.
    """
    path = Path(fold_dir) / "metrics.json"
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text())
        if not isinstance(metrics, dict):
            raise ValueError(f"a JSON {type(metrics).__name__}, not an object")
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a valid metrics file ({err}); it was damaged after it was written. "
                         f"Delete it (rm {path}) to train this fold again") from err
    return metrics if metrics.get("identity") == identity else None


@contextlib.contextmanager
def fold_lock(fold_dir: Path) -> Iterator[None]:
    """Hold ``<fold_dir>/.lock`` (flock) while the fold runs: an orphaned job of an earlier run and a rerun never
    train the same fold at once; the later one waits, then finds the fold finished."""
    fold_dir = Path(fold_dir)
    fold_dir.mkdir(parents=True, exist_ok=True)
    with open(fold_dir / ".lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s: another process trains this fold (it holds %s); waiting for it to finish",
                        fold_dir.name, fold_dir / ".lock")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_checkpoint(path: Path, name: str) -> dict | None:
    """The checkpoint dict at ``path`` (on the CPU: loading it is no GPU allocation that could fail and be taken for
    damage; ``load_state_dict`` moves the state where the model is), or None when there is none or it does not load.

    Tensors and plain containers only (``weights_only=True``). Checkpoints are written atomically, so one that does
    not load was damaged or placed from outside: it is set aside as ``checkpoint.pt.corrupt-<time>``, with a warning
    (``name`` says whose), and the run starts over.
    """
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict):
            raise pickle.UnpicklingError(f"holds a {type(ckpt).__name__}, not a checkpoint dict")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as err:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        path.rename(aside)
        why = ("it holds objects other than tensors and plain containers, refused unread: unpickling them could run "
               "code" if isinstance(err, pickle.UnpicklingError) else str(err).splitlines()[0])
        log.warning("%s: %s is not a loadable checkpoint (%s); set aside as %s, starting over", name, path, why, aside)
        return None
    return ckpt


def load_checkpoint(path: Path, identity: str, name: str) -> dict | None:
    """The fold checkpoint at ``path`` if it loads (``read_checkpoint``) and was written under ``identity``."""
    ckpt = read_checkpoint(path, name)
    if ckpt is None:
        return None
    if ckpt.get("identity") != identity:
        log.warning("%s: %s was written with other settings or inputs; starting over", name, path)
        return None
    return ckpt


class Learner(Protocol):
    """What ``fit``, ``refit`` and ``conclude`` need of a model: the head trainer (``train.HeadLearner``) and the LoRA
    trainer (``lora_model.LoraLearner``) implement it. Subclasses inherit the defaults of the optional hooks."""

    model: torch.nn.Module

    def logits(self, rows: np.ndarray) -> torch.Tensor:
        """The model on a batch of dataset rows (training mode, under autocast on a GPU)."""

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Class predictions (the caller sets evaluation mode, no_grad and autocast)."""

    def weights(self) -> dict:
        """The weights a checkpoint keeps (a head: all; LoRA: adapters and head, never the frozen encoder)."""

    def load_weights(self, state: dict) -> None:
        """Put ``weights()`` back."""

    def batches(self, order: np.ndarray, batch_size: int, seed: int) -> list[np.ndarray]:
        """An epoch's shuffled rows cut into batches: consecutive slices by default."""
        return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]

    def after_first_epoch(self) -> Any:
        """Runs once the first epoch's steps are done; its value is checkpointed and returned as ``Fitted.probe``."""
        return None

    def accumulate(self, value: Any) -> Any:
        """Runs after each epoch's selection pass with what it returned the epoch before (None at first); the value
        is checkpointed and returned as ``Fitted.accumulated`` (tensors and plain containers only)."""
        return None


@dataclass
class Fitted:
    history: list[dict]
    best: dict        # {"accuracy", "epoch", "state"}: the earliest epoch with the highest select accuracy
    probe: Any        # what ``after_first_epoch`` returned (kept across a resume)
    seconds: float    # wall time of the epochs run in this process
    accumulated: Any = None  # what ``accumulate`` built over all epochs (kept across a resume)


def fit(
    learner: Learner,
    optimiser: torch.optim.Optimizer,
    split: Split,
    labels: np.ndarray,
    settings: dict,
    out_dir: Path,
    dev: torch.device,
    *,
    inputs: dict[str, str],
    stop_after_epoch: int | None = None,
    progress: bool = True,
) -> Fitted:
    """Train ``learner.model`` on ``split`` for ``settings["hyper"]["epochs"]`` epochs, resuming from
    ``out_dir/checkpoint.pt``. ``inputs`` are the digests of the fold's input files (see ``fold_identity``).
    Raises ``Diverged`` when the loss is NaN or infinite.
    """
    model = learner.model
    hp = settings["hyper"]
    identity = fold_identity(settings, inputs)
    label = settings.get("label", settings["method"])
    amp = use_amp(hp, dev)
    trained = [p for group in optimiser.param_groups for p in group["params"]]
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, mode="max", factor=hp["scheduler_factor"], patience=hp["scheduler_patience"]
    )
    start_epoch, history, best, probe = 1, [], {"accuracy": -1.0, "epoch": 0, "state": None}, None
    accumulated = None
    ckpt_path = out_dir / "checkpoint.pt"
    ckpt = load_checkpoint(ckpt_path, identity, split.name)
    if ckpt is not None:
        learner.load_weights(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimiser"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, history, best, probe = ckpt["epoch"] + 1, ckpt["history"], ckpt["best"], ckpt.get("probe")
        accumulated = ckpt.get("accumulated")
        log.info("%s: resuming at epoch %d from %s", split.name, start_epoch, ckpt_path)

    t0 = time.perf_counter()
    bar = tqdm(range(start_epoch, hp["epochs"] + 1), desc=f"{label}/{split.name}", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        seed = split.seed * 100_003 + epoch
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        order = split.train[torch.randperm(len(split.train), generator=torch.Generator().manual_seed(seed)).numpy()]
        total, seen = 0.0, 0
        for step, rows in enumerate(learner.batches(order, hp["batch_size"], seed)):
            y = torch.from_numpy(labels[rows].astype(np.int64)).to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                out = learner.logits(rows)
            loss = loss_of(out.float(), y, hp)
            value = loss.item()
            if not math.isfinite(value):
                raise Diverged(
                    f"{label} {split.name}: training loss is {value} at epoch {epoch}, batch {step + 1}: the training "
                    f"diverged. Likely causes: a learning rate too high (lr {hp['lr']}; lower training.defaults.lr "
                    f"or the dataset's training lr in the config) or bad input features (NaN or huge values). No "
                    f"metrics were written.")
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
            total += value * len(rows)
            seen += len(rows)
        if epoch == 1:
            probe = learner.after_first_epoch()
        model.eval()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            acc = float((learner.predict(split.select) == labels[split.select]).mean())
        scheduler.step(acc)
        accumulated = learner.accumulate(accumulated)
        history.append({"epoch": epoch, "train_loss": total / max(seen, 1), "select_accuracy": acc,
                        "lr": optimiser.param_groups[0]["lr"]})
        current = learner.weights()
        if acc > best["accuracy"]:  # strict, as the released code: the earliest best epoch wins
            best = {"accuracy": acc, "epoch": epoch, "state": {k: v.detach().cpu().clone() for k, v in current.items()}}
        bar.set_postfix(loss=f"{total / max(seen, 1):.3f}", sel=f"{acc:.3f}")
        state = {
            "epoch": epoch, "model": current, "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(), "history": history, "best": best, "probe": probe,
            "accumulated": accumulated, "identity": identity,
        }
        save_torch(ckpt_path, state)
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < hp["epochs"]:
            raise Interrupted(f"{split.name}: stopped after epoch {epoch} (checkpoint saved)")
    return Fitted(history, best, probe, time.perf_counter() - t0, accumulated)


def conclude(
    fitted: Fitted,
    learner: Learner,
    split: Split,
    labels: np.ndarray,
    ids: np.ndarray,
    num_classes: int,
    settings: dict,
    out_dir: Path,
    dev: torch.device,
    *,
    inputs: dict[str, str],
) -> dict:
    """Restore the selected weights, test them, write model.pt, history.csv, predictions.csv; the common metrics."""
    learner.load_weights(fitted.best["state"])
    save_torch(out_dir / "model.pt", fitted.best["state"])
    learner.model.eval()
    amp = use_amp(settings["hyper"], dev)
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        pred = learner.predict(split.test)
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
        "selection": SELECTION_PART[settings["protocol"]],
        "wall_time_s": fitted.seconds,
        "settings": settings,
        "settings_hash": settings_hash(settings),
        "inputs": inputs,
        "identity": fold_identity(settings, inputs),
        "device": str(dev),
        "autocast": "bfloat16" if amp else None,  # what hyper.amp resolved to on this device
        "versions": versions(),
    }


def refits(settings: dict) -> bool:
    """``hyper.refit`` under ``clean``: the dev split chose the epoch count, the tested model then trains on train +
    dev. Under ``paper`` the selection part is the test part, which must never be trained on: no refit."""
    return bool(settings["hyper"].get("refit")) and SELECTION_PART[settings["protocol"]] != "test"


class _Refitting(Learner):
    """A refit's view of the learner: its training rows counted, no first-epoch probe and no accumulation (those
    belong to the selection run)."""

    def __init__(self, learner: Learner) -> None:
        self.learner, self.model, self.seen = learner, learner.model, []

    def logits(self, rows: np.ndarray) -> torch.Tensor:
        self.seen.append(len(rows))
        return self.learner.logits(rows)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self.learner.predict(rows)

    def weights(self) -> dict:
        return self.learner.weights()

    def load_weights(self, state: dict) -> None:
        self.learner.load_weights(state)

    def batches(self, order: np.ndarray, batch_size: int, seed: int) -> list[np.ndarray]:
        return self.learner.batches(order, batch_size, seed)


def refit(
    fitted: Fitted,
    learner: Learner,
    make_optimiser: Callable[[], torch.optim.Optimizer],
    initial: dict,
    split: Split,
    labels: np.ndarray,
    settings: dict,
    out_dir: Path,
    dev: torch.device,
    **fit_args: Any,
) -> tuple[Fitted, Split, dict]:
    """Train the ``initial`` weights again on train + dev for the selected epoch count E (``fitted.best["epoch"]``).

    The run is ``fit`` on a split whose training part is train + dev, with ``epochs`` = E, in ``out_dir/refit/``
    (its own checkpoint: resumable, and deterministic as every fit). Its plateau scheduler still steps on the dev
    accuracy, now measured on rows it trains on. Returns the Fitted to ``conclude`` (the selection run's history
    and selection accuracy, the refit's final weights as the model to test), the refit split and the keys for
    metrics.json: ``refit`` (True), ``refit_epochs``, ``refit_train_rows``, ``refit_rows_seen`` (rows the training
    steps of this process consumed; None when every epoch was restored from the checkpoint), ``refit_history``.
    """
    epochs = fitted.best["epoch"]
    rows = np.sort(np.concatenate([split.train, split.select]))
    refit_split = Split(split.name, split.seed, rows, split.select, split.test,
                        f"{split.description}; refit on train + dev for {epochs} epochs")
    refit_settings = {**settings, "hyper": {**settings["hyper"], "epochs": epochs}}
    refitting = _Refitting(learner)
    learner.load_weights(initial)
    out = out_dir / "refit"
    out.mkdir(parents=True, exist_ok=True)
    again = fit(refitting, make_optimiser(), refit_split, labels, refit_settings, out, dev, **fit_args)
    final = {k: v.detach().cpu().clone() for k, v in learner.weights().items()}
    seen = refitting.seen
    record = {"refit": True, "refit_epochs": epochs, "refit_train_rows": int(len(rows)),
              "refit_rows_seen": sum(seen) if seen else None, "refit_history": again.history}
    tested = replace(fitted, best={"accuracy": fitted.best["accuracy"], "epoch": epochs, "state": final},
                     seconds=fitted.seconds + again.seconds)
    return tested, refit_split, record
