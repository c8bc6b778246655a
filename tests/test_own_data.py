"""Your own data by config alone: the table and folder sources, their checks and errors, the config's resolution of
modality and evaluation scheme, and both sources through the whole workflow with encoders from local folders."""

import json
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from scipy.io import wavfile

from daamflow.config import ConfigError, validate_config
from daamflow.data.datasets import prepare, table
from daamflow.data.folds import make_splits
from daamflow.data.manifest import read_prepared
from daamflow.preflight import dataset_problems
from test_encoder_families import _family, _saved
from test_workflow import snakemake

SENTENCES = {"animal": ["the cat sat on the mat", "a dog ran under the tree", "the big cat ran", "a red dog sat"],
             "colour": ["red and blue", "the blue mat", "a small red tree", "blue blue red"]}


def _wav(path, seconds=0.4, rate=16_000, freq=220.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    wavfile.write(path, rate, (6000 * np.sin(2 * np.pi * freq * t)).astype(np.int16))


def _png(path, size=(20, 24), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path)


def _text_table(folder, **columns):
    rows = [(label, s) for label, texts in SENTENCES.items() for s in texts]
    df = pd.DataFrame({"sentence": [s for _, s in rows], "topic": [label for label, _ in rows], **columns})
    df.to_csv(folder / "sentences.csv", index=False)
    return folder / "sentences.csv"


def _set_cell(path, row, column, value):
    """The table at ``path`` with one cell changed (``row``: 0-based data row), rewritten in place."""
    df = pd.read_csv(path)
    df.loc[row, column] = value
    df.to_csv(path, index=False)
    return path


# ---- table ----------------------------------------------------------------------------------------------------------

def test_table_formats_give_one_manifest(tmp_path):
    csv = _text_table(tmp_path, speaker=["s1", "s2"] * 4)
    df = pd.read_csv(csv)
    df.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    df.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    made = [prepare("table", tmp_path / f"out{i}", 0, path=str(p), input="sentence", label="topic", group="speaker")
            for i, p in enumerate([csv, tmp_path / "t.tsv", tmp_path / "t.jsonl"])]
    for m in made[1:]:
        pd.testing.assert_frame_equal(m, made[0])
    manifest, meta = read_prepared(tmp_path / "out0")
    assert meta["modality"] == "text" and meta["classes"] == ["animal", "colour"] and meta["source"] == "table"
    assert manifest["id"].tolist()[:2] == ["row1", "row2"] and set(manifest["group"]) == {"s1", "s2"}
    assert manifest["text"].tolist() == df["sentence"].tolist() and (manifest["split"] == "").all()
    assert meta["versions"]["table"]["sha256"] and meta["options"]["modality"] == "text"


def test_parquet_table_gives_the_csv_manifest(tmp_path):
    csv = _text_table(tmp_path, speaker=[1, 2] * 4)  # an integer column: Parquet keeps it int64, CSV reads text
    pd.read_csv(csv).to_parquet(tmp_path / "t.parquet")
    made = [prepare("table", tmp_path / f"out{i}", 0, path=str(p), input="sentence", label="topic", group="speaker",
                    folds=2) for i, p in enumerate([csv, tmp_path / "t.parquet"])]
    pd.testing.assert_frame_equal(made[1], made[0])
    (df, meta), (df_csv, meta_csv) = read_prepared(tmp_path / "out1"), read_prepared(tmp_path / "out0")
    assert set(df["group"]) == {"1", "2"} and meta["classes"] == meta_csv["classes"] == ["animal", "colour"]
    pd.testing.assert_frame_equal(df, df_csv)
    assert meta["versions"]["table"]["sha256"] != meta_csv["versions"]["table"]["sha256"]  # the file's own digest


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"text": ["a b", "c d"], "label": ["x", "y"]}).to_parquet(path)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # the import fails as if pyarrow were not installed
    with pytest.raises(ModuleNotFoundError, match=r"table .*t\.parquet: reading Parquet needs pyarrow \(pip install "
                                                  r"pyarrow\)"):
        table.read_table(path)


def test_unreadable_parquet_names_the_file(tmp_path):
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=r"t\.parquet: not a readable parquet file"):
        table.read_table(path)


def test_table_of_files_infers_modality_and_keeps_groups_and_split(tmp_path):
    rows = []
    for i in range(6):
        _wav(tmp_path / "clips" / f"c{i}.wav", rate=8_000 if i % 2 else 16_000, freq=200 + 50 * i)
        rows.append({"file": f"clips/c{i}.wav", "label": "ab"[i % 2], "speaker": f"spk{i // 2}",
                     "part": "train" if i < 4 else "Test"})
    pd.DataFrame(rows).to_csv(tmp_path / "clips.csv", index=False)
    options = {"path": str(tmp_path / "clips.csv"), "input": "file", "group": "speaker", "split": "part"}
    assert table.infer_modality(options) == "audio" and table.has_split(options)
    df = prepare("table", tmp_path / "out", 0, **options)
    assert df["split"].tolist() == ["train"] * 4 + ["test"] * 2 and df["group"].tolist()[:2] == ["spk0", "spk0"]
    assert df["path"].iloc[0] == str(tmp_path / "clips" / "c0.wav")
    images = tmp_path / "pics.csv"
    _png(tmp_path / "p" / "x.png")
    pd.DataFrame({"file": ["p/x.png"], "label": ["a"]}).to_csv(images, index=False)
    assert table.infer_modality({"path": str(images), "input": "file"}) == "image"


@pytest.mark.parametrize("problem, match", [
    ("missing_label", r"table .*sentences.csv: no column 'label' \(option label\); its columns: \['sentence', 'topic'\]"),
    ("case", r"labels 'animal' \(table .*, row 1\) and 'Animal ' \(table .*, row 4\) differ only in case or whitespace"),
    ("few", r"class 'animal' has 4 samples, fewer than the evaluation's 5 folds \(e.g. table .*, row 1\)"),
    ("empty_cell", r"table .*sentences.csv, row 3: empty input"),
    ("bad_split", r"table .*, row 2: split 'valid' is not one of \['train', 'test'\]"),
    ("groups", r"2 distinct groups, fewer than the evaluation's 3 folds"),
])
def test_bad_text_tables_name_file_and_row(tmp_path, problem, match):
    options = {"input": "sentence", "label": "topic"}
    if problem == "missing_label":
        options["label"] = "label"
        path = _text_table(tmp_path)
    elif problem == "case":
        path = _set_cell(_text_table(tmp_path), 3, "topic", "Animal ")
    elif problem == "few":
        path, options["folds"] = _text_table(tmp_path), 5
    elif problem == "empty_cell":
        path = _set_cell(_text_table(tmp_path), 2, "sentence", "")
    elif problem == "bad_split":
        path, options["split"] = _text_table(tmp_path, part=["train", "valid"] * 4), "part"
    else:
        path, options["group"], options["folds"] = _text_table(tmp_path, spk=["a", "b"] * 4), "spk", 3
    with pytest.raises(ValueError, match=match):
        prepare("table", tmp_path / "out", 0, path=str(path), **options)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))  # nothing half-prepared


@pytest.mark.parametrize("problem, match", [
    ("outside", r"table .*clips.csv, row 2: '../elsewhere.wav' lies outside the table's folder"),
    ("absolute", r"table .*clips.csv, row 2: '/.*/elsewhere.wav' lies outside the table's folder"),
    ("empty", r"table .*clips.csv, row 2: .*c1.wav is empty"),
    ("unreadable", r"table .*clips.csv, row 2: .*c1.wav is not a readable audio file"),
    ("missing", r"table .*clips.csv, row 2: file not found: .*c9.wav"),
])
def test_bad_files_name_table_and_row_and_keep_the_old_output(tmp_path, problem, match):
    data = tmp_path / "data"
    for i in range(2):
        _wav(data / "c" / f"c{i}.wav")
    _wav(tmp_path / "elsewhere.wav")
    files = ["c/c0.wav", "c/c1.wav"]
    if problem == "outside":
        files[1] = "../elsewhere.wav"
    elif problem == "absolute":
        files[1] = str(tmp_path / "elsewhere.wav")
    elif problem == "empty":
        (data / "c" / "c1.wav").write_bytes(b"")
    elif problem == "unreadable":
        (data / "c" / "c1.wav").write_bytes(b"RIFF not really a wave file")
    else:
        files[1] = "c/c9.wav"
    pd.DataFrame({"file": files, "label": ["a", "b"]}).to_csv(data / "clips.csv", index=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.csv").write_text("earlier\n")
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        prepare("table", tmp_path / "out", 0, path=str(data / "clips.csv"), input="file", modality="audio")
    assert (tmp_path / "out" / "manifest.csv").read_text() == "earlier\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "elsewhere.wav", "out"]


def test_mixed_inputs_and_unknown_formats_are_refused(tmp_path):
    pd.DataFrame({"x": ["a.wav", "b.png", "hello"], "label": ["a"] * 3}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match=r"mixes inputs: an audio file \('a.wav', table .*m.csv, row 1\); an image "
                                         r"file \('b.png', table .*, row 2\); neither \(text\) \('hello'"):
        prepare("table", tmp_path / "out", 0, path=str(tmp_path / "m.csv"), input="x")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(ValueError, match=r"unknown format '.xlsx'"):
        prepare("table", tmp_path / "out", 0, path=str(tmp_path / "t.xlsx"), input="x")


def test_flac_files_decode_with_soundfile(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    from daamflow.data.batching import audio_header, read_audio

    wave = (0.5 * np.sin(np.linspace(0, 200, 8000))).astype(np.float32)
    soundfile.write(tmp_path / "x.flac", wave, 8000)
    assert audio_header(str(tmp_path / "x.flac")) == (8000, 8000)
    np.testing.assert_allclose(read_audio(str(tmp_path / "x.flac"), 100, 300), wave[100:300], atol=1e-4)


# ---- folder ---------------------------------------------------------------------------------------------------------

def test_folder_with_split_levels_and_groups_from_file_names(tmp_path):
    for part in ("train", "test"):
        for label in ("calm", "angry"):
            for spk in ("s1", "s2"):
                _wav(tmp_path / "voices" / part / label / f"{spk}_{part}.wav")
    (tmp_path / "voices" / "README.txt").write_text("about these voices")
    (tmp_path / "voices" / "train" / "calm" / ".DS_Store").write_bytes(b"junk")
    df = prepare("folder", tmp_path / "out", 0, root=str(tmp_path / "voices"), pattern=r"^(?P<group>s\d)_")
    _, meta = read_prepared(tmp_path / "out")
    assert meta["modality"] == "audio" and meta["classes"] == ["angry", "calm"] and len(df) == 8
    assert df["id"].iloc[0] == "train/angry/s1_train.wav" and set(df["group"]) == {"s1", "s2"}
    assert (df["split"] == "train").sum() == 4
    with pytest.raises(ValueError, match=r"file train/angry/s1_train.wav: the name does not match the pattern"):
        prepare("folder", tmp_path / "out2", 0, root=str(tmp_path / "voices"), pattern=r"^speaker\d")


def test_bad_folders_name_the_file(tmp_path):
    for i in range(2):
        _png(tmp_path / "pics" / "Cat" / f"{i}.png", seed=i)
        _png(tmp_path / "pics" / "cat" / f"{i}.png", seed=i)
    with pytest.raises(ValueError, match=r"labels 'Cat' \(folder .*, file Cat/0.png\) and 'cat' \(.*file cat/0.png\)"):
        prepare("folder", tmp_path / "out", 0, root=str(tmp_path / "pics"))
    (tmp_path / "pics" / "Cat").rename(tmp_path / "pics" / "dog")
    (tmp_path / "pics" / "dog" / "1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=r"folder .*pics, file dog/1.png: .*1.png is not a readable image file"):
        prepare("folder", tmp_path / "out", 0, root=str(tmp_path / "pics"))
    _png(tmp_path / "pics" / "dog" / "1.png")
    with pytest.raises(ValueError, match=r"class 'cat' has 2 samples, fewer than the evaluation's 3 folds"):
        prepare("folder", tmp_path / "out", 0, root=str(tmp_path / "pics"), folds=3)
    _wav(tmp_path / "pics" / "dog" / "bark.wav")
    with pytest.raises(ValueError, match=r"mixes inputs: an audio file .*dog/bark.wav.*; an image file"):
        prepare("folder", tmp_path / "out", 0, root=str(tmp_path / "pics"))
    (tmp_path / "notes" / "a").mkdir(parents=True)
    (tmp_path / "notes" / "a" / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"modality 'text'; a folder source holds audio or image files"):
        prepare("folder", tmp_path / "out", 0, root=str(tmp_path / "notes"))
    assert not (tmp_path / "out").exists()


# ---- config: modality and evaluation scheme from what the data has --------------------------------------------------

def _config(datasets):
    return {"datasets": datasets, "encoders": {"e": {"kind": "tiny", "arch": "llama"}}, "methods": ["linear"]}


def test_config_infers_modality_and_picks_the_scheme(tmp_path):
    csv = _text_table(tmp_path, part=["train", "test"] * 4)
    _wav(tmp_path / "v" / "a" / "x.wav")
    config = validate_config(_config({
        "plain": {"source": "table", "options": {"path": str(csv), "input": "sentence", "label": "topic"},
                  "encoder": "e", "evaluation": {"scheme": "auto", "folds": 4}},
        "split": {"source": "table", "options": {"path": str(csv), "input": "sentence", "label": "topic",
                                                 "split": "part"}, "encoder": "e", "evaluation": {"scheme": "auto"}},
        "voices": {"source": "folder", "options": {"root": str(tmp_path / "v")}, "encoder": "e",
                   "evaluation": {"scheme": "kfold", "folds": 2}},
    }))
    plain, split, voices = (config["datasets"][k] for k in ("plain", "split", "voices"))
    assert (plain["modality"], plain["evaluation"]["scheme"], plain["options"]["folds"]) == ("text", "kfold", 4)
    assert (split["modality"], split["evaluation"]["scheme"], split["options"]["folds"]) == ("text", "seeds", None)
    assert (voices["modality"], voices["options"]["modality"]) == ("audio", "audio")
    assert validate_config(config) == config  # resolving twice changes nothing


def test_config_errors_of_own_data(tmp_path):
    csv = _text_table(tmp_path)
    base = {"source": "table", "encoder": "e", "evaluation": {"scheme": "auto"}}
    cases = {
        "datasets.d.options: table .*nothing.csv: file not found": {"options": {"path": str(tmp_path / "nothing.csv"),
                                                                               "input": "x"}},
        r"datasets.d.modality: 'audio' but options.modality is 'text'": {
            "modality": "audio", "options": {"path": str(csv), "input": "sentence", "modality": "text"}},
        "datasets.d.evaluation.scheme: seeds needs a train/test split": {
            "options": {"path": str(csv), "input": "sentence"}, "evaluation": {"scheme": "seeds"}},
        "datasets.d.evaluation.scheme: auto reads the data, for the table and folder sources only": {
            "source": "wordnet", "options": {}},
    }
    for message, ds in cases.items():
        with pytest.raises(ConfigError, match=message):
            validate_config(_config({"d": {**base, **ds}}))
    assert dataset_problems("d", {"source": "folder", "options": {"root": str(tmp_path / "none")}}) == [
        f"datasets.d.options.root: folder not found: {tmp_path / 'none'}"]


def test_folds_follow_the_resolved_scheme(tmp_path):
    """Groups → no group on both sides of a fold; a given split → seeded runs on it."""
    csv = _text_table(tmp_path, spk=["a", "b", "c", "d"] * 2, part=["train"] * 3 + ["test"] + ["train"] * 3 + ["test"])
    df = prepare("table", tmp_path / "g", 0, path=str(csv), input="sentence", label="topic", group="spk", folds=2)
    for split in make_splits(df["label"], df["group"], df["split"], {"scheme": "kfold", "folds": 2}, "paper", 0):
        assert not set(df["group"].iloc[split.train]) & set(df["group"].iloc[split.test])
    df = prepare("table", tmp_path / "s", 0, path=str(csv), input="sentence", label="topic", split="part")
    [run] = make_splits(df["label"], df["group"], df["split"], {"scheme": "seeds", "runs": 1}, "clean", 0)
    assert sorted(run.test) == [3, 7]


# ---- the whole workflow ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_table_and_folder_through_the_whole_workflow(tmp_path):
    """prepare → encoder (local folders) → embed → train (both protocols) → IF analyses → tables."""
    data = tmp_path / "mydata"
    data.mkdir()
    csv = _text_table(data, speaker=["s1", "s2", "s3", "s4"] * 2)
    for label in ("calm", "angry"):
        for i in range(6):
            _wav(data / "voices" / label / f"spk{i % 3}_{i}.wav", seconds=0.3 + 0.1 * i,
                 freq=(150 if label == "calm" else 400) + 20 * i)
    _saved("bert", tmp_path / "bert")
    _saved("wavlm", tmp_path / "wavlm")
    config = {
        "seed": 0, "results_dir": str(tmp_path / "results"), "threads": 1,
        "datasets": {
            "sentences": {"source": "table", "encoder": "my-bert", "evaluation": {"scheme": "auto", "folds": 2},
                          "options": {"path": str(csv), "input": "sentence", "label": "topic", "group": "speaker"}},
            "voices": {"source": "folder", "encoder": "my-wavlm", "evaluation": {"scheme": "auto", "folds": 3},
                       "options": {"root": str(data / "voices"), "pattern": r"^(spk\d)_"}},
        },
        "encoders": {"my-bert": {"kind": "hub", "id": str(tmp_path / "bert" / "saved")},
                     "my-wavlm": {"kind": "hub", "id": str(tmp_path / "wavlm" / "saved")}},
        "methods": ["daam_v1", "linear"], "protocols": ["paper", "clean"],
        "importance": {"enabled": True, "method": "daam_v1", "ablation_methods": ["daam_v1"], "k": 1},
        "model": {"conv_channels": 4}, "training": {"defaults": {"epochs": 2}},
        "encoder_lock": str(tmp_path / "encoders.lock.yaml"),
    }
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake("--cores", "2", "--configfile", str(tmp_path / "own.yaml"), timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    results = tmp_path / "results"
    for dataset, folds in (("sentences", 2), ("voices", 3)):
        meta = json.loads((results / "data" / dataset / "meta.json").read_text())
        assert meta["source"] in ("table", "folder") and meta["options"]["folds"] == folds
        for protocol in ("paper", "clean"):
            runs = pd.read_csv(next((results / "runs" / dataset).glob(f"*/{protocol}/daam_v1/runs.csv")))
            assert len(runs) == folds and runs["accuracy"].between(0, 1).all()
    assert list((results / "tables").glob("*.csv")), "the tables were written"
