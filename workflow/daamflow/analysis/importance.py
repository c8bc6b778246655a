"""Importance Factor (IF) of a density map: global min-max normalisation, per-layer summaries, and the layers each
fold's ablation retrains on.

NumPy in, NumPy out (no torch: the training jobs import this to read their layers). A density map is the
validation-averaged gate, shape (N layers, d features).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from daamflow.catalog import SELECTIONS

# importance.if_source -> the file of a DAAM fold its IF map is read from (both written by `daamflow train`)
SOURCES = {
    "selected": "density.npy",  # the selected model's gate, averaged over the select part
    "all_epochs": "density_all_epochs.npy",  # the select-part gate of every epoch's model, averaged (released code)
}


def _as_map(density_map: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(density_map, dtype=np.float64)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"{name} must be a non-empty 2-D array (layers, features), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def importance_factor(density_map: np.ndarray) -> np.ndarray:
    """IF = (DA - min DA) / (max DA - min DA) over the whole (N, d) map, in [0, 1]; a constant map gives zeros."""
    arr = _as_map(density_map, "density_map")
    low, span = arr.min(), arr.max() - arr.min()
    if span == 0:
        return np.zeros_like(arr)
    return (arr - low) / span


def per_layer_importance(if_map: np.ndarray) -> np.ndarray:
    """Mean IF over the features of each layer, shape (N,)."""
    return _as_map(if_map, "if_map").mean(axis=1)


def layer_share(if_map: np.ndarray) -> np.ndarray:
    """Each layer's share of the summed IF (the paper's Fig. 3 "percentage contribution", as a fraction summing to 1).

    An all-zero map (constant density) has no preferred layer: equal shares.
    """
    totals = _as_map(if_map, "if_map").sum(axis=1)
    if np.any(totals < 0):
        raise ValueError("if_map must be non-negative (an IF map lies in [0, 1])")
    grand = totals.sum()
    if grand == 0:
        return np.full(totals.shape, 1.0 / totals.size)
    return totals / grand


def rank_layers(per_layer: np.ndarray, descending: bool = True) -> np.ndarray:
    """0-based layer indices sorted by importance (most important first by default); ties keep layer order."""
    arr = np.asarray(per_layer, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"per_layer must be a non-empty 1-D array, got shape {arr.shape}")
    order = np.argsort(-arr if descending else arr, kind="stable")
    return order


def select_layers(per_layer: np.ndarray, k: int, seed) -> dict[str, list[int]]:
    """0-based layers: the k highest and k lowest by IF, and k drawn at random as a control (``seed``: an int or a
    sequence of ints for numpy's default_rng)."""
    n = len(per_layer)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of layers ({n}); got {k}")
    rng = np.random.default_rng(seed)
    return {
        "high": sorted(int(i) for i in rank_layers(per_layer, descending=True)[:k]),
        "low": sorted(int(i) for i in rank_layers(per_layer, descending=False)[:k]),
        "random": sorted(int(i) for i in rng.choice(n, size=k, replace=False)),
    }


def choose_layers(per_layer: np.ndarray, folds: list[str], protocol: str, k: int, seed: int) -> dict:
    """The layers each fold's ablation retrains on, and the folds whose IF runs they come from.

    ``per_layer``: (folds, N), the per-layer IF of each fold's run of the IF method.

    - ``clean``: fold f's high/low layers come from fold f's own run only. That model was fitted on f's training
      part, and its epoch chosen and its density map averaged on f's dev part, carved from the training part: no test
      item of f reached the choice (a choice from the IF averaged over folds would not do: fold j != f trains on f's
      test part).
    - ``paper``: the released way, one choice from the IF averaged over all folds, for every fold. It has seen every
      fold's test part (each run selects its epoch and averages its map there, and the other folds train on it); kept
      so that `paper` reproduces how the published ablation was made.

    The random control is drawn per fold, from (seed, fold position). ``mean`` is the choice from the mean IF (for
    display).
    """
    per_layer = np.asarray(per_layer, dtype=np.float64)
    if per_layer.ndim != 2 or per_layer.shape[0] != len(folds):
        raise ValueError(f"per_layer must be (folds, layers) with one row per fold {list(folds)}; got {per_layer.shape}")
    if protocol not in ("paper", "clean"):
        raise ValueError(f"unknown protocol {protocol!r}; expected 'paper' or 'clean'")
    pooled = protocol == "paper"
    mean = select_layers(per_layer.mean(axis=0), k, seed)
    choice = {}
    for i, fold in enumerate(folds):
        own = select_layers(per_layer[i], k, [seed, i])
        ranked = mean if pooled else own
        choice[fold] = {"high": ranked["high"], "low": ranked["low"], "random": own["random"],
                        "from": list(folds) if pooled else [fold]}
    return {"folds": choice, "mean": mean, "scope": "pooled over folds" if pooled else "per fold"}


def read_fold_layers(path: Path | str, selection: str) -> dict[str, list[int]]:
    """``{fold: 0-based layers}`` of one selection from a ``layers.json`` written by `daamflow importance map`."""
    if selection not in SELECTIONS:
        raise ValueError(f"unknown layer selection {selection!r}; expected one of {SELECTIONS}")
    path = Path(path)
    data = json.loads(path.read_text())
    folds = data.get("folds") if isinstance(data, dict) else None
    if not isinstance(folds, dict) or not folds:
        raise ValueError(f"{path}: no per-fold layer choice (key 'folds'); it predates per-fold choices: "
                         "rerun `daamflow importance map` (delete the file and rerun the workflow)")
    bad = [fold for fold, c in folds.items() if not isinstance(c, dict) or not c.get(selection)]
    if bad:
        raise ValueError(f"{path}: folds {bad} have no '{selection}' layers")
    return {fold: [int(i) for i in c[selection]] for fold, c in folds.items()}
