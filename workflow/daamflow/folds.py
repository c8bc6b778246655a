"""Folds, seeded runs and the two protocols (DESIGN §5).

A *split* names three disjoint index sets of the feature store: ``train`` (fits the weights), ``select`` (chooses the
best epoch and drives the LR schedule) and ``test`` (reported). Under the ``paper`` protocol ``select`` is the test
part itself, as the released code did; under ``clean`` it is a grouped, stratified dev split carved from the
training part, and the test part is touched once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


@dataclass(frozen=True)
class Split:
    name: str  # "fold1".."foldK" or "run1".."runR"
    seed: int
    train: np.ndarray
    select: np.ndarray
    test: np.ndarray
    description: str

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "seed": self.seed,
            "description": self.description,
            "n_train": int(len(self.train)),
            "n_select": int(len(self.select)),
            "n_test": int(len(self.test)),
        }


def _grouped_stratified(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[np.ndarray]:
    """Test indices of each fold; leave-one-group-out (groups in sorted order) when there are exactly n_splits groups."""
    unique = np.unique(groups)
    if len(unique) < n_splits:
        raise ValueError(f"{n_splits} folds need at least {n_splits} distinct groups; found {len(unique)}: {list(unique)}")
    if len(unique) == n_splits:  # IEMOCAP: fold k = session k, as the paper's table
        return [np.flatnonzero(groups == g) for g in unique]
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(labels)), labels, groups)]


def carve_dev(train: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int):
    """Split ``train`` into (fit, dev): grouped (no group in both) and stratified, dev ≈ ``fraction`` of it.

    With fewer groups than 1/fraction (IEMOCAP: 4 training sessions) one whole group becomes the dev split.
    """
    sub_groups = groups[train]
    n_groups = len(np.unique(sub_groups))
    if n_groups < 2:
        raise ValueError(
            "the clean protocol carves a grouped dev split from each training part, which needs at least 2 groups; "
            f"found {n_groups}"
        )
    n_splits = min(max(2, round(1 / fraction)), n_groups)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fit_pos, dev_pos = next(splitter.split(np.zeros(len(train)), labels[train], sub_groups))
    return np.sort(train[fit_pos]), np.sort(train[dev_pos])


def make_splits(
    labels: np.ndarray,
    groups: np.ndarray,
    splits: np.ndarray,
    evaluation: dict,
    protocol: str,
    seed: int,
    dev_fraction: float = 0.2,
) -> list[Split]:
    """All folds (scheme ``kfold``) or seeded runs (scheme ``seeds``) of one dataset under one protocol."""
    labels, groups, splits = np.asarray(labels), np.asarray(groups).astype(str), np.asarray(splits).astype(str)
    if protocol not in ("paper", "clean"):
        raise ValueError(f"unknown protocol {protocol!r}; expected 'paper' or 'clean'")
    scheme = evaluation["scheme"]
    parts: list[tuple[str, int, np.ndarray, np.ndarray, str]] = []
    if scheme == "kfold":
        k = evaluation.get("folds", 5)
        everything = np.arange(len(labels))
        for i, test in enumerate(_grouped_stratified(labels, groups, k, seed)):
            held = sorted(set(groups[test]))
            what = f"held-out group {held[0]}" if len(held) == 1 else f"{len(held)} held-out groups"
            parts.append((f"fold{i + 1}", seed + i, np.setdiff1d(everything, test), np.sort(test), what))
    elif scheme == "seeds":
        train, test = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "test")
        if len(train) == 0 or len(test) == 0:
            raise ValueError("scheme 'seeds' needs an official split: the index has no 'train' or no 'test' rows")
        for r in range(evaluation.get("runs", 5)):
            parts.append((f"run{r + 1}", seed + r, train, test, "official train/test split"))
    else:
        raise ValueError(f"unknown evaluation scheme {scheme!r}; expected 'kfold' or 'seeds'")

    result = []
    for name, run_seed, train, test, what in parts:
        if protocol == "paper":
            result.append(Split(name, run_seed, train, test, test, f"{what}; selection on the test part (paper)"))
        else:
            fit, dev = carve_dev(train, labels, groups, dev_fraction, run_seed)
            result.append(Split(name, run_seed, fit, dev, test, f"{what}; selection on a grouped dev split (clean)"))
    return result
