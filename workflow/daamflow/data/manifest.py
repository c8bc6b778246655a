"""Helpers shared by the stage outputs: atomic output folders, checksums, and the prepared-data manifest."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from daamflow.atomic import write_json  # noqa: F401  (re-exported: the stages import it from here)

MANIFEST_COLUMNS = ["id", "label", "label_name", "group", "split"]
# the input of each modality; audio rows may also carry start/end/pad_to (the contracts: daamflow.data.batching)
INPUT_COLUMN = {"text": "text", "image": "image_index", "audio": "path"}
SPLITS = {"train", "test", ""}
_STR_COLUMNS = {c: str for c in ("id", "label_name", "group", "split", "text", "path")}


@contextlib.contextmanager
def atomic_dir(out_dir: Path | str) -> Iterator[Path]:
    """Yield an empty temp folder beside ``out_dir``; on success it replaces ``out_dir`` as a whole.

    An existing ``out_dir`` survives untouched if the body raises; the temp folder is always cleaned up. The folder
    gets the permissions of a plain ``mkdir`` (the umask's), not mkdtemp's owner-only ``drwx------``, so that a
    group sharing the results can read it.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if out_dir.exists():
            # rename the old folder away first so the swap is two renames, never a half-deleted output
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "x")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def sha256_file(path: Path | str, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (works for multi-GB feature files)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def input_column(df: pd.DataFrame, modality: str) -> str:
    """The input column of a manifest: ``INPUT_COLUMN[modality]``, except image rows that name files (``path``)."""
    if modality == "image" and "path" in df.columns and "image_index" not in df.columns:
        return "path"
    return INPUT_COLUMN[modality]


def validate_manifest(df: pd.DataFrame, modality: str, classes: list[str]) -> None:
    """Check a prepared-data manifest against the contract; raise ValueError naming the first problem."""
    if modality not in INPUT_COLUMN:
        raise ValueError(f"modality must be one of {sorted(INPUT_COLUMN)}, got {modality!r}")
    needed = MANIFEST_COLUMNS + [input_column(df, modality)]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing} (needs {needed})")
    if len(df) == 0:
        raise ValueError("manifest is empty")
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise ValueError(f"manifest ids are not unique, e.g. {dup.iloc[0]!r}")
    labels = df["label"].to_numpy()
    if labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(f"labels must lie in 0..{len(classes) - 1} (classes {classes}), "
                         f"found {labels.min()}..{labels.max()}")
    wrong_names = df[np.asarray(classes, dtype=object)[labels] != df["label_name"].to_numpy()]
    if len(wrong_names):
        raise ValueError(f"label_name disagrees with classes[label] for id {wrong_names['id'].iloc[0]!r}")
    bad_split = set(df["split"]) - SPLITS
    if bad_split:
        raise ValueError(f"split values must be in {sorted(SPLITS)}, found {sorted(bad_split)}")


def read_prepared(data_dir: Path | str) -> tuple[pd.DataFrame, dict]:
    """Read ``manifest.csv`` and ``meta.json`` of a prepared data folder (string columns stay strings)."""
    data_dir = Path(data_dir)
    for name in ("manifest.csv", "meta.json"):
        if not (data_dir / name).is_file():
            raise FileNotFoundError(f"{data_dir / name} is missing: run the prepare step for this dataset first")
    meta = json.loads((data_dir / "meta.json").read_text())
    df = pd.read_csv(data_dir / "manifest.csv", dtype=_STR_COLUMNS, keep_default_na=False)
    df["label"] = df["label"].astype("int64")
    if "image_index" in df.columns:
        df["image_index"] = df["image_index"].astype("int64")
    validate_manifest(df, meta["modality"], meta["classes"])
    return df, meta
