"""AG News from the official CSVs (the ones torchtext's ``AG_NEWS`` reads): 120,000 train / 7,600 test articles.

Each CSV row is ``"class index 1-4","title","description"`` with no header. The text of a sample is the title and
the description joined by a space, exactly as torchtext yielded it to the released feature script; class index k
becomes label k-1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from daamflow.data.datasets.common import balanced_subset, fetch

BASE_URL = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv"
CLASSES = ["World", "Sports", "Business", "Sci/Tech"]
SIZES = {"train": 120_000, "test": 7_600}
# torchtext's AG_NEWS checksums of the official files: a download from these URLs must match
OFFICIAL_MD5 = {
    f"{BASE_URL}/train.csv": "b1a00f826fdfbd249f79597b59e1dc12",
    f"{BASE_URL}/test.csv": "d52ea96a97a2d943681189a97654912d",
}
OPTIONS = {
    "root": "resources/agnews",  # where the CSVs are kept (relative to the working directory; git-ignored)
    "train_url": f"{BASE_URL}/train.csv",  # or a mirror, a file:// URL, or a local path
    "test_url": f"{BASE_URL}/test.csv",
    # {train: hex, test: hex} to pin the files; null: the official URLs are checked against OFFICIAL_MD5, other
    # sources are accepted and their digests recorded
    "sha256": None,
    "per_class_train": None,  # null: all 30,000 per class; a number: a seeded class-balanced subset
    "per_class_test": None,  # null: all 1,900 per class
}


def download(root: Path | str, train_url: str, test_url: str,
             sha256: dict | None = None) -> dict[str, tuple[Path, dict]]:
    """{split: (verified local CSV, provenance)}, downloading what is missing into ``root``; a file from an official
    URL must have its ``OFFICIAL_MD5``."""
    sha256 = sha256 or {}
    unknown = sorted(set(sha256) - set(SIZES))
    if unknown:
        raise ValueError(f"agnews: sha256 keys must be among {sorted(SIZES)}, got {unknown}")
    out = {}
    for split, url in (("train", train_url), ("test", test_url)):
        path = Path(root) / f"{split}.csv"
        out[split] = (path, fetch(url, path, md5=OFFICIAL_MD5.get(url), sha256=sha256.get(split)))
    return out


def read_csv(path: Path | str) -> pd.DataFrame:
    """One official CSV → columns label (0-3), title, description, text."""
    df = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, quotechar='"')
    if df.shape[1] != 3:
        raise ValueError(f"{path}: expected 3 columns (class index, title, description), found {df.shape[1]}")
    df.columns = ["class_index", "title", "description"]
    index = pd.to_numeric(df["class_index"], errors="coerce")
    bad = ~index.isin([1, 2, 3, 4])
    if bad.any():
        raise ValueError(f"{path}: row {int(np.flatnonzero(bad)[0]) + 1} has class index "
                         f"{df['class_index'][bad].iloc[0]!r}; expected 1-4")
    df["label"] = index.astype(np.int64) - 1
    df["text"] = df["title"] + " " + df["description"]
    return df[["label", "title", "description", "text"]]


def build(work_dir: Path, seed: int, root: str, train_url: str, test_url: str, sha256: dict | None,
          per_class_train: int | None, per_class_test: int | None):
    """Download (once) and read both CSVs; one row per article, the official split kept, the text inline."""
    files = download(root, train_url, test_url, sha256)
    rng = np.random.default_rng(seed)
    frames = []
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        df = read_csv(files[split][0])
        picked = balanced_subset(df["label"].to_numpy(), per_class, rng, f"agnews {split}")
        part = df.iloc[picked].reset_index(drop=True)
        part.insert(0, "id", [f"agnews-{split}-{i:06d}" for i in picked])
        part["split"] = split
        frames.append(part)
    out = pd.concat(frames, ignore_index=True)
    out["label_name"] = np.asarray(CLASSES, dtype=object)[out["label"]]
    out["group"] = out["id"]
    versions = {"agnews": {split: provenance for split, (_, provenance) in files.items()}}
    return out[["id", "label", "label_name", "group", "split", "text", "title", "description"]], CLASSES, versions
