"""Embed: padding never enters a sample's features, and batching does not change them."""

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from daamflow.data.datasets import prepare
from daamflow.data.embed import embed, masked_mean
from daamflow.data.features import load_store

TEXTS = [
    "a dog",
    "a large domesticated mammal kept for riding, racing and pulling carts; often used in agriculture",
    "edible fruit of a tree",
    "an instrument for measuring time, usually with hands moving round a numbered dial",
]
# float16 storage: a value changes by at most ~1e-3 relative when float32 noise rounds the other way
TOL = {"rtol": 2e-3, "atol": 2e-3}


def _embed_twice(data, encoder, tmp_path, big_batch, **kwargs):
    one = load_store(embed(data, encoder, tmp_path / "one", batch_size=1, progress=False, **kwargs))
    many = load_store(embed(data, encoder, tmp_path / "many", batch_size=big_batch, progress=False, **kwargs))
    return one, many


@pytest.mark.parametrize("encoder", ["minilm", "llama"])
def test_text_features_ignore_padding(encoder, encoder_dir, make_prepared, tmp_path):
    rows = [{"id": f"t{i}", "label": i % 2, "text": t} for i, t in enumerate(TEXTS)]
    data = make_prepared(tmp_path / "data", "text", rows, ["a", "b"])
    one, many = _embed_twice(data, encoder_dir(encoder), tmp_path, big_batch=4)
    assert one.index["id"].tolist() == [r["id"] for r in rows]  # manifest order, not length order
    assert one.num_layers == (6 if encoder == "minilm" else 4)
    # "a dog" shares a batch with a ~20x longer gloss in `many`: padding would drag its mean far off
    np.testing.assert_allclose(many.features, one.features, **TOL)
    assert not np.allclose(one.features[0], one.features[1], atol=0.05)


def test_audio_features_ignore_padding(encoder_dir, make_prepared, tmp_path):
    (tmp_path / "data" / "wav").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, seconds in enumerate([0.35, 2.5, 1.0]):
        t = np.arange(int(seconds * 16_000)) / 16_000
        audio = 8000 * np.sin(2 * np.pi * (200 + 300 * i) * t) + 500 * rng.standard_normal(len(t))
        wavfile.write(tmp_path / "data" / "wav" / f"c{i}.wav", 16_000, audio.astype(np.int16))
        rows.append({"id": f"c{i}", "label": i % 2, "path": f"wav/c{i}.wav"})
    data = make_prepared(tmp_path / "data", "audio", rows, ["a", "b"])
    one, many = _embed_twice(data, encoder_dir("wavlm"), tmp_path, big_batch=3)
    assert one.features.shape == (3, 4, 64)
    np.testing.assert_allclose(many.features, one.features, **TOL)


def test_image_features_and_layer_choice(encoder_dir, tmp_path):
    data = prepare("fashion_mnist", tmp_path / "fm", seed=0, per_class_train=2, per_class_test=1, classes=[0, 1, 2])
    one, many = _embed_twice(tmp_path / "fm", encoder_dir("beit"), tmp_path, big_batch=4, layers="all")
    assert one.features.shape == (9, 5, 64) and one.manifest["layer_indices"] == [0, 1, 2, 3, 4]
    assert one.splits.tolist() == data["split"].tolist() and one.manifest["pooling"].startswith("mean over all")
    np.testing.assert_allclose(many.features, one.features, **TOL)
    blocks = load_store(embed(tmp_path / "fm", encoder_dir("beit"), tmp_path / "b", progress=False))
    np.testing.assert_array_equal(blocks.features, one.features[:, 1:])


def test_masked_mean_excludes_masked_positions():
    states = torch.zeros(2, 3, 4)
    states[:, 0], states[:, 1], states[:, 2] = 1.0, 3.0, 1000.0
    pooled = masked_mean(states.to(torch.bfloat16), torch.tensor([[1, 1, 0], [1, 1, 1]]))  # row 0: position 2 pads
    assert pooled.dtype == torch.float32 and pooled.shape == (2, 4)
    assert torch.equal(pooled[0], torch.full((4,), 2.0)) and torch.equal(pooled[1], torch.full((4,), 1004 / 3))


def test_mismatches_are_refused(encoder_dir, make_prepared, tmp_path):
    text = make_prepared(tmp_path / "text", "text", [{"id": "a", "label": 0, "text": "hi"}], ["x"])
    with pytest.raises(ValueError, match="takes image input but dataset handmade"):
        embed(text, encoder_dir("beit"), tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="layers must be one of"):
        embed(text, encoder_dir("minilm"), tmp_path / "out", layers="last", progress=False)
    with pytest.raises(FileNotFoundError, match="run the prepare step"):
        embed(tmp_path / "nothing", encoder_dir("minilm"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
