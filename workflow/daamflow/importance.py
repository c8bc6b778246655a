"""Importance Factor (IF) of a density map (dossier §2): global min-max normalisation and per-layer summaries.

NumPy in, NumPy out. A density map is the validation-averaged gate, shape (N layers, d features).
"""
from __future__ import annotations

import numpy as np


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
