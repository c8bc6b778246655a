import json

import numpy as np
import pandas as pd
import pytest
import torch

from daamflow.data.features import write_store
from daamflow.data.folds import make_splits
from daamflow.run.fit import Interrupted
from daamflow.run.identity import settings_hash
from daamflow.run.train import run_split, train_all

N, D, C = 4, 12, 3


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small feature store with a class signal in layers 1-2, 6 groups, an official split."""
    rng = np.random.default_rng(0)
    n = 90
    labels = np.arange(n) % C
    x = rng.normal(size=(n, N, D)).astype(np.float32)
    x[:, 1:3, :C] += 3.0 * np.eye(C)[labels][:, None, :]
    index = pd.DataFrame({
        "id": [f"s{i}" for i in range(n)], "label": labels, "label_name": [f"c{k}" for k in labels],
        "group": [f"g{i % 6}" for i in range(n)], "split": np.where(np.arange(n) % 5 == 0, "test", "train"),
    })
    return write_store(tmp_path_factory.mktemp("store"), x, index, {"encoder": "synthetic"})


def _settings(method="daam_v1", protocol="clean", epochs=4, scheme=None):
    return {
        "dataset": "toy", "encoder": "synthetic", "method": method, "protocol": protocol, "seed": 3,
        "evaluation": scheme or {"scheme": "kfold", "folds": 3},
        "hyper": {"epochs": epochs, "batch_size": 16, "lr": 3e-3, "weight_decay": 0.01, "loss": "focal",
                  "focal_alpha": 0.25, "focal_gamma": 2.5, "scheduler_factor": 0.1, "scheduler_patience": 2,
                  "grad_clip": None, "dev_fraction": 0.2, "amp": "auto"},
        "model_options": {"conv_channels": 8},
    }


def test_run_contract_and_learning(store, tmp_path):
    frame = train_all(store, _settings(epochs=8), tmp_path)
    assert list(frame["fold"]) == ["fold1", "fold2", "fold3"]
    assert frame["accuracy"].mean() > 0.6  # the planted signal is learnt (chance is 1/3)
    fold = tmp_path / "fold1"
    for name in ["metrics.json", "history.csv", "predictions.csv", "checkpoint.pt", "model.pt", "density.npy", "gaussians.json"]:
        assert (fold / name).is_file(), name
    metrics = json.loads((fold / "metrics.json").read_text())
    assert metrics["selection"] == "dev" and metrics["split"]["n_select"] > 0
    assert metrics["params"] > metrics["params_without_classifier"] > 0
    assert sum(map(sum, metrics["confusion"])) == metrics["split"]["n_test"]
    density = np.load(fold / "density.npy")
    assert density.shape == (N, D) and (density > 0).all() and (density <= 1).all()
    gauss = json.loads((fold / "gaussians.json").read_text())
    assert np.array(gauss["scaled_variance"]).shape[1] == D
    history = pd.read_csv(fold / "history.csv")
    assert len(history) == 8 and history["select_accuracy"].max() == pytest.approx(metrics["select_accuracy"])
    assert pd.read_csv(tmp_path / "runs.csv")["accuracy"].tolist() == frame["accuracy"].tolist()


def test_paper_protocol_selects_on_the_test_part(store, tmp_path):
    frame = train_all(store, _settings(method="linear", protocol="paper", epochs=3), tmp_path)
    metrics = json.loads((tmp_path / "fold2/metrics.json").read_text())
    assert metrics["selection"] == "test"
    assert metrics["select_accuracy"] == pytest.approx(metrics["accuracy"])  # the released code's optimism
    assert not (tmp_path / "fold2/density.npy").exists()  # no density for non-DAAM methods
    assert len(frame) == 3


def test_resume_gives_the_uninterrupted_numbers(store, tmp_path):
    from daamflow.data.features import load_store

    s = load_store(store)
    settings = _settings(method="gqdaam", epochs=5)
    split = make_splits(s.labels, s.groups, s.splits, settings["evaluation"], "clean", 3)[0]
    ids = s.index["id"].to_numpy()
    full = run_split(s.features, s.labels, ids, C, split, settings, tmp_path / "full", "cpu", progress=False)
    with pytest.raises(Interrupted):
        run_split(s.features, s.labels, ids, C, split, settings, tmp_path / "cut", "cpu", stop_after_epoch=2, progress=False)
    assert not (tmp_path / "cut/metrics.json").exists()
    resumed = run_split(s.features, s.labels, ids, C, split, settings, tmp_path / "cut", "cpu", progress=False)
    for key in ["accuracy", "macro_f1", "best_epoch", "select_accuracy", "confusion"]:
        assert resumed[key] == full[key], key
    assert pd.read_csv(tmp_path / "cut/history.csv").equals(pd.read_csv(tmp_path / "full/history.csv"))
    a, b = torch.load(tmp_path / "full/model.pt"), torch.load(tmp_path / "cut/model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finished_folds_are_reused_and_changed_settings_rerun(store, tmp_path):
    settings = _settings(method="identity", epochs=2, scheme={"scheme": "seeds", "runs": 2})
    first = train_all(store, settings, tmp_path)
    stamp = (tmp_path / "run1/metrics.json").stat().st_mtime_ns
    again = train_all(store, settings, tmp_path)
    assert (tmp_path / "run1/metrics.json").stat().st_mtime_ns == stamp
    assert again.equals(first)
    changed = {**settings, "hyper": {**settings["hyper"], "lr": 1e-2}}
    train_all(store, changed, tmp_path, only=["run2"])
    metrics = json.loads((tmp_path / "run2/metrics.json").read_text())
    assert metrics["settings_hash"] == settings_hash(changed) != settings_hash(settings)
    with pytest.raises(ValueError, match="unknown fold"):
        train_all(store, settings, tmp_path, only=["fold9"])


def test_training_is_deterministic(store, tmp_path):
    a = train_all(store, _settings(method="mixture", epochs=2), tmp_path / "a")
    b = train_all(store, _settings(method="mixture", epochs=2), tmp_path / "b")
    assert a["accuracy"].tolist() == b["accuracy"].tolist()


def test_amp_resolves_per_device_and_metrics_record_it(store, tmp_path, monkeypatch):
    from daamflow.run import fit

    cpu, hyper = torch.device("cpu"), _settings()["hyper"]
    monkeypatch.setattr(fit, "native_bf16", lambda dev: True)
    assert [fit.use_amp({**hyper, "amp": amp}, cpu) for amp in ("auto", "off", "bf16")] == [False, False, True]
    monkeypatch.setattr(fit, "native_bf16", lambda dev: False)
    assert not fit.use_amp({**hyper, "amp": "bf16"}, cpu)  # no hardware bfloat16: float32, not a slow emulation
    monkeypatch.setattr(fit, "native_bf16", lambda dev: True)  # autocast itself runs on any CPU
    runs = {}
    for amp in ("off", "bf16"):
        settings = _settings(method="linear", epochs=2)
        settings["hyper"]["amp"] = amp
        train_all(store, settings, tmp_path / amp)
        runs[amp] = (json.loads((tmp_path / amp / "fold1/metrics.json").read_text()),
                     pd.read_csv(tmp_path / amp / "fold1/history.csv")["train_loss"])
    assert runs["off"][0]["autocast"] is None and runs["bf16"][0]["autocast"] == "bfloat16"
    assert not np.array_equal(runs["off"][1], runs["bf16"][1])  # bfloat16 rounding reached the losses
    np.testing.assert_allclose(runs["off"][1], runs["bf16"][1], rtol=0.05)


def test_confusion_and_macro_f1_by_hand():
    from daamflow.run.metrics import confusion, macro_f1

    truth = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    m = confusion(truth, pred, 4)
    assert m.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    # F1: class 0 = 2/(2+1+1) = 0.5, class 1 = 4/(4+1+0) = 0.8, class 2 = 0, class 3 (absent) = 0
    assert macro_f1(m) == pytest.approx((0.5 + 0.8) / 4)


def test_clean_refit_trains_on_train_plus_dev_for_the_selected_epochs_and_resumes(store, tmp_path):
    from daamflow.data.features import load_store

    s = load_store(store)
    plain = _settings(method="daam_v1", epochs=5)
    settings = {**plain, "hyper": {**plain["hyper"], "refit": True}}
    split = make_splits(s.labels, s.groups, s.splits, settings["evaluation"], "clean", 3)[0]
    ids = s.index["id"].to_numpy()

    def run(name, cfg, **kw):
        return run_split(s.features, s.labels, ids, C, split, cfg, tmp_path / name, "cpu", progress=False, **kw)

    selected, a, b = run("plain", plain), run("a", settings), run("b", settings)
    epochs, rows = selected["best_epoch"], len(split.train) + len(split.select)
    assert selected["refit"] is False and a["refit"] is True
    assert a["refit_epochs"] == a["best_epoch"] == epochs and a["select_accuracy"] == selected["select_accuracy"]
    assert a["split"]["n_train"] == a["refit_train_rows"] == rows and a["split"]["n_test"] == len(split.test)
    assert a["refit_rows_seen"] == epochs * rows  # every training step of the refit drew from train + dev
    assert len(a["refit_history"]) == epochs
    tested, chosen = torch.load(tmp_path / "a/model.pt"), torch.load(tmp_path / "plain/model.pt")
    assert any(not torch.equal(tested[k], chosen[k]) for k in tested)  # the tested model is the refit one
    for key in ["accuracy", "confusion", "refit_history"]:
        assert a[key] == b[key], key  # deterministic
    assert all(torch.equal(tested[k], v) for k, v in torch.load(tmp_path / "b/model.pt").items())
    while True:  # one more epoch per call: the selection run, then the refit, each resumed from its checkpoint
        try:
            resumed = run("cut", settings, stop_after_epoch=1)
            break
        except Interrupted:
            pass
    for key in ["accuracy", "confusion", "refit_history", "best_epoch"]:
        assert resumed[key] == a[key], key
    paper = run("paper", {**settings, "protocol": "paper"})  # the select part is the test part: never trained on
    assert paper["refit"] is False and paper["split"]["n_train"] == len(split.train)
