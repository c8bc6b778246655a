"""Dataset adapters: real Debian data files, small options."""

import gzip
import json

import numpy as np
import pandas as pd
import pytest
from scipy.io import wavfile

from daamflow.data.datasets import SOURCES, espeak, fashion_mnist, prepare, wordnet
from daamflow.data.manifest import read_prepared


def _idx(path, magic, array):
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_official_files():
    images, labels = fashion_mnist.load_split("test")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [1000] * 10


def test_fashion_mnist_idx_reader_on_a_custom_root(tmp_path):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", 2051, images)
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 2049, np.array([3, 7]))
    x, y = fashion_mnist.load_split("test", root=tmp_path)
    assert np.array_equal(x, images) and y.tolist() == [3, 7]
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 2051, np.array([3, 7]))
    with pytest.raises(ValueError, match="magic"):
        fashion_mnist.load_split("test", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fashion_mnist.load_split("train", root=tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        fashion_mnist.load_split("valid")


def test_prepare_fashion_mnist(tmp_path):
    df = prepare("fashion_mnist", tmp_path / "fm", seed=1, per_class_train=3, per_class_test=2, classes=[8, "sneaker"])
    read_back, meta = read_prepared(tmp_path / "fm")
    pd.testing.assert_frame_equal(read_back, df, check_dtype=False)
    assert meta["classes"] == ["Bag", "Sneaker"] and meta["modality"] == "image"
    assert meta["counts"] == {"Bag": 5, "Sneaker": 5} and meta["n"] == 10
    assert df["split"].value_counts().to_dict() == {"train": 6, "test": 4}
    images = np.load(tmp_path / "fm" / "images.npy")
    assert images.shape == (10, 28, 28) and images.dtype == np.uint8
    # each stored image is the official one its id names, with the renumbered label
    test_x, test_y = fashion_mnist.load_split("test")
    for row in df[df["split"] == "test"].itertuples():
        original = int(row.id.rsplit("-", 1)[1])
        assert np.array_equal(images[row.image_index], test_x[original])
        assert fashion_mnist.CLASS_NAMES[test_y[original]] == row.label_name
    with pytest.raises(ValueError, match="unknown class 'boot'"):
        prepare("fashion_mnist", tmp_path / "bad", seed=0, classes=["boot"])


def test_prepare_wordnet_is_seeded_and_filtered(tmp_path):
    options = {"categories": ["noun.food", "noun.plant"], "per_class": 6, "min_chars": 40}
    a = prepare("wordnet", tmp_path / "a", seed=3, **options)
    b = prepare("wordnet", tmp_path / "b", seed=3, **options)
    c = prepare("wordnet", tmp_path / "c", seed=4, **options)
    pd.testing.assert_frame_equal(a, b)
    assert not a["id"].equals(c["id"])
    assert a["label"].tolist() == [0] * 6 + [1] * 6 and set(a["label_name"]) == {"noun.food", "noun.plant"}
    assert (a["text"].str.len() >= 40).all() and (a["group"] == a["id"]).all() and (a["split"] == "").all()
    glosses = wordnet.read_glosses().set_index("offset")
    first = a.iloc[0]
    assert glosses.loc[first["id"].removeprefix("wn-"), "gloss"] == first["text"]
    assert glosses.loc[first["id"].removeprefix("wn-"), "category"] == "noun.food"
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["options"]["per_class"] == 6 and len(meta["versions"]["wordnet_data_noun"]["sha256"]) == 64


def test_prepare_espeak_prosody(tmp_path):
    df = prepare("espeak_prosody", tmp_path / "sp", seed=0, voices=["en-us", "en-gb"], per_class_per_voice=1,
                 sentences=["the cat sat on the mat", "a very long sentence " * 20], max_seconds=1.5)
    assert len(df) == 8 and set(df["group"]) == {"en-us", "en-gb"}
    assert df.groupby("group")["label"].apply(sorted).tolist() == [[0, 1, 2, 3]] * 2
    for row in df.itertuples():
        rate, audio = wavfile.read(tmp_path / "sp" / row.path)
        assert rate == 16_000 and audio.dtype == np.int16 and audio.ndim == 1
        assert 0 < len(audio) <= 24_000 and np.abs(audio).max() > 100
        lo, hi = espeak.PROSODY[row.label_name]["rate"]
        assert lo <= row.rate <= hi
    # deterministic: re-synthesising one clip from its recorded settings gives the same samples
    row = df.iloc[5]
    again = espeak.synthesise(row["text"], row["voice"], row["rate"], row["pitch"], row["amplitude"], 1.5)
    assert np.array_equal(again, wavfile.read(tmp_path / "sp" / row["path"])[1])
    meta = json.loads((tmp_path / "sp" / "meta.json").read_text())
    assert meta["modality"] == "audio" and meta["versions"]["espeak-ng"].startswith("eSpeak NG")
    with pytest.raises(ValueError, match="no voice"):
        prepare("espeak_prosody", tmp_path / "bad", seed=0, voices=["en-klingon"], per_class_per_voice=1)


def test_default_voices_exist():
    known = espeak.available_voices()
    assert all(v in known for v in SOURCES["espeak_prosody"]["voices"])


def test_unknown_source_and_option_name_the_accepted_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset source 'cifar'.*espeak_prosody.*fashion_mnist.*wordnet"):
        prepare("cifar", tmp_path / "x", seed=0)
    with pytest.raises(ValueError, match=r"unknown options \['per_clas'\].*per_class"):
        prepare("wordnet", tmp_path / "x", seed=0, per_clas=3)
    assert set(SOURCES) == {"wordnet", "fashion_mnist", "espeak_prosody", "iemocap", "cifar100", "agnews", "table", "folder"}
    assert SOURCES["wordnet"]["per_class"] == 100


def test_failed_prepare_keeps_the_previous_output(tmp_path):
    out = tmp_path / "wn"
    prepare("wordnet", out, seed=0, categories=["noun.plant"], per_class=2)
    before = (out / "manifest.csv").read_bytes()
    with pytest.raises(ValueError, match="noun.Tops has only"):
        prepare("wordnet", out, seed=0, categories=["noun.Tops"], per_class=1000)
    assert (out / "manifest.csv").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wn"]  # no temp folders left behind


def test_missing_espeak_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        prepare("espeak_prosody", tmp_path / "sp", seed=0, per_class_per_voice=1)
