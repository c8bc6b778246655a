"""The paper's dataset adapters on tiny local stand-ins in the real formats; downloads go through the real code path
pointed at local files."""

import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from daamflow.data.datasets import SOURCES, cifar100, iemocap, prepare
from daamflow.data.datasets.common import fetch
from daamflow.data.manifest import read_prepared
from paper_fakes import AGNEWS_ROWS, make_agnews, make_cifar100, make_iemocap


@pytest.fixture(scope="module")
def iemocap_root(tmp_path_factory):
    return make_iemocap(tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release")


def test_iemocap_paper_segmentation(iemocap_root, tmp_path):
    df = prepare("iemocap", tmp_path / "data", seed=0, root=str(iemocap_root))
    read_back, meta = read_prepared(tmp_path / "data")
    assert read_back["id"].tolist() == df["id"].tolist() and meta["modality"] == "audio"
    assert meta["classes"] == ["sadness", "neutral", "happiness", "anger"]
    # per session: neu, exc→hap, ang, sad kept; fru and xxx dropped; Session 1 adds a 5.5 s hap utterance in 2 chunks
    assert meta["counts"] == {"sadness": 5, "neutral": 5, "happiness": 7, "anger": 5}
    assert df["group"].value_counts().sort_index().tolist() == [6, 4, 4, 4, 4]
    assert not df["emotion"].isin(["fru", "xxx"]).any()
    assert set(df.loc[df["emotion"] == "exc", "label_name"]) == {"happiness"}
    long = df[df["utterance"] == "Ses01F_impro01_F003"]
    assert long["id"].tolist() == ["Ses01F_impro01_F003_c0", "Ses01F_impro01_F003_c1"]
    assert long[["start", "end"]].values.tolist() == [[0, 80_000], [80_000, 88_000]]
    assert (df["pad_to"] == 80_000).all() and (df["split"] == "").all()
    short = df[df["id"] == "Ses02F_impro01_F000_c0"].iloc[0]
    assert (short["start"], short["end"], short["label_name"]) == (0, 8000, "neutral")
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])  # the source wavs, not copies
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["manifest.csv", "meta.json"]
    provenance = meta["versions"]["iemocap"]
    assert provenance["wav_files"] == 21 and len(provenance["label_files_sha256"]) == 64


def test_iemocap_utterance_segmentation_and_sessions(iemocap_root, tmp_path):
    df = prepare("iemocap", tmp_path / "data", seed=0, root=str(iemocap_root), segmentation="utterance",
                 sessions=[1, 3])
    assert len(df) == 9 and set(df["group"]) == {"Session1", "Session3"} and "pad_to" not in df.columns
    long = df[df["id"] == "Ses01F_impro01_F003"].iloc[0]
    assert (long["start"], long["end"], long["label"]) == (0, 88_000, 2)


def test_iemocap_errors_say_what_is_expected(iemocap_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)no root given.*Session1 .. Session5.*sail.usc.edu/iemocap"):
        prepare("iemocap", tmp_path / "x", seed=0)
    with pytest.raises(FileNotFoundError, match=r"(?s)is not a folder.*EmoEvaluation"):
        prepare("iemocap", tmp_path / "x", seed=0, root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"lacks \['Session1/dialog/EmoEvaluation', 'Session1/sentences/wav'\]"):
        prepare("iemocap", tmp_path / "x", seed=0, root=str(tmp_path))
    with pytest.raises(ValueError, match="segmentation must be one of"):
        prepare("iemocap", tmp_path / "x", seed=0, root=str(iemocap_root), segmentation="vad")
    with pytest.raises(ValueError, match="sessions must be distinct numbers among 1-5"):
        prepare("iemocap", tmp_path / "x", seed=0, root=str(iemocap_root), sessions=[6])
    broken = make_iemocap(tmp_path / "broken", sessions=(1,))
    labels = broken / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    labels.write_text(labels.read_text() + "[1.0 - 2.0]\tSes01F_impro01_F009\tneu\t[2.5, 2.5, 2.5]\n")
    with pytest.raises(FileNotFoundError, match=r"1 labelled utterances of Session1 have no wav.*F009"):
        prepare("iemocap", tmp_path / "x", seed=0, root=str(broken), sessions=[1])
    labels.write_text("[1.0 to 2.0] Ses01F_impro01_F000 neu\n")
    with pytest.raises(ValueError, match=r"Ses01F_impro01.txt:1: malformed label line"):
        prepare("iemocap", tmp_path / "x", seed=0, root=str(broken), sessions=[1])
    assert not (tmp_path / "x").exists()


def test_iemocap_label_parser(tmp_path):
    path = tmp_path / "Ses01F_impro01.txt"
    path.write_text("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
                    "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
                    "C-E2:\tNeutral;\t()\n[10.0100 - 11.3925]\tSes01F_impro01_M000\txxx\t[2.0000, 3.5000, 3.5000]\r\n")
    assert iemocap.parse_evaluation(path) == [("Ses01F_impro01_F000", "neu", 6.2901, 8.2357),
                                              ("Ses01F_impro01_M000", "xxx", 10.01, 11.3925)]


@pytest.fixture(scope="module")
def cifar_archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("cifar") / "cifar-100-python.tar.gz"
    labels = make_cifar100(path)
    return path, labels, hashlib.md5(path.read_bytes()).hexdigest()


def test_cifar100_from_a_file_url(cifar_archive, tmp_path):
    archive, labels, md5 = cifar_archive
    df = prepare("cifar100", tmp_path / "data", seed=0, root=str(tmp_path / "root"), url=archive.as_uri(), md5=md5)
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert len(meta["classes"]) == 100 and meta["classes"][42] == "class42" and meta["modality"] == "image"
    assert df["split"].value_counts().to_dict() == {"train": 9, "test": 6}
    assert df["label"].tolist() == labels["train"] + labels["test"] and (df["group"] == df["id"]).all()
    images = np.load(tmp_path / "data" / "images.npy")
    assert images.shape == (15, 32, 32, 3) and images.dtype == np.uint8
    # channels last: red = label, green = index within the split, blue = 200 except the marked pixel (0, 1)
    assert (images[:, 5, 5, 0] == df["label"]).all() and images[10, 3, 3, 1] == 1 and images[0, 5, 5, 2] == 200
    assert images[0, 0, 1, 2] == 7 and images[0, 1, 0, 2] == 200
    assert meta["versions"]["cifar100"]["md5"] == md5 and (tmp_path / "root" / cifar100.ARCHIVE).is_file()


def test_cifar100_reuses_the_download_and_checks_it(cifar_archive, tmp_path):
    archive, _, md5 = cifar_archive
    root = tmp_path / "root"
    prepare("cifar100", tmp_path / "a", seed=0, root=str(root), url=str(archive), md5=md5, per_class_train=1,
            per_class_test=1)
    # a second prepare finds the verified file in root: the (now unreachable) source is not asked again
    df = prepare("cifar100", tmp_path / "b", seed=3, root=str(root), url=str(tmp_path / "gone.tar.gz"), md5=md5,
                 per_class_train=2, per_class_test=1)
    assert df.groupby("split")["label"].value_counts().tolist() == [1, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError, match=r"md5 of .* is [0-9a-f]{32}, expected 0{32}"):
        prepare("cifar100", tmp_path / "c", seed=0, root=str(tmp_path / "other"), url=str(archive), md5="0" * 32)
    assert list((tmp_path / "other").iterdir()) == []  # no half-checked file left behind
    with pytest.raises(ValueError, match="has 3 samples of label 3, asked 4"):
        prepare("cifar100", tmp_path / "c", seed=0, root=str(root), md5=md5, per_class_train=4)


def test_cifar100_refuses_pickled_code(tmp_path):
    raw = pickle.dumps({b"fine_label_names": [eval]}, protocol=2)  # a reference to a callable, not an array
    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar-100-python/meta")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    with pytest.raises(pickle.UnpicklingError, match=r"unexpected object __builtin__.eval; refusing it"):
        cifar100.load(tmp_path / "evil.tar.gz")


def test_agnews_from_local_csvs(tmp_path):
    src = make_agnews(tmp_path / "src")
    df = prepare("agnews", tmp_path / "data", seed=0, root=str(tmp_path / "root"), train_url=str(src["train"]),
                 test_url=src["test"].as_uri())
    read_back, meta = read_prepared(tmp_path / "data")
    assert meta["classes"] == ["World", "Sports", "Business", "Sci/Tech"] and meta["modality"] == "text"
    expected = [(c - 1, f"{t} {d}") for c, t, d in AGNEWS_ROWS["train"] + AGNEWS_ROWS["test"]]
    assert list(zip(read_back["label"], read_back["text"])) == expected
    assert read_back["split"].tolist() == ["train"] * 8 + ["test"] * 4
    assert df.loc[1, "text"] == 'Iraq "vote" delayed Officials said, on Monday, that the vote would wait.'
    assert "dwindling\\band" in df.loc[0, "text"]  # kept verbatim, as torchtext read it
    digests = meta["versions"]["agnews"]
    assert digests["train"]["sha256"] == hashlib.sha256(src["train"].read_bytes()).hexdigest()
    sub = prepare("agnews", tmp_path / "sub", seed=1, root=str(tmp_path / "root"), train_url="unused",
                  test_url="unused", per_class_train=1, per_class_test=1, sha256={"train": digests["train"]["sha256"]})
    assert sorted(sub["label"].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_agnews_bad_files(tmp_path):
    src = make_agnews(tmp_path / "src")
    with pytest.raises(ValueError, match=r"sha256 of .* expected f{64}"):
        prepare("agnews", tmp_path / "x", seed=0, root=str(tmp_path / "r1"), train_url=str(src["train"]),
                test_url=str(src["test"]), sha256={"train": "f" * 64})
    src["test"].write_text('"5","title","text"\n')
    with pytest.raises(ValueError, match=r"row 1 has class index '5'; expected 1-4"):
        prepare("agnews", tmp_path / "x", seed=0, root=str(tmp_path / "r2"), train_url=str(src["train"]),
                test_url=str(src["test"]))


def test_fetch_explains_a_failed_download(tmp_path):
    with pytest.raises(OSError, match=r"could not download file:///.*missing.csv.*internet access"):
        fetch((tmp_path / "missing.csv").as_uri(), tmp_path / "out.csv")
    with pytest.raises(FileNotFoundError, match="neither a URL nor an existing file"):
        fetch(str(tmp_path / "missing.csv"), tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_paper_sources_are_registered():
    assert {"iemocap", "cifar100", "agnews"} <= set(SOURCES)
    assert SOURCES["iemocap"]["segmentation"] == "paper" and SOURCES["cifar100"]["url"].endswith("python.tar.gz")
