"""Folds, seeded runs and the two protocols (docs/paper-notes.md#66-paper-and-clean-protocols).

A *split* names three disjoint index sets of the feature store: ``train`` (fits the weights), ``select`` (chooses the
best epoch and drives the LR schedule) and ``test`` (reported). Under the ``paper`` protocol ``select`` is the test
part itself, as the released code did; under ``clean`` it is a grouped, stratified dev split carved from the
training part, and the test part is touched once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daamflow.catalog import PROTOCOLS


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


def group_order(labels: np.ndarray, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group class counts (groups × classes), each sample's group index, and the order the greedy assignment
    takes the groups in: seeded random, then by decreasing spread of their class counts."""
    classes, y = np.unique(labels, return_inverse=True)
    names, g = np.unique(groups, return_inverse=True)
    counts = np.zeros((len(names), len(classes)))
    np.add.at(counts, (g, y), 1)
    order = np.random.default_rng(seed).permutation(len(names))
    return counts, g, order[np.argsort(-counts[order].std(axis=1), kind="stable")]


def stratified_group_kfold(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[np.ndarray]:
    """Test indices of ``n_splits`` folds: no group in two folds, class proportions as even as the groups allow.

    Greedy, as scikit-learn's StratifiedGroupKFold (implemented here to keep scikit-learn out of every job's start-up):
    groups in a seeded random order, then by decreasing spread of their class counts, each go to the fold whose
    per-class proportions stay most even (ties: the smaller fold).
    """
    counts, g, order = group_order(labels, groups, seed)
    totals = counts.sum(axis=0)
    folds = np.zeros((n_splits, counts.shape[1]))
    # every candidate fold at once: candidate k is ``folds`` with the group added to row k (a job's folds are
    # computed from thousands of singleton groups, so a Python loop over k cost a second per training job)
    adds = np.eye(n_splits)[:, :, None]
    assignment = np.empty(len(counts), dtype=int)
    for group in order:
        candidates = folds + adds * counts[group]
        spread = (candidates / totals).std(axis=1).mean(axis=1)
        sizes = folds.sum(axis=1) + counts[group].sum()
        best = np.lexsort((sizes, spread))[0]  # least spread, then the smaller fold, then the first
        folds[best] += counts[group]
        assignment[group] = best
    return [np.flatnonzero(assignment[g] == k) for k in range(n_splits)]


def _grouped_stratified(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[np.ndarray]:
    """Test indices of each fold; leave-one-group-out (groups in sorted order) when there are exactly n_splits groups."""
    unique = np.unique(groups)
    if len(unique) < n_splits:
        raise ValueError(f"{n_splits} folds need at least {n_splits} distinct groups; found {len(unique)}: {list(unique)}")
    if len(unique) == n_splits:  # IEMOCAP: fold k = session k, as the paper's table
        return [np.flatnonzero(groups == g) for g in unique]
    return stratified_group_kfold(labels, groups, n_splits, seed)


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
    dev_pos = stratified_group_kfold(labels[train], sub_groups, n_splits, seed)[0]
    return np.sort(np.delete(train, dev_pos)), np.sort(train[dev_pos])


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
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
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
