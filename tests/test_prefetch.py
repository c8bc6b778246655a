"""Batches read ahead in a background thread (data/prefetch.py) give the results of reads in the training thread, and
the thread never outlives the fold, whether it ends, fails to read or diverges."""
import threading

import numpy as np
import pandas as pd
import pytest
import torch

from daamflow.data.features import load_store, write_store
from daamflow.data.folds import make_splits
from daamflow.data import prefetch
from daamflow.data.prefetch import BatchReader, Prefetch, resident
from daamflow.run.fit import Diverged
from daamflow.run.train import run_split

N, D, C = 4, 12, 3
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(1)
    n = 90
    labels = np.arange(n) % C
    x = rng.normal(size=(n, N, D)).astype(np.float32)
    x[:, 1:3, :C] += 3.0 * np.eye(C)[labels][:, None, :]
    index = pd.DataFrame({
        "id": [f"s{i}" for i in range(n)], "label": labels, "label_name": [f"c{k}" for k in labels],
        "group": [f"g{i % 6}" for i in range(n)], "split": "train",
    })
    return load_store(write_store(tmp_path_factory.mktemp("store"), x, index, {"encoder": "synthetic"}))


def _settings(method="daam_v1", epochs=3, **hyper):
    return {
        "dataset": "toy", "encoder": "synthetic", "method": method, "protocol": "clean", "seed": 5,
        "evaluation": {"scheme": "kfold", "folds": 3},
        "hyper": {"epochs": epochs, "batch_size": 4, "lr": 3e-3, "weight_decay": 0.01, "loss": "focal",
                  "focal_alpha": 0.25, "focal_gamma": 2.5, "scheduler_factor": 0.1, "scheduler_patience": 2,
                  "grad_clip": None, "dev_fraction": 0.2, "amp": "auto", **hyper},
        "model_options": {"conv_channels": 8},
    }


def _readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "daamflow-prefetch"]


def _run(store, settings, out, features=None, **kwargs):
    split = make_splits(store.labels, store.groups, store.splits, settings["evaluation"], "clean", 5)[0]
    ids = store.index["id"].to_numpy()
    return run_split(store.features if features is None else features, store.labels, ids, C, split, settings, out,
                     "cpu", progress=False, **kwargs)


def test_prefetch_on_and_off_give_the_same_fold_bit_for_bit(store, tmp_path):
    settings = _settings()
    settings["hyper"]["refit"] = True  # the selection run, the refit and the test: both learners read ahead
    on = _run(store, settings, tmp_path / "on")
    assert not _readers()  # gone once the fold returns
    off = _run(store, settings, tmp_path / "off", prefetch=0)
    for key in ["accuracy", "macro_f1", "confusion", "best_epoch", "select_accuracy", "refit_history"]:
        assert on[key] == off[key], key
    for name in ["model.pt", "checkpoint.pt", "refit/checkpoint.pt"]:
        a, b = torch.load(tmp_path / "on" / name), torch.load(tmp_path / "off" / name)
        weights = (a, b) if name == "model.pt" else (a["model"], b["model"])
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), name
    assert np.array_equal(np.load(tmp_path / "on/density.npy"), np.load(tmp_path / "off/density.npy"))
    assert np.array_equal(np.load(tmp_path / "on/density_all_epochs.npy"),
                          np.load(tmp_path / "off/density_all_epochs.npy"))
    assert (tmp_path / "on/predictions.csv").read_bytes() == (tmp_path / "off/predictions.csv").read_bytes()
    assert (tmp_path / "on/history.csv").read_bytes() == (tmp_path / "off/history.csv").read_bytes()


def test_a_small_store_trains_from_memory_with_the_same_results(store, tmp_path, monkeypatch):
    """``resident``: a store within RESIDENT_BYTES is one float32 array in memory and no reader thread; a larger one
    stays memory-mapped with DEPTH batches read ahead. The fold's results are identical either way."""
    features, depth = resident(store.features)
    assert not isinstance(features, np.memmap) and features.dtype == np.float32 and depth == 0
    assert np.array_equal(features, np.asarray(store.features, dtype=np.float32))
    monkeypatch.setattr(prefetch, "RESIDENT_BYTES", store.features.size * 4 - 1)
    mapped, depth = resident(store.features)
    assert mapped is store.features and depth == prefetch.DEPTH
    settings = _settings()
    memory, disk = _run(store, settings, tmp_path / "mem", features=features, prefetch=0), _run(
        store, settings, tmp_path / "map", features=mapped, prefetch=depth)
    for key in ["accuracy", "confusion", "best_epoch", "select_accuracy"]:
        assert memory[key] == disk[key], key
    a, b = torch.load(tmp_path / "mem/model.pt"), torch.load(tmp_path / "map/model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_reading_error_in_the_thread_is_raised_in_the_fold_with_its_message(store, tmp_path):
    """Features with fewer rows than the index (a truncated store): the reader thread fails on the first missing
    row, and the fold raises that error."""
    short = store.features[:60]
    missing = r"rows \[\d+(, \d+)*\] are outside the feature store's 60 rows"
    with pytest.raises(IndexError, match=missing) as raised:
        _run(store, _settings(), tmp_path, features=short)
    assert any(entry.name == "_read_ahead" for entry in raised.traceback)  # raised in the thread, not re-read
    assert not _readers()
    assert not (tmp_path / "metrics.json").exists()


def test_a_fold_that_diverges_mid_epoch_leaves_no_reader_behind(store, tmp_path):
    with pytest.raises(Diverged, match="epoch 1, batch"):
        _run(store, _settings(method="linear", lr=1e30), tmp_path)
    assert not _readers()


def test_batches_come_in_the_rows_order_and_a_closed_reader_stops(store):
    rows = [np.array([7, 2, 50, 3]), np.array([1]), np.array([89, 0, 44])]
    with Prefetch(store.features, rows, [3, 1], CPU, depth=1) as stream:
        first = stream.take(rows[0])
        assert torch.equal(first, torch.from_numpy(store.features[rows[0]][:, [3, 1]].astype(np.float32)))
        with pytest.raises(RuntimeError, match="batch 1 of 3"):
            stream.take(rows[2])  # out of order
    assert not _readers()  # closed with two batches untaken


@pytest.mark.parametrize("layers", [None, [2, 3, 0], [1]])
@pytest.mark.parametrize("stage_units", [None, 3])
@pytest.mark.parametrize("in_memory", [False, True])
def test_the_reader_reuses_free_buffers_and_never_overwrites_a_held_batch(store, monkeypatch, layers, stage_units,
                                                                          in_memory):
    """BatchReader gathers rows (or (row, layer) pieces) into reused float32 buffers, casting a float16 store through
    a stage of STAGE_BYTES (``stage_units``: one of 3 rows or layers, so a batch takes several chunks) and gathering a
    float32 one (``resident``) directly: a batch nothing holds any more gives its buffer to a later one; a batch still
    held, or a view of it, keeps its values."""
    features = resident(store.features)[0] if in_memory else store.features
    if stage_units is not None:
        unit = features[0].nbytes if layers is None else features[0, 0].nbytes
        monkeypatch.setattr(prefetch, "STAGE_BYTES", stage_units * unit)

    def expected(rows):
        part = store.features[rows] if layers is None else store.features[np.ix_(rows, layers)]
        return torch.from_numpy(part.astype(np.float32))

    batches = [np.array([5, 80, 5, 17]), np.array([3, 0]), np.array([61, 62, 63, 64]), np.array([89, 1, 2, 40])]
    reader = BatchReader(features, layers, 4, slots=2)
    kept = reader.read(batches[0])  # held all along: its slot gets a new buffer when its turn comes again
    view = reader.read(batches[1])[:1]  # only a view of the batch held
    pointers = []
    for rows in batches * 2:
        x = reader.read(rows)
        assert torch.equal(x, expected(rows))
        pointers.append(x.data_ptr())
        del x
    assert torch.equal(kept, expected(batches[0])) and torch.equal(view, expected(batches[1])[:1])
    assert kept.data_ptr() not in pointers and view.data_ptr() not in pointers
    assert len(set(pointers)) == 2  # the two slots' new buffers, reused for all eight batches


def test_the_benchmark_times_a_head_and_finds_prefetch_on_and_off_identical(tmp_path, capsys):
    """benchmarks/bench_prefetch.py on a tiny paper-width store: its batches are fit's (it exits otherwise)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_prefetch", Path(__file__).resolve().parents[1] / "benchmarks/bench_prefetch.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    store = tmp_path / "features.npy"
    args = ["--rows", "80", "--store", str(store), "--heads", "linear", "daam_v1", "--conv-channels", "2",
            "--batches-subset", "1", "--batch-size", "16"]
    assert bench.main(args) == 0
    built = store.stat().st_mtime_ns
    assert bench.main(args) == 0 and store.stat().st_mtime_ns == built  # the store is reused
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("head ")]
    assert len(lines) == 4 and all("on==off True" in line for line in lines)
    assert "rows 80 " in lines[0] and "rows 32 " in lines[1]  # linear: the whole store; daam_v1: 1 + 1 batches


def test_the_reader_refuses_layers_outside_the_store(store):
    """A layer past the last would otherwise read the next row's first layer."""
    with pytest.raises(IndexError, match=r"layers \[1, 4\] outside the store's 4 layers"):
        BatchReader(store.features, [1, 4], 4, slots=1)
