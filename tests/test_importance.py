"""Tests of daamflow.analysis.importance (IF) against hand computations."""
from __future__ import annotations

import numpy as np
import pytest

from daamflow.analysis.importance import (
    choose_layers, importance_factor, layer_share, per_layer_importance, rank_layers, select_layers,
)


def test_importance_factor_global_min_max():
    dens = np.array([[0.5, 0.7], [0.9, 0.6], [0.5, 1.0]])
    expected = np.array([[0.0, 0.4], [0.8, 0.2], [0.0, 1.0]])
    np.testing.assert_allclose(importance_factor(dens), expected)
    assert importance_factor(dens).min() == 0.0 and importance_factor(dens).max() == 1.0


def test_constant_map_gives_zeros_not_nan():
    out = importance_factor(np.full((3, 4), 0.42))
    assert out.shape == (3, 4) and (out == 0).all()
    np.testing.assert_allclose(layer_share(out), [1 / 3] * 3)


def test_per_layer_share_and_rank():
    if_map = np.array([[0.0, 0.4], [0.8, 0.2], [0.0, 1.0]])
    per_layer = per_layer_importance(if_map)
    np.testing.assert_allclose(per_layer, [0.2, 0.5, 0.5])
    share = layer_share(if_map)
    np.testing.assert_allclose(share, [0.4 / 2.4, 1.0 / 2.4, 1.0 / 2.4])
    assert share.sum() == pytest.approx(1.0)
    assert rank_layers(per_layer).tolist() == [1, 2, 0]  # tie 1/2 keeps layer order
    assert rank_layers(per_layer, descending=False).tolist() == [0, 1, 2]
    assert isinstance(rank_layers(per_layer), np.ndarray)


def test_errors():
    with pytest.raises(ValueError, match="2-D"):
        importance_factor(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        importance_factor(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="non-negative"):
        layer_share(np.array([[-1.0, 0.0]]))
    with pytest.raises(ValueError, match="1-D"):
        rank_layers(np.zeros((2, 2)))


def test_selection_follows_ranking_and_random_control_is_seeded():
    per_layer = np.array([0.1, 0.9, 0.5, 0.3, 0.7, 0.2])
    chosen = select_layers(per_layer, k=2, seed=3)
    assert chosen["high"] == [1, 4] and chosen["low"] == [0, 5]
    assert select_layers(per_layer, 2, seed=3)["random"] == chosen["random"]
    draws = {tuple(select_layers(per_layer, 2, seed=s)["random"]) for s in range(20)}
    assert len(draws) > 1
    with pytest.raises(ValueError, match="between 1 and the number of layers"):
        select_layers(per_layer, 7, 0)


def test_random_control_is_drawn_per_fold_and_reproducible():
    per_layer = np.tile(np.linspace(0, 1, 12), (5, 1))
    folds = [f"fold{i}" for i in range(1, 6)]
    for protocol in ("paper", "clean"):
        choice = choose_layers(per_layer, folds, protocol, k=3, seed=0)["folds"]
        draws = [tuple(c["random"]) for c in choice.values()]
        assert len(set(draws)) > 1  # not one draw copied to every fold
        assert choose_layers(per_layer, folds, protocol, k=3, seed=0)["folds"] == choice
        assert all(c["high"] == [9, 10, 11] and c["low"] == [0, 1, 2] for c in choice.values())
    with pytest.raises(ValueError, match="one row per fold"):
        choose_layers(per_layer[:4], folds, "clean", 3, 0)
    with pytest.raises(ValueError, match="unknown protocol"):
        choose_layers(per_layer, folds, "dev", 3, 0)
