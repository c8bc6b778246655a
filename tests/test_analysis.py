import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from daamflow.analysis import layers as analysis
from daamflow.models import heads
from daamflow.analysis import importance
from daamflow.run import train
from daamflow.models.daam import DAAM
from daamflow.data.features import load_store, write_store
from daamflow.run.fit import Interrupted
from daamflow.run.train import run_split, splits_of, train_all


def _fake_runs(root, maps):
    for i, m in enumerate(maps):
        d = root / f"fold{i + 1}"
        d.mkdir(parents=True)
        np.save(d / "density.npy", m)
        (d / "metrics.json").write_text("{}")
    return root


def _separated_maps(rng, folds=3, n=5, d=7, high=2, low=4):
    """Density maps where layer ``high`` (0-based) has the highest gates and layer ``low`` the lowest."""
    maps = [0.5 + 0.05 * rng.random((n, d)) for _ in range(folds)]
    for m in maps:
        m[high] += 0.4
        m[low] -= 0.4
    return maps


def _map(tmp_path, runs, protocol, name="out", **kw):
    return analysis.write_map_outputs(runs, tmp_path / name, k=1, seed=7, heatmap=tmp_path / f"{name}_h.png",
                                      bars=tmp_path / f"{name}_b.png", title="t", protocol=protocol, **kw)


def test_if_maps_shape_range_and_layer_choice(tmp_path):
    n, d = 5, 7
    runs = _fake_runs(tmp_path / "runs", _separated_maps(np.random.default_rng(0), n=n, d=d))
    chosen = _map(tmp_path, runs, "paper")
    if_map = np.load(tmp_path / "out/if_map.npy")
    assert if_map.shape == (n, d) and if_map.min() >= 0 and if_map.max() <= 1
    assert chosen["mean"]["high"] == [2] and chosen["mean"]["low"] == [4]
    assert all(c["high"] == [2] and c["low"] == [4] for c in chosen["folds"].values())
    per_layer = pd.read_csv(tmp_path / "out/per_layer.csv")
    assert list(per_layer["layer"]) == [1, 2, 3, 4, 5] and per_layer["share_mean"].sum() == pytest.approx(1)
    assert {"if_fold1", "if_fold2", "if_fold3"} <= set(per_layer.columns)
    written = json.loads((tmp_path / "out/layers.json").read_text())
    assert written["folds"] == chosen["folds"] and written["protocol"] == "paper" and written["if_source"] == "selected"
    assert importance.read_fold_layers(tmp_path / "out/layers.json", "random") == {
        f: c["random"] for f, c in chosen["folds"].items()}
    assert (tmp_path / "out_h.png").stat().st_size > 1000 and (tmp_path / "out_b.png").stat().st_size > 1000


def test_clean_choice_of_a_fold_ignores_the_other_folds_runs(tmp_path):
    """Under clean, fold k's layers depend on fold k's run only: other IF maps in folds 2 and 3 change their own
    choices and leave fold 1's alone. Under paper (one choice from the mean, as the released ablation) fold 1's
    choice follows the other folds' runs."""
    maps = _separated_maps(np.random.default_rng(1))
    changed = [m.copy() for m in maps]
    for m in changed[1:]:
        m[0] += 2.0  # the runs of folds 2 and 3 now find layer 1 (0-based 0) far the most important
    base, after = {}, {}
    for p in ("clean", "paper"):
        base[p] = _map(tmp_path, _fake_runs(tmp_path / f"base_{p}", maps), p, f"base_{p}")["folds"]
        after[p] = _map(tmp_path, _fake_runs(tmp_path / f"changed_{p}", changed), p, f"changed_{p}")["folds"]
    assert base["clean"]["fold1"]["high"] == [2] and after["clean"]["fold1"] == base["clean"]["fold1"]
    assert after["clean"]["fold2"]["high"] == [0] and after["clean"]["fold3"]["high"] == [0]
    assert [c["from"] for c in after["clean"].values()] == [["fold1"], ["fold2"], ["fold3"]]
    assert base["paper"]["fold1"]["high"] == [2] and after["paper"]["fold1"]["high"] == [0]
    assert all(c["from"] == ["fold1", "fold2", "fold3"] for c in after["paper"].values())


def _store(tmp_path, n=60, layers=6, d=8, groups=6, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, layers, d)).astype(np.float32)
    labels = np.arange(n) % 2
    x[:, 1] += labels[:, None]  # layer 2 carries the class
    index = pd.DataFrame({"id": [f"s{i}" for i in range(n)], "label": labels,
                          "label_name": [f"c{i}" for i in labels], "group": [f"g{i % groups}" for i in range(n)],
                          "split": ""})
    return write_store(tmp_path / "store", x, index, {"encoder": "synthetic"})


def _settings(protocol, folds=3, epochs=1, **extra):
    return {"dataset": "toy", "encoder": "e", "method": "daam_v1", "protocol": protocol, "seed": 0,
            "evaluation": {"scheme": "kfold", "folds": folds}, "model_options": {"conv_channels": 4},
            "hyper": {"epochs": epochs, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.0, "loss": "cross_entropy",
                      "focal_alpha": 0.25, "focal_gamma": 2.5, "scheduler_factor": 0.1, "scheduler_patience": 1,
                      "grad_clip": None, "dev_fraction": 0.34, "amp": "auto"}, **extra}


def _leaked_test_ids(store_dir, settings, runs, layers_json):
    """For each fold k: the ids of k's test part that reached a model behind k's layer choice (its training or its
    select part, where the epoch was chosen and the density map averaged)."""
    store = load_store(store_dir)
    ids = store.index["id"].astype(str).to_numpy()
    splits = {s.name: s for s in splits_of(store, settings)}
    choice = json.loads(Path(layers_json).read_text())["folds"]
    leaked = {}
    for fold, split in splits.items():
        test = set(ids[split.test])
        # the recomputed split is the one the run used: its predictions are on exactly these test ids
        assert set(pd.read_csv(runs / fold / "predictions.csv")["id"].astype(str)) == test
        seen = set()
        for source in choice[fold]["from"]:
            seen |= set(ids[splits[source].train]) | set(ids[splits[source].select])
        leaked[fold] = test & seen
    return leaked


def test_no_test_id_of_a_fold_reached_the_models_behind_its_clean_layer_choice(tmp_path):
    store = _store(tmp_path)
    for protocol in ("clean", "paper"):
        settings = _settings(protocol)
        runs = tmp_path / f"runs_{protocol}"
        train_all(store, settings, runs)
        _map(tmp_path, runs, protocol, f"imp_{protocol}")
        leaked = _leaked_test_ids(store, settings, runs, tmp_path / f"imp_{protocol}/layers.json")
        if protocol == "clean":
            assert leaked == {"fold1": set(), "fold2": set(), "fold3": set()}
        else:  # documented: the paper's choice saw every test part (selection on it, other folds trained on it)
            assert all(len(ids) == 20 for ids in leaked.values())


def test_all_epoch_density_map_is_the_mean_over_epochs_and_survives_a_resume(tmp_path):
    store_dir = _store(tmp_path)
    store = load_store(store_dir)
    settings = _settings("clean", epochs=3)
    split = splits_of(store, settings)[0]
    ids = store.index["id"].astype(str).to_numpy()

    def run(out, stop=None):
        return run_split(store.features, store.labels, ids, 2, split, settings, out, "cpu", stop_after_epoch=stop,
                         progress=False)

    run(tmp_path / "whole")
    with pytest.raises(Interrupted):
        run(tmp_path / "resumed", stop=1)
    run(tmp_path / "resumed")
    whole = np.load(tmp_path / "whole/density_all_epochs.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "resumed/density_all_epochs.npy"), whole)
    assert whole.shape == (6, 8) and not np.allclose(whole, np.load(tmp_path / "whole/density.npy"))
    # the mean of the three epochs' select-part maps, recomputed from the epochs' weights
    maps = []
    for epoch in (1, 2, 3):
        settings_e = _settings("clean", epochs=epoch)
        run_split(store.features, store.labels, ids, 2, split, settings_e, tmp_path / f"e{epoch}", "cpu",
                  progress=False)
        state = torch.load(tmp_path / f"e{epoch}/checkpoint.pt", weights_only=True)["model"]
        model = heads.build_model("daam_v1", 6, 8, 2, conv_channels=4)
        model.load_state_dict(state)
        x = torch.from_numpy(np.asarray(store.features[split.select], dtype=np.float32))
        maps.append(heads.density_map(model.eval(), x).mean(dim=0).detach().numpy())
    np.testing.assert_allclose(whole, np.mean(maps, axis=0), rtol=1e-5, atol=1e-6)


def test_if_source_all_epochs_reads_the_all_epoch_maps(tmp_path):
    rng = np.random.default_rng(2)
    runs = _fake_runs(tmp_path / "runs", _separated_maps(rng))
    for i, m in enumerate(_separated_maps(rng, high=0, low=1)):
        np.save(runs / f"fold{i + 1}/density_all_epochs.npy", m)
    assert _map(tmp_path, runs, "clean", "sel")["mean"]["high"] == [2]
    assert _map(tmp_path, runs, "clean", "all", source="all_epochs")["mean"]["high"] == [0]
    assert json.loads((tmp_path / "all/layers.json").read_text())["if_source"] == "all_epochs"
    _map(tmp_path, runs, "clean", "both", other_source="all_epochs")  # the quirk table's second choice
    both = {name: json.loads((tmp_path / f"both/{name}.json").read_text()) for name in ("layers", "layers_all_epochs")}
    assert both["layers"]["if_source"] == "selected" and both["layers"]["mean"]["high"] == [2]
    assert both["layers_all_epochs"]["if_source"] == "all_epochs" and both["layers_all_epochs"]["mean"]["high"] == [0]
    (runs / "fold2/density_all_epochs.npy").unlink()
    with pytest.raises(FileNotFoundError, match="fold2/density_all_epochs.npy is missing"):
        _map(tmp_path, runs, "clean", "all", source="all_epochs")


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


def test_ablation_trains_each_fold_on_its_own_layers(tmp_path):
    store = _store(tmp_path, n=40, groups=4)
    layers_json = tmp_path / "layers.json"
    layers_json.write_text(json.dumps({"folds": {"fold1": {"high": [1, 4]}, "fold2": {"high": [0, 2]}}}))
    args = argparse.ArgumentParser()
    train.add_arguments(args)
    out = tmp_path / "runs"
    train.main(args.parse_args(["--features", str(store), "--out", str(out), "--device", "cpu",
                                "--settings", json.dumps(_settings("paper", folds=2)),
                                "--layers-from", str(layers_json), "--selection", "high"]))
    assert set(pd.read_csv(out / "runs.csv")["method"]) == {"daam_v1@high"}
    for fold, layers in (("fold1", [1, 4]), ("fold2", [0, 2])):
        metrics = json.loads((out / fold / "metrics.json").read_text())
        assert metrics["layers"] == layers
        assert np.load(out / fold / "density.npy").shape == (2, 8)  # the model received 2 layers
    table = analysis.ablation_table([out / "runs.csv"], {"paper": layers_json})
    assert table["layers"].tolist() == ["fold1: 2,5; fold2: 1,3"]
    layers_json.write_text(json.dumps({"high": [1, 4]}))  # a choice for all folds at once (before per-fold choices)
    with pytest.raises(ValueError, match="no per-fold layer choice"):
        importance.read_fold_layers(layers_json, "high")


def test_single_layer_daam_is_the_identity_with_no_gradient_on_delta():
    daam = DAAM(num_layers=1, feature_dim=5, num_heads=1)
    x = torch.randn(4, 1, 5, requires_grad=True)
    out = daam(x)
    assert torch.equal(out, x)
    out.sum().backward()
    assert torch.count_nonzero(daam.mean_offset.grad) == 0


def test_probe_is_a_converged_linear_probe_per_layer_and_fold(tmp_path):
    """The layer that carries the class linearly is probed near-perfectly, the noise layers near chance; one row per
    (layer, fold), fitted on every row but the fold's test part."""
    store = _store(tmp_path, n=120)
    settings = _settings("clean", folds=3)
    table = analysis.run_probes(store, settings, tmp_path / "probe")
    pd.testing.assert_frame_equal(analysis.read_probes(tmp_path / "probe" / "probe.csv"),
                                  table[["layer", "fold", "accuracy"]])
    assert len(table) == 6 * 3 and set(table["layer"]) == set(range(1, 7))
    per_layer = table.groupby("layer")["accuracy"].mean()
    assert per_layer[2] > 0.8 and per_layer.drop(2).max() < 0.7  # Bayes rate of layer 2: 0.92
    splits = splits_of(load_store(store), settings)
    assert list(table[table["layer"] == 1]["n_test"]) == [len(s.test) for s in splits]
    # nothing is selected: clean fits on train + dev, paper (whose selection part is the test part) on train only
    assert list(table[table["layer"] == 1]["n_train"]) == [len(s.train) + len(s.select) for s in splits]
    paper = analysis.run_probes(store, _settings("paper", folds=3), tmp_path / "paper")
    assert list(paper[paper["layer"] == 1]["n_train"]) == [len(load_store(store).labels) - len(s.test) for s in splits]


def test_correlate_reads_the_probe_table(tmp_path):
    with pytest.raises(FileNotFoundError, match="importance probe"):
        analysis.read_probes(tmp_path / "missing" / "probe.csv")
