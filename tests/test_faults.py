"""Fault injection: every way a run's inputs or results can go wrong, and what the workflow does about it.

Each test damages something real (a feature store, a checkpoint, a metrics file, a full file system) and checks that
the run either recovers by itself or stops with a message that names the file and says what to do.
"""
import errno
import json
import logging
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from daamflow.atomic import atomic_write, save_torch
from daamflow.data.features import load_store, write_store
from daamflow.run.fit import Diverged, Interrupted
from daamflow.run.identity import fold_identity
from daamflow.run.train import run_fold, run_split, splits_of, store_inputs, train_all

C = 2


def _store(path: Path, per_class: int, seed: int = 0) -> Path:
    """A two-class store with a planted signal; ``per_class`` samples of each class, a third of them official test."""
    rng = np.random.default_rng(seed)
    n = C * per_class
    labels = np.arange(n) % C
    x = rng.normal(size=(n, 3, 6)).astype(np.float32)
    x[:, 1, :C] += 2.0 * np.eye(C)[labels]
    index = pd.DataFrame({"id": [f"s{i}" for i in range(n)], "label": labels, "label_name": [f"c{k}" for k in labels],
                          "group": [f"g{i}" for i in range(n)],
                          "split": np.where((np.arange(n) // C) % 3 == 0, "test", "train")})
    return write_store(path, x, index, {"encoder": "synthetic"})


def _settings(epochs: int = 2, lr: float = 3e-3, runs: int = 2) -> dict:
    return {
        "dataset": "toy", "encoder": "synthetic", "method": "linear", "protocol": "clean", "seed": 1,
        "evaluation": {"scheme": "seeds", "runs": runs},
        "hyper": {"epochs": epochs, "batch_size": 8, "lr": lr, "weight_decay": 0.0, "loss": "ce", "focal_alpha": 0.25,
                  "focal_gamma": 2.0, "scheduler_factor": 0.1, "scheduler_patience": 2, "grad_clip": None,
                  "dev_fraction": 0.25, "amp": "auto"},
        "model_options": {},
    }


def _one_fold(store_dir: Path, settings: dict, out: Path, **kwargs) -> dict:
    store = load_store(store_dir)
    split = splits_of(store, settings)[0]
    ids = store.index["id"].to_numpy()
    return run_split(store.features, store.labels, ids, C, split, settings, out, "cpu", progress=False,
                     inputs=store_inputs(store.manifest), **kwargs)


# ------------------------------------------------------------------------------------- changed data (fold identity)
def test_changed_features_retrain_every_fold_and_runs_csv_follows(tmp_path):
    store_dir, out = tmp_path / "store", tmp_path / "run"
    _store(store_dir, per_class=12)
    train_all(store_dir, _settings(), out)
    before = json.loads((out / "run1/metrics.json").read_text())
    _store(store_dir, per_class=14, seed=1)  # the embed step rewrote the store: more rows, other values
    runs = train_all(store_dir, _settings(), out)
    after = json.loads((out / "run1/metrics.json").read_text())
    new_sha = load_store(store_dir).manifest["sha256"]["features.npy"]
    assert after["split"]["n_test"] > before["split"]["n_test"]  # trained on the new index, not reused
    assert after["identity"] != before["identity"] and after["settings_hash"] == before["settings_hash"]
    assert set(runs["features_sha256"]) == {new_sha} == {after["inputs"]["features.npy"]}
    assert set(runs["identity"]) == {after["identity"]}
    stamp = (out / "run1/metrics.json").stat().st_mtime_ns
    train_all(store_dir, _settings(), out)  # same settings, same store: reused
    assert (out / "run1/metrics.json").stat().st_mtime_ns == stamp


def test_checkpoint_of_other_data_is_not_resumed(tmp_path, caplog):
    a, b = _store(tmp_path / "a", per_class=12), _store(tmp_path / "b", per_class=12, seed=5)
    settings = _settings(epochs=3)
    with pytest.raises(Interrupted):
        _one_fold(a, settings, tmp_path / "fold", stop_after_epoch=1)
    with caplog.at_level(logging.WARNING, logger="daamflow.run.fit"):
        metrics = _one_fold(b, settings, tmp_path / "fold")
    assert "other settings or inputs; starting over" in caplog.text
    assert metrics == {**_one_fold(b, settings, tmp_path / "clean"), "wall_time_s": metrics["wall_time_s"]}


def test_changed_prepared_data_retrains_lora_folds(tmp_path, encoder_dir, make_prepared):
    from daamflow.config import validate_config
    from daamflow.run.finetune import finetune_all
    from daamflow.run.lora_settings import finetune_settings

    config = validate_config({
        "datasets": {"llm": {"source": "wordnet", "encoder": "llama", "evaluation": {"scheme": "seeds", "runs": 1}}},
        "encoders": {"llama": {"kind": "tiny", "arch": "llama"}}, "methods": ["lora_r4"],
        "training": {"defaults": {"epochs": 1, "batch_size": 4}},
    })
    settings = finetune_settings(config, "llm", "lora_r4", "paper")

    def prepare(n: int) -> Path:
        rows = [{"id": f"s{i}", "label": i % 2, "text": f"{('dog', 'oak')[i % 2]} number {i}",
                 "split": "test" if (i // 2) % 3 == 0 else "train"} for i in range(n)]
        return make_prepared(tmp_path / "data", "text", rows, ["animal", "plant"])

    out = tmp_path / "run"
    finetune_all(prepare(12), encoder_dir("llama"), settings, out, "cpu")
    before = json.loads((out / "run1/metrics.json").read_text())
    runs = finetune_all(prepare(18), encoder_dir("llama"), settings, out, "cpu")
    after = json.loads((out / "run1/metrics.json").read_text())
    assert after["split"]["n_test"] > before["split"]["n_test"]
    assert after["inputs"]["data/manifest.csv"] != before["inputs"]["data/manifest.csv"]
    assert after["inputs"]["encoder/model.safetensors"] == before["inputs"]["encoder/model.safetensors"]
    assert runs["identity"].tolist() == [after["identity"]]


def test_a_job_array_is_keyed_by_the_fold_identity(tmp_path):
    """Through a launcher, changed features give the fold's job call another digest: a rerun never re-attaches to
    (and cancels, if still queued) a job submitted for the old data."""
    from daamflow.run import launch

    store_dir, out = _store(tmp_path / "store", per_class=12), tmp_path / "run"
    settings, launcher = _settings(epochs=1, runs=1), {"kind": "local", "poll_s": 0.05}
    train_all(store_dir, settings, out, launcher=launcher)
    first = json.loads((out / launch.JOBS_FILE).read_text())["jobs"]["run1"]
    _store(store_dir, per_class=14, seed=1)
    train_all(store_dir, settings, out, launcher=launcher)
    second = json.loads((out / launch.JOBS_FILE).read_text())["jobs"]["run1"]
    assert second["job_id"] != first["job_id"] and second["call"] != first["call"]
    assert second["settings_hash"] == first["settings_hash"]
    assert json.loads((out / "run1/metrics.json").read_text())["split"]["n_test"] == 10
    # a recorded job of the old call that were still running would be cancelled, not re-attached to
    attach, stale = launch.plan(["run1"], [second["call"]], "slurm",
                                {"jobs": {"run1": {**first, "kind": "slurm", "job_id": "7_0"}}}, {"7_0": "PENDING"})
    assert attach == {} and [e["job_id"] for e in stale] == ["7_0"]


def test_a_fold_job_refuses_inputs_changed_since_submission(tmp_path):
    store_dir = _store(tmp_path / "store", per_class=12)
    stale = fold_identity(_settings(), {"features.npy": "0" * 64, "index.csv": "0" * 64})
    with pytest.raises(RuntimeError, match="run1: feature store .* changed after this fold was submitted"):
        run_fold(store_dir, _settings(), tmp_path / "run", "run1", identity=stale)


# --------------------------------------------------------------------------------------------- checkpoints run no code
class _Payload:
    """Unpickling this runs a shell command: what a crafted results file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("fmt", ["pickle", "torch"])
def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, caplog, fmt):
    store_dir, fold = _store(tmp_path / "store", per_class=12), tmp_path / "fold"
    marker = tmp_path / "pwned"
    fold.mkdir()
    payload = {"epoch": 1, "identity": "x", "model": _Payload(marker)}
    if fmt == "pickle":
        (fold / "checkpoint.pt").write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, fold / "checkpoint.pt")
    with caplog.at_level(logging.WARNING, logger="daamflow.run.fit"):
        metrics = _one_fold(store_dir, _settings(), fold)
    assert not marker.exists()
    assert f"{fold / 'checkpoint.pt'} is not a loadable checkpoint" in caplog.text
    assert len(list(fold.glob("checkpoint.pt.corrupt-*"))) == 1
    assert metrics["epochs_run"] == 2  # started over
    torch.load(fold / "checkpoint.pt", weights_only=True)  # what a fold writes loads without unpickling code


# --------------------------------------------------------------------------------------------------- diverged training
def _diverging() -> dict:
    """lr 1e6 on a DAAM head: its Gaussian scales blow up and the loss turns NaN in the first epoch."""
    settings = _settings(epochs=3, lr=1e6)
    return {**settings, "method": "daam_v1", "model_options": {"conv_channels": 4},
            "hyper": {**settings["hyper"], "loss": "focal"}}


def test_nan_loss_fails_the_fold_naming_fold_epoch_and_cause(tmp_path):
    store_dir = _store(tmp_path / "store", per_class=12)
    with pytest.raises(Diverged, match=r"daam_v1 run1: training loss is (nan|inf) at epoch \d+.*learning rate"):
        train_all(store_dir, _diverging(), tmp_path / "run")
    assert not (tmp_path / "run/run1/metrics.json").exists() and not (tmp_path / "run/runs.csv").exists()


def test_nan_loss_exits_nonzero_from_the_command_line(tmp_path):
    store_dir = _store(tmp_path / "store", per_class=12)
    proc = subprocess.run(
        [sys.executable, "-m", "daamflow", "train", "--features", str(store_dir), "--out", str(tmp_path / "run"),
         "--settings", json.dumps(_diverging()), "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "Diverged" in proc.stderr and "learning rate" in proc.stderr
    assert not list((tmp_path / "run").glob("*/metrics.json"))


# ------------------------------------------------------------------------------------- damaged results name the file
def test_truncated_checkpoint_is_set_aside_and_the_fold_restarts(tmp_path, caplog):
    store_dir, fold = _store(tmp_path / "store", per_class=12), tmp_path / "fold"
    settings = _settings(epochs=3)
    with pytest.raises(Interrupted):
        _one_fold(store_dir, settings, fold, stop_after_epoch=2)
    ckpt = fold / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="daamflow.run.fit"):
        metrics = _one_fold(store_dir, settings, fold)
    assert f"{ckpt} is not a loadable checkpoint" in caplog.text and "set aside as" in caplog.text
    aside = list(fold.glob("checkpoint.pt.corrupt-*"))
    assert len(aside) == 1 and aside[0].stat().st_size < ckpt.stat().st_size
    assert metrics["epochs_run"] == 3
    assert metrics == {**_one_fold(store_dir, settings, tmp_path / "clean"), "wall_time_s": metrics["wall_time_s"]}


def test_truncated_vqvae_checkpoint_is_set_aside_and_the_run_restarts(tmp_path, caplog):
    from daamflow.vqvae.config import VQVAEConfig
    from daamflow.vqvae.train import train_run

    cfg = VQVAEConfig(hidden_dims=[8, 8], latent_dim=8, num_embeddings=16, daam_heads=2, daam_gaussians=2,
                      norm_groups=2, dataset="fashion_mnist", image_size=16, train_images=32, test_images=16,
                      batch_size=16, epochs=2, lr=3e-3)
    out = tmp_path / "vq"
    assert train_run(cfg, "plain", 0, out, threads=None, stop_after_epochs=1) is None
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="daamflow.run.fit"):
        train_run(cfg, "plain", 0, out, threads=None)
    assert f"{ckpt} is not a loadable checkpoint" in caplog.text
    assert len(list(out.glob("checkpoint.pt.corrupt-*"))) == 1
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [0, 1, 2]  # trained from scratch


def test_garbage_metrics_json_names_the_file(tmp_path):
    store_dir, out = _store(tmp_path / "store", per_class=12), tmp_path / "run"
    train_all(store_dir, _settings(epochs=1), out)
    (out / "run2/metrics.json").write_text('{"accuracy": 0.5, "sett')
    with pytest.raises(ValueError, match=f"{out / 'run2/metrics.json'} is not a valid metrics file.*rm "):
        train_all(store_dir, _settings(epochs=1), out)


def test_a_full_disk_is_reported_with_the_path():
    def writer(tmp):
        tmp.write_bytes(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")

    target = Path(os.environ.get("TMPDIR", "/tmp")) / f"daamflow-enospc-{os.getpid()}.json"
    with pytest.raises(OSError, match=f"no space left on device: {target} .*MiB free") as err:
        atomic_write(target, writer)
    assert err.value.errno == errno.ENOSPC
    assert not target.exists() and not list(target.parent.glob(f".{target.name}.tmp*"))


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 1 MiB file system (tmpfs), where the test may mount one (root on Linux)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_torch_save_on_a_full_file_system_says_no_space_and_keeps_the_old_file(tiny_fs):
    target = tiny_fs / "checkpoint.pt"
    save_torch(target, {"w": torch.zeros(10)})
    with pytest.raises(OSError, match=f"no space left on device: {target}"):
        save_torch(target, {"w": torch.zeros(1 << 20)})  # 4 MiB on a 1 MiB file system
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.zeros(10))
    assert os.listdir(tiny_fs) == ["checkpoint.pt"]  # no temp file left to fill the disk


def test_a_corrupted_store_is_refused_before_training_whatever_its_size(tmp_path):
    """Every store is hashed before its folds run (big ones too: sha256 reads faster than disks deliver)."""
    from daamflow.data.features import FeatureStoreError

    store_dir = _store(tmp_path / "store", per_class=12)
    features = store_dir / "features.npy"
    data = bytearray(features.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the last value: same size, same header
    features.write_bytes(bytes(data))
    with pytest.raises(FeatureStoreError, match="features.npy sha256 is .* manifest expects"):
        train_all(store_dir, _settings(), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ shared storage, one writer
def test_store_folder_is_readable_by_the_group(tmp_path):
    old = os.umask(0o022)
    try:
        store_dir = _store(tmp_path / "store", per_class=2)
    finally:
        os.umask(old)
    assert stat.S_IMODE(store_dir.stat().st_mode) == 0o755


_ORPHAN = """
import json, sys, time
from pathlib import Path
from daamflow.data.features import load_store
from daamflow.run.fit import fold_lock
from daamflow.run.train import run_split, splits_of, store_inputs
store_dir, out, settings = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
store = load_store(store_dir)
split = splits_of(store, settings)[0]
with fold_lock(out / split.name):
    print("training", flush=True)
    time.sleep(1)
    run_split(store.features, store.labels, store.index["id"].to_numpy(), 2, split, settings, out / split.name, "cpu",
              progress=False, inputs=store_inputs(store.manifest))
"""


def test_an_orphaned_fold_job_and_a_rerun_do_not_train_at_once(tmp_path, caplog):
    """The rerun waits for the orphan's lock, then finds the fold finished and reuses it instead of training again."""
    store_dir, out = _store(tmp_path / "store", per_class=12), tmp_path / "run"
    settings = _settings(epochs=1, runs=1)
    identity = fold_identity(settings, store_inputs(load_store(store_dir).manifest))
    orphan = subprocess.Popen([sys.executable, "-c", _ORPHAN, str(store_dir), str(out), json.dumps(settings)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert orphan.stdout.readline().strip() == "training"
        with caplog.at_level(logging.INFO, logger="daamflow"):
            metrics = run_fold(store_dir, settings, out, "run1", identity=identity)
    finally:
        assert orphan.wait(timeout=120) == 0
    assert "another process trains this fold" in caplog.text and "reused" in caplog.text
    assert metrics == json.loads((out / "run1/metrics.json").read_text())


# ------------------------------------------------------------------------------------------------ missing resources
@pytest.mark.parametrize("source", ["{tmp}/models/minilm", "./models/not-here", "~/no/such/encoder"])
def test_hub_encoder_pointing_to_a_missing_folder_names_the_folder_and_key(tmp_path, source):
    from daamflow.data.encoders import materialise

    source = source.format(tmp=tmp_path)
    with pytest.raises(FileNotFoundError, match=f"local encoder folder not found: {source} \\(encoders.mini.id\\)"):
        materialise({"kind": "hub", "id": source}, tmp_path / "encoders/mini")
    assert not (tmp_path / "encoders/mini").exists()


# ------------------------------------------------------------------------------------------- downloads and revisions
def _hub_cache(cache: Path, source: Path, repo: str, commits: dict[str, bytes | None], main: str) -> None:
    """A Hugging Face cache holding ``repo`` at each commit (the files of ``source``; ``bytes`` replaces the weights),
    with ``refs/main`` at ``main``: what an offline snapshot_download reads."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    for commit, weights in commits.items():
        snapshot = folder / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        for path in source.iterdir():
            if path.name != "encoder.json":
                (snapshot / path.name).write_bytes(path.read_bytes())
        if weights is not None:
            (snapshot / "model.safetensors").write_bytes(weights)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs/main").write_text(main)


def test_hub_encoder_is_locked_on_first_download_and_verified_after(tmp_path, encoder_dir, monkeypatch, caplog):
    import yaml
    from huggingface_hub import constants

    from daamflow.data.encoders import materialise, read_encoder_info

    cache, lock = tmp_path / "hub", tmp_path / "config/encoders.lock.yaml"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("DAAMFLOW_ENCODER_LOCK", str(lock))
    first, second = "a" * 40, "b" * 40
    tiny = encoder_dir("llama")
    _hub_cache(cache, tiny, "org/tiny", {first: None}, main=first)
    spec = {"kind": "hub", "id": "org/tiny", "revision": "main"}

    materialise(spec, tmp_path / "encoders/llm")
    entry = yaml.safe_load(lock.read_text())["llm"]
    assert entry["commit"] == first and entry["weights"] == read_encoder_info(tiny)["weights"]

    # upstream moves main to new weights: the lock keeps the first commit
    _hub_cache(cache, tiny, "org/tiny", {second: b"other weights"}, main=second)
    materialise(spec, tmp_path / "encoders/again/llm")
    assert read_encoder_info(tmp_path / "encoders/again/llm")["commit_hash"] == first

    # the locked commit's files changed (a tampered cache or a rewritten local folder): refused, nothing built
    _hub_cache(cache, tiny, "org/tiny", {first: b"tampered"}, main=second)
    with pytest.raises(ValueError, match=f"encoder llm \\(org/tiny\\) does not match {lock}: weights .*delete the "
                                         f"entry 'llm'"):
        materialise(spec, tmp_path / "encoders/third/llm")
    assert not (tmp_path / "encoders/third/llm").exists()

    # deleting the entry re-locks what the revision resolves to now
    lock.write_text(yaml.safe_dump({}))
    materialise(spec, tmp_path / "encoders/fourth/llm")
    assert yaml.safe_load(lock.read_text())["llm"]["commit"] == second


def test_encoder_jobs_updating_the_lock_file_at_once_keep_every_entry(tmp_path):
    import threading
    import time

    import yaml

    from daamflow.data.encoders import _locked

    lock = tmp_path / "config/encoders.lock.yaml"

    def record(name):
        with _locked(lock) as entries:
            time.sleep(0.05)  # read-modify-write: without the lock, the others' entries would be lost here
            entries[name] = {"commit": name}

    threads = [threading.Thread(target=record, args=(f"enc{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(yaml.safe_load(lock.read_text())) == [f"enc{i}" for i in range(6)]


def test_agnews_official_files_are_checksummed(tmp_path, monkeypatch):
    from daamflow.data.datasets import agnews

    assert agnews.OFFICIAL_MD5 == {  # torchtext's AG_NEWS checksums of the same two files
        f"{agnews.BASE_URL}/train.csv": "b1a00f826fdfbd249f79597b59e1dc12",
        f"{agnews.BASE_URL}/test.csv": "d52ea96a97a2d943681189a97654912d",
    }
    assert {agnews.OPTIONS["train_url"], agnews.OPTIONS["test_url"]} == set(agnews.OFFICIAL_MD5)
    csv = tmp_path / "train.csv"
    csv.write_text('"1","t","d"\n')
    url = csv.as_uri()
    monkeypatch.setitem(agnews.OFFICIAL_MD5, url, "0" * 32)  # this file's URL as if it were the official one
    with pytest.raises(ValueError, match=f"download of {url} is corrupt or not the expected file: md5 of .* expected "
                                         f"{'0' * 32}"):
        agnews.download(tmp_path / "root", url, url)
    assert not (tmp_path / "root/train.csv").exists()
