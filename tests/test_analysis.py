import json

import numpy as np
import pandas as pd
import pytest
import torch

from daamflow import analysis
from daamflow.attention import DAAM
from daamflow.features import write_store
from daamflow.train import train_all


def _fake_runs(root, maps):
    for i, m in enumerate(maps):
        d = root / f"fold{i + 1}"
        d.mkdir(parents=True)
        np.save(d / "density.npy", m)
        (d / "metrics.json").write_text("{}")
    return root


def test_if_maps_shape_range_and_layer_choice(tmp_path):
    rng = np.random.default_rng(0)
    n, d = 5, 7
    # layer 3 (0-based 2) has the highest gates, layer 5 (0-based 4) the lowest, in every fold
    maps = [0.5 + 0.05 * rng.random((n, d)) for _ in range(3)]
    for m in maps:
        m[2] += 0.4
        m[4] -= 0.4
    runs = _fake_runs(tmp_path / "runs", maps)
    chosen = analysis.write_map_outputs(runs, tmp_path / "out", k=1, seed=7, heatmap=tmp_path / "h.png",
                                        bars=tmp_path / "b.png", title="t")
    if_map = np.load(tmp_path / "out/if_map.npy")
    assert if_map.shape == (n, d) and if_map.min() >= 0 and if_map.max() <= 1
    assert chosen["high"] == [2] and chosen["low"] == [4]
    per_layer = pd.read_csv(tmp_path / "out/per_layer.csv")
    assert list(per_layer["layer"]) == [1, 2, 3, 4, 5] and per_layer["share_mean"].sum() == pytest.approx(1)
    assert {"if_fold1", "if_fold2", "if_fold3"} <= set(per_layer.columns)
    assert json.loads((tmp_path / "out/layers.json").read_text())["random"] == chosen["random"]
    assert (tmp_path / "h.png").stat().st_size > 1000 and (tmp_path / "b.png").stat().st_size > 1000


def test_selection_follows_ranking_and_random_control_is_seeded():
    per_layer = np.array([0.1, 0.9, 0.5, 0.3, 0.7, 0.2])
    chosen = analysis.select_layers(per_layer, k=2, seed=3)
    assert chosen["high"] == [1, 4] and chosen["low"] == [0, 5]
    assert analysis.select_layers(per_layer, 2, seed=3)["random"] == chosen["random"]
    draws = {tuple(analysis.select_layers(per_layer, 2, seed=s)["random"]) for s in range(20)}
    assert len(draws) > 1
    with pytest.raises(ValueError, match="between 1 and the number of layers"):
        analysis.select_layers(per_layer, 7, 0)


def test_spearman_and_correlation_on_a_constructed_example():
    assert analysis.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert analysis.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert np.isnan(analysis.spearman([1, 1, 1], [1, 2, 3]))
    per_layer = pd.DataFrame({"layer": [1, 2, 3], "if_mean": [0.1, 0.5, 0.9], "if_std": 0,
                              "if_fold1": [0.1, 0.5, 0.9], "if_fold2": [0.9, 0.5, 0.1]})
    probes = pd.DataFrame({"layer": [1, 2, 3] * 2, "fold": ["fold1"] * 3 + ["fold2"] * 3,
                           "accuracy": [0.5, 0.6, 0.7, 0.5, 0.6, 0.7]})
    table = analysis.correlation(per_layer, probes).set_index("fold")["spearman"]
    assert table["fold1"] == pytest.approx(1) and table["fold2"] == pytest.approx(-1)
    assert table["mean over folds"] == pytest.approx(0)
    assert table["mean IF vs mean accuracy"] == pytest.approx(1)


def test_ablation_training_sees_only_the_chosen_layers(tmp_path):
    rng = np.random.default_rng(1)
    n, layers, d = 40, 6, 8
    x = rng.normal(size=(n, layers, d)).astype(np.float32)
    index = pd.DataFrame({"id": [f"s{i}" for i in range(n)], "label": np.arange(n) % 2,
                          "label_name": [f"c{i % 2}" for i in range(n)], "group": [f"g{i % 4}" for i in range(n)],
                          "split": ""})
    store = write_store(tmp_path / "store", x, index, {"encoder": "synthetic"})
    settings = {"dataset": "toy", "encoder": "e", "method": "daam_v1", "protocol": "paper", "seed": 0,
                "evaluation": {"scheme": "kfold", "folds": 2}, "model_options": {"conv_channels": 4},
                "hyper": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.0, "loss": "cross_entropy",
                          "focal_alpha": 0.25, "focal_gamma": 2.5, "scheduler_factor": 0.1, "scheduler_patience": 1,
                          "grad_clip": None, "dev_fraction": 0.2, "amp": "auto"},
                "layers": [1, 4], "label": "daam_v1@high"}
    frame = train_all(store, settings, tmp_path / "runs")
    assert set(frame["method"]) == {"daam_v1@high"}
    metrics = json.loads((tmp_path / "runs/fold1/metrics.json").read_text())
    assert metrics["layers"] == [1, 4]
    assert np.load(tmp_path / "runs/fold1/density.npy").shape == (2, d)  # the model received 2 layers


def test_single_layer_daam_is_the_identity_with_no_gradient_on_delta():
    daam = DAAM(num_layers=1, feature_dim=5, num_heads=1)
    x = torch.randn(4, 1, 5, requires_grad=True)
    out = daam(x)
    assert torch.equal(out, x)
    out.sum().backward()
    assert torch.count_nonzero(daam.mean_offset.grad) == 0
