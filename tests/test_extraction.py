"""Extraction at scale: batched, length-bucketed features equal a one-sample-at-a-time reference, an interrupted
extraction resumes to the same features, hub encoders come from the Hugging Face cache with their commit recorded,
and the paper's grid dry-runs without its data."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile
from scipy.signal import resample_poly
from transformers import AutoModel

from daamflow.data.batching import grouped_batches, plan_batches
from daamflow.data.datasets import prepare
from daamflow.data.embed import Scratch, embed
from daamflow.data.encoders import load_processor, materialise, read_encoder_info
from daamflow.data.features import load_store
from paper_fakes import make_agnews, make_cifar100, make_iemocap

ROOT = Path(__file__).resolve().parents[1]
# float16 storage: a value moves by at most ~1e-3 relative when float32 noise in a padded batch rounds the other way
TOL = {"rtol": 3e-3, "atol": 3e-3}
COMMIT = Scratch.commit
TEXTS = ["a dog", "an instrument for measuring time, usually with hands moving round a numbered dial",
         "edible fruit", "x", "the quick brown fox jumps over the lazy dog " * 3, "a large domesticated mammal",
         "to be or not to be", "ok"]


def _pool_all(model, **inputs) -> np.ndarray:
    """The released code's way: one sample, no padding, mean over every position of hidden_states[1:]."""
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    return torch.stack([h[0].mean(0) for h in hidden[1:]]).numpy()


def test_grouped_batches_pad_less_cover_every_row_and_follow_the_seed():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=1000)
    order = rng.permutation(1000)
    batches = grouped_batches(order, lengths, 32, seed=5)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert max(map(len, batches)) == 32

    def padded(bs):
        return sum(len(b) * lengths[b].max() for b in bs)

    assert padded(batches) < 0.7 * padded([order[i:i + 32] for i in range(0, 1000, 32)])
    assert all(np.array_equal(a, b) for a, b in zip(batches, grouped_batches(order, lengths, 32, seed=5)))
    assert not all(np.array_equal(a, b) for a, b in zip(batches, grouped_batches(order, lengths, 32, seed=6)))
    # which rows meet follows the shuffled order (mega-batches), unlike one global sort
    reshuffled = grouped_batches(rng.permutation(1000), lengths, 32, seed=5)
    assert {frozenset(b.tolist()) for b in batches} != {frozenset(b.tolist()) for b in reshuffled}


def test_plan_batches_sorts_by_length_and_covers_every_row():
    lengths = np.random.default_rng(0).integers(1, 500, size=1000)
    batches = plan_batches(lengths, 32)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(len(b) == 32 for b in batches[:-1]) and lengths[batches[0]].min() >= lengths[batches[1]].max()
    def padded(plan):
        return sum(len(b) * lengths[b].max() for b in plan) / lengths.sum()

    assert padded(batches) < 1.05 and padded(np.array_split(np.arange(1000), 32)) > 1.8  # in file order: ~1.9x
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        plan_batches(lengths, 0)


def test_iemocap_chunks_match_the_released_recipe(encoder_dir, tmp_path):
    """paper segmentation: each 5 s chunk of the source wav, zero-padded to 80,000 samples, pooled over all frames."""
    make_iemocap(tmp_path / "IEMOCAP_full_release", sessions=(1,))
    df = prepare("iemocap", tmp_path / "data", seed=0, root=str(tmp_path / "IEMOCAP_full_release"), sessions=[1])
    store = load_store(embed(tmp_path / "data", encoder_dir("wavlm"), tmp_path / "feats", batch_size=4,
                             progress=False))
    model = AutoModel.from_pretrained(encoder_dir("wavlm")).eval()
    extractor = load_processor(encoder_dir("wavlm"), "audio")
    assert store.features.shape == (len(df), 4, 64) and store.groups.tolist() == df["group"].tolist()
    for i, row in df.iterrows():
        audio = wavfile.read(row["path"])[1][row["start"]:row["end"]].astype(np.float32) / 32768
        values = extractor([audio], sampling_rate=16_000, return_tensors="pt")["input_values"]
        values = torch.nn.functional.pad(values, (0, 80_000 - values.shape[1]))
        reference = _pool_all(model, input_values=values, attention_mask=torch.ones_like(values, dtype=torch.long))
        np.testing.assert_allclose(store.features[i], reference, **TOL, err_msg=row["id"])


def test_audio_spans_resampling_and_masked_pooling(encoder_dir, make_prepared, tmp_path):
    """utterance rows: start/end spans of shared files, a 32 kHz file resampled, pooled over valid frames only."""
    (tmp_path / "data").mkdir()
    rng = np.random.default_rng(1)
    t16, t32 = np.arange(40_000) / 16_000, np.arange(40_000) / 32_000
    wavfile.write(tmp_path / "data" / "a.wav", 16_000, (5000 * np.sin(2 * np.pi * 220 * t16)
                                                        + 300 * rng.standard_normal(40_000)).astype(np.int16))
    wavfile.write(tmp_path / "data" / "b.wav", 32_000, (5000 * np.sin(2 * np.pi * 330 * t32)).astype(np.int16))
    rows = [{"id": "whole", "label": 0, "path": "a.wav"},
            {"id": "head", "label": 1, "path": "a.wav", "start": 0, "end": 6000},
            {"id": "tail", "label": 0, "path": "a.wav", "start": 30_000, "end": 40_000},
            {"id": "resampled", "label": 1, "path": str(tmp_path / "data" / "b.wav"), "start": 4000, "end": 20_000}]
    data = make_prepared(tmp_path / "data", "audio", rows, ["x", "y"])
    store = load_store(embed(data, encoder_dir("wavlm"), tmp_path / "feats", batch_size=4, progress=False))
    model = AutoModel.from_pretrained(encoder_dir("wavlm")).eval()
    extractor = load_processor(encoder_dir("wavlm"), "audio")
    for i, row in enumerate(rows):
        rate, audio = wavfile.read(Path(data, row["path"]))
        audio = audio[row.get("start", 0):row.get("end", len(audio))].astype(np.float32) / 32768
        if rate != 16_000:
            audio = resample_poly(audio, 1, 2)
        reference = _pool_all(model, **extractor([audio], sampling_rate=16_000, return_tensors="pt"))
        np.testing.assert_allclose(store.features[i], reference, **TOL, err_msg=row["id"])


def test_cifar_rgb_images_through_the_processor_with_workers(tmp_path):
    """RGB images resized by the encoder's processor; DataLoader workers give the very same features."""
    make_cifar100(tmp_path / "c.tar.gz", per_class={"train": 2, "test": 1})
    df = prepare("cifar100", tmp_path / "data", seed=0, root=str(tmp_path / "root"), url=str(tmp_path / "c.tar.gz"),
                 md5=None)
    enc = materialise({"kind": "tiny", "arch": "beit", "config": {"num_channels": 3, "image_size": 48}},
                      tmp_path / "beit")
    store = load_store(embed(tmp_path / "data", enc, tmp_path / "f0", batch_size=4, progress=False))
    workers = load_store(embed(tmp_path / "data", enc, tmp_path / "f2", batch_size=4, num_workers=2, progress=False))
    np.testing.assert_array_equal(workers.features, store.features)
    model, processor = AutoModel.from_pretrained(enc).eval(), load_processor(enc, "image")
    images = np.load(tmp_path / "data" / "images.npy")
    assert images.shape == (len(df), 32, 32, 3)
    for i in range(len(df)):
        pixels = processor(images[i], return_tensors="pt", input_data_format="channels_last")["pixel_values"]
        assert pixels.shape == (1, 3, 48, 48)
        np.testing.assert_allclose(store.features[i], _pool_all(model, pixel_values=pixels), **TOL)


@pytest.mark.parametrize("encoder", ["llama", "minilm"])
def test_agnews_text_batched_equals_one_at_a_time(encoder, encoder_dir, tmp_path):
    make_agnews(tmp_path / "src")
    df = prepare("agnews", tmp_path / "data", seed=0, root=str(tmp_path / "root"),
                 train_url=str(tmp_path / "src/train.csv"), test_url=str(tmp_path / "src/test.csv"))
    store = load_store(embed(tmp_path / "data", encoder_dir(encoder), tmp_path / "feats", batch_size=5,
                             max_length=24, progress=False))
    assert store.manifest["max_length"] == 24
    model = AutoModel.from_pretrained(encoder_dir(encoder)).eval()
    tokenizer = load_processor(encoder_dir(encoder), "text")
    for i, text in enumerate(df["text"]):
        reference = _pool_all(model, **tokenizer(text, truncation=True, max_length=24, return_tensors="pt"))
        np.testing.assert_allclose(store.features[i], reference, **TOL, err_msg=text)


def _interrupt_after(monkeypatch, shards: int):
    """Fault injection: the progress commit after ``shards`` successful ones dies, as a killed job would."""
    calls = []

    def commit(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > shards:
            raise KeyboardInterrupt("simulated preemption")
        return COMMIT(self, *args, **kwargs)

    monkeypatch.setattr(Scratch, "commit", commit)
    return calls


def _count_commits(monkeypatch):
    calls = []

    def commit(self, rows, *args, **kwargs):
        calls.append(len(rows))
        return COMMIT(self, rows, *args, **kwargs)

    monkeypatch.setattr(Scratch, "commit", commit)
    return calls


def test_an_interrupted_extraction_resumes_to_the_same_features(encoder_dir, make_prepared, tmp_path, monkeypatch):
    rows = [{"id": f"t{i}", "label": i % 2, "text": t} for i, t in enumerate(TEXTS)]
    data = make_prepared(tmp_path / "data", "text", rows, ["a", "b"])
    enc, settings = encoder_dir("llama"), {"batch_size": 2, "shard_rows": 2, "progress": False}
    whole = load_store(embed(data, enc, tmp_path / "whole", **settings))

    _interrupt_after(monkeypatch, shards=2)
    with pytest.raises(KeyboardInterrupt):
        embed(data, enc, tmp_path / "out", **settings)
    partial = tmp_path / ".out.partial"
    assert json.loads((partial / "progress.json").read_text())["done"] == 2 and not (tmp_path / "out").exists()

    commits = _count_commits(monkeypatch)
    # a new progress-record size does not invalidate the partial extraction: the 2 missing batches, as one record
    resumed = load_store(embed(data, enc, tmp_path / "out", **{**settings, "shard_rows": 4}))
    assert commits == [4]
    np.testing.assert_array_equal(resumed.features, whole.features)
    assert resumed.manifest["timing"]["resumed_at_batch"] == 2 and not partial.exists()
    assert resumed.manifest["sha256"] == whole.manifest["sha256"]


def test_changed_settings_restart_the_extraction(encoder_dir, make_prepared, tmp_path, monkeypatch):
    rows = [{"id": f"t{i}", "label": i % 2, "text": t} for i, t in enumerate(TEXTS)]
    data = make_prepared(tmp_path / "data", "text", rows, ["a", "b"])
    _interrupt_after(monkeypatch, shards=1)
    with pytest.raises(KeyboardInterrupt):
        embed(data, encoder_dir("llama"), tmp_path / "out", batch_size=2, shard_rows=2, progress=False)
    commits = _count_commits(monkeypatch)
    store = load_store(embed(data, encoder_dir("llama"), tmp_path / "out", batch_size=4, shard_rows=4, progress=False))
    assert commits == [4, 4] and store.manifest["timing"]["resumed_at_batch"] == 0


def test_non_finite_features_name_the_sample(tmp_path):
    scratch = Scratch(tmp_path / "s", (3, 2, 2), {"x": 1})
    values = np.ones((2, 2, 2), dtype=np.float16)
    values[1, 0, 1] = np.inf
    with pytest.raises(ValueError, match="sample 'c' hold NaN, inf"):
        scratch.commit(np.array([0, 2]), values, 1, ids=np.array(["a", "b", "c"]))
    assert Scratch(tmp_path / "s", (3, 2, 2), {"x": 1}).done == 0


def _fake_hub_cache(cache: Path, repo: str, source: Path, commit: str) -> Path:
    """The Hugging Face cache layout: blobs, a snapshot of symlinks for one commit, and refs/main naming it."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in source.iterdir():
        if f.name != "encoder.json":
            blob = storage / "blobs" / f"blob-{f.name}"
            blob.write_bytes(f.read_bytes())
            (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)
    return storage


def test_hub_encoder_from_the_cache_records_its_commit(encoder_dir, make_prepared, tmp_path, monkeypatch):
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    storage = _fake_hub_cache(tmp_path / "hub", "org/tiny-llama", encoder_dir("llama"), commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    enc = materialise({"kind": "hub", "id": "org/tiny-llama", "revision": "main"}, tmp_path / "enc")
    info = read_encoder_info(enc)
    assert info["commit_hash"] == commit and info["revision"] == "main" and info["modality"] == "text"
    weights = enc / "model.safetensors"
    assert weights.stat().st_ino == (storage / "blobs" / "blob-model.safetensors").stat().st_ino  # linked, not copied
    assert info["weights"] == read_encoder_info(encoder_dir("llama"))["weights"]
    data = make_prepared(tmp_path / "data", "text", [{"id": "a", "label": 0, "text": "hello"}], ["x"])
    manifest = load_store(embed(data, enc, tmp_path / "feats", progress=False)).manifest
    assert manifest["encoder_commit"] == commit and manifest["encoder"] == "org/tiny-llama"


def test_paper_grid_dry_run_lists_every_job_without_the_data(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    # the licensed IEMOCAP copy is checked while the DAG is built: an empty stand-in with its five session folders
    iemocap = tmp_path / "IEMOCAP_full_release"
    for k in range(1, 6):
        (iemocap / f"Session{k}").mkdir(parents=True)
    config = (ROOT / "config/paper.yaml").read_text().replace("/path/to/IEMOCAP_full_release", str(iemocap))
    assert str(iemocap) in config
    (tmp_path / "paper.yaml").write_text(config)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--configfile", str(tmp_path / "paper.yaml"),
         "--config", f"results_dir={tmp_path / 'results'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("job "):]
    counts = {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}
    # 3 datasets; 11 heads (mha@released included) x 2 protocols per dataset, each job training every fold/seed
    assert {k: counts[k] for k in ("prepare", "encoder", "embed", "train", "report_dataset")} == {
        "prepare": 3, "encoder": 3, "embed": 3, "train": 66, "report_dataset": 3}
    assert counts["finetune"] == 3 * 4 * 2  # lora_r4, lora_r8, loraplus_r4, loraplus_r8 x 2 protocols per dataset
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert seconds < 60 and not (tmp_path / "results").exists()
