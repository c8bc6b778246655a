"""Your own data as a table: a CSV, TSV, JSON Lines or Parquet file with one row per sample.

One column holds the input: the text itself, or the path of an audio or image file relative to the table's folder;
one holds the label. Optional columns give the sample's id, its group (speaker, session, source: no group is ever
split between a training and a test part) and its split (``train``/``test``: the evaluation then runs seeds over that
split). The modality is declared (option ``modality``) or inferred from the input column: audio or image when every
value ends in an audio or image file extension, text otherwise.

Every row is checked before anything is written, and a bad one stops the step with the file and its row number
(rows count from 1, the header excluded): a missing column, an empty cell, a path outside the table's folder, a
missing, empty or undecodable file, labels that differ only in case or whitespace, a class with fewer samples than
the evaluation's folds (option ``folds``, set from the dataset's ``evaluation`` by the config). Files are not copied:
the manifest names them by absolute path, as the IEMOCAP adapter does. The shared checks live here; the ``folder``
source (``daamflow.data.datasets.folder``) reuses them.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from daamflow.data.batching import AUDIO_SUFFIXES, IMAGE_SUFFIXES, audio_header, read_image
from daamflow.data.manifest import sha256_file

OPTIONS = {
    "path": None,  # the table (required): .csv, .tsv, .jsonl / .ndjson, .parquet
    "input": None,  # column of the text, or of file paths relative to the table's folder (required)
    "label": "label",
    "id": None,  # column of unique sample ids (default: "row<N>")
    "group": None,  # column of groups for grouped folds (default: every sample its own group)
    "split": None,  # column of train/test (default: none; the evaluation makes folds)
    "modality": None,  # text | audio | image (default: inferred from the input column)
    "folds": None,  # every class needs at least this many samples (set from `evaluation` by the config)
}
READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
SPLIT_NAMES = ("train", "test")


def read_table(path: Path | str, nrows: int | None = None) -> pd.DataFrame:
    """The table at ``path`` (its first ``nrows`` rows), every cell a string (missing cells ``""``)."""
    path = Path(path).expanduser()
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"table {path}: unknown format {path.suffix!r}; accepted: {sorted(READERS)}")
    if not path.is_file():
        raise FileNotFoundError(f"table {path}: file not found")
    try:
        if kind in ("csv", "tsv"):
            df = pd.read_csv(path, sep="," if kind == "csv" else "\t", dtype=str, keep_default_na=False, nrows=nrows)
        elif kind == "jsonl":
            df = pd.read_json(path, lines=True, dtype=False, nrows=nrows)
        else:
            df = _read_parquet(path)
            df = df if nrows is None else df.head(nrows)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise ValueError(f"table {path}: not a readable {kind} file: {err}") from err
    if df.empty:
        raise ValueError(f"table {path}: holds no rows")
    return df.astype(object).where(df.notna(), "").astype(str)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        import pyarrow  # noqa: F401  (pandas' Parquet engine)
    except ImportError as err:
        raise ModuleNotFoundError(f"table {path}: reading Parquet needs pyarrow (pip install pyarrow); "
                                  f"or save the table as CSV, TSV or JSON Lines") from err
    return pd.read_parquet(path)


def modality_of(values: list[str], wheres: list[str], what: str) -> str:
    """``audio``/``image`` when every value ends in an audio/image file extension, ``text`` when none does; mixed
    values are refused, naming where (``wheres``, one per value) each kind was found."""
    suffixes = pd.Series([os.path.splitext(v.strip())[1].lower() for v in values], dtype=object)
    audio, image = suffixes.isin(AUDIO_SUFFIXES), suffixes.isin(IMAGE_SUFFIXES)
    if audio.all():
        return "audio"
    if image.all():
        return "image"
    if not (audio | image).any():
        return "text"
    kinds = [("an audio file", audio), ("an image file", image), ("neither (text)", ~(audio | image))]
    found = [f"{name} ({values[int(np.argmax(mask))]!r}, {wheres[int(np.argmax(mask))]})"
             for name, mask in kinds if mask.any()]
    raise ValueError(f"{what} mixes inputs: {'; '.join(found)}")


def _column(df: pd.DataFrame, name: str | None, option: str, path: Path) -> pd.Series | None:
    if name is None:
        return None
    if name not in df.columns:
        raise ValueError(f"table {path}: no column {name!r} (option {option}); its columns: {list(df.columns)}")
    return df[name]


def infer_modality(options: dict, sample: int | None = None) -> str:
    """The modality of a table's input column (its first ``sample`` rows; all when None)."""
    path = Path(_required(options, "path")).expanduser()
    column = _column(read_table(path, sample), _required(options, "input"), "input", path)
    return modality_of(column.tolist(), [f"table {path}, row {i + 1}" for i in range(len(column))],
                       f"table {path}, column {options['input']!r}")


def has_split(options: dict) -> bool:
    """Whether the table gives its own train/test split (then the evaluation runs seeds over it)."""
    return options.get("split") is not None


def _required(options: dict, key: str):
    if options.get(key) is None:
        raise ValueError(f"table: option {key!r} is required")
    return options[key]


def build(work_dir: Path, seed: int, path: str | None, input: str | None, label: str, id: str | None,
          group: str | None, split: str | None, modality: str | None, folds: int | None):
    """The manifest of a table's rows (checked) and the classes, sorted; nothing is written besides the manifest.
    ``modality`` is the declared or inferred one (``prepare`` infers it when not given)."""
    given = {"path": path, "input": input}
    path, input = Path(_required(given, "path")).expanduser(), _required(given, "input")
    df = read_table(path)
    columns = {key: _column(df, name, key, path)
               for key, name in (("input", input), ("label", label), ("id", id), ("group", group), ("split", split))}
    rows = pd.DataFrame({
        "id": columns["id"] if id is not None else [f"row{i + 1}" for i in range(len(df))],
        "label_name": columns["label"],
        "input": columns["input"],
        "group": columns["group"] if group is not None else "",
        "split": columns["split"] if split is not None else "",
        "where": [f"table {path}, row {i + 1}" for i in range(len(df))],
    })
    versions = {"table": {"path": str(path.resolve()), "sha256": sha256_file(path)}}
    return assemble(rows, modality, path.parent, folds, split_given=split is not None, versions=versions)


def assemble(rows: pd.DataFrame, modality: str, base: Path, folds: int | None, split_given: bool, versions: dict):
    """Check the rows (id, label_name, input, group, split, where) and turn them into (manifest, classes, versions).

    ``base``: the folder relative file paths start from, and that no file may lie outside of. An empty group makes
    the sample its own group; the split is ``train``/``test`` (any case) when ``split_given``.
    """
    if modality not in ("text", "audio", "image"):
        raise ValueError(f"modality must be text, audio or image, got {modality!r}")
    rows = rows.reset_index(drop=True)
    for column, what in (("label_name", "label"), ("input", "input"), ("id", "id")):
        _no_empty(rows, column, what)
    duplicated = rows["id"].duplicated(keep=False)
    if duplicated.any():
        first = rows[duplicated].iloc[:2]
        raise ValueError(f"{first['where'].iloc[1]}: id {first['id'].iloc[1]!r} is also the id of "
                         f"{first['where'].iloc[0]}; ids must be unique")
    rows["group"] = rows["group"].where(rows["group"].str.strip() != "", rows["id"])
    rows["split"] = _splits(rows, split_given)
    classes = _classes(rows)
    _enough(rows, classes, folds, split_given)
    df = pd.DataFrame({
        "id": rows["id"], "label": rows["label_name"].map({c: i for i, c in enumerate(classes)}).astype(np.int64),
        "label_name": rows["label_name"], "group": rows["group"], "split": rows["split"],
    })
    if modality == "text":
        df["text"] = rows["input"]
    else:
        files = [_checked_file(value, base, where, modality) for value, where in zip(rows["input"], rows["where"])]
        df["path"] = [str(f) for f in files]
        versions["files"] = _files_digest(files)
    return df, classes, versions


def _no_empty(rows: pd.DataFrame, column: str, what: str) -> None:
    empty = rows[column].str.strip() == ""
    if empty.any():
        raise ValueError(f"{rows['where'][empty].iloc[0]}: empty {what}")


def _splits(rows: pd.DataFrame, split_given: bool) -> pd.Series:
    if not split_given:
        return pd.Series("", index=rows.index)
    split = rows["split"].str.strip().str.lower()
    bad = ~split.isin(SPLIT_NAMES)
    if bad.any():
        raise ValueError(f"{rows['where'][bad].iloc[0]}: split {rows['split'][bad].iloc[0]!r} is not one of "
                         f"{list(SPLIT_NAMES)}")
    return split


def _classes(rows: pd.DataFrame) -> list[str]:
    """The distinct labels, sorted (numerically when all are integers); labels equal up to case or whitespace are
    refused, naming a row of each."""
    names = list(dict.fromkeys(rows["label_name"]))
    seen: dict[str, str] = {}
    for name in names:
        key = " ".join(name.split()).casefold()
        if key in seen:
            where = {n: rows["where"][rows["label_name"] == n].iloc[0] for n in (seen[key], name)}
            raise ValueError(f"labels {seen[key]!r} ({where[seen[key]]}) and {name!r} ({where[name]}) differ only "
                             f"in case or whitespace: make them one label")
        seen[key] = name
    numeric = all(re.fullmatch(r"-?\d+", n) for n in names)
    return sorted(names, key=int) if numeric else sorted(names)


def _enough(rows: pd.DataFrame, classes: list[str], folds: int | None, split_given: bool) -> None:
    """Every class needs a training sample (a given split) or ``folds`` samples (k-fold), and k-fold ``folds``
    groups."""
    if split_given:
        for part in SPLIT_NAMES:
            counts = rows["label_name"][rows["split"] == part].value_counts()
            absent = [c for c in classes if c not in counts]
            if absent:
                raise ValueError(f"class {absent[0]!r} has no {part} sample (rows such as "
                                 f"{rows['where'][rows['label_name'] == absent[0]].iloc[0]})")
        return
    if folds is None:
        return
    counts = rows["label_name"].value_counts()
    few = [c for c in classes if counts[c] < folds]
    if few:
        raise ValueError(f"class {few[0]!r} has {counts[few[0]]} samples, fewer than the evaluation's {folds} folds "
                         f"(e.g. {rows['where'][rows['label_name'] == few[0]].iloc[0]}): add samples, drop the "
                         f"class or lower evaluation.folds")
    groups = rows["group"].nunique()
    if groups < folds:
        raise ValueError(f"{groups} distinct groups, fewer than the evaluation's {folds} folds: every fold holds "
                         f"out whole groups")


def _checked_file(value: str, base: Path, where: str, modality: str) -> Path:
    """The absolute path of ``value`` (relative to ``base``), refused when outside ``base``, missing, empty or not
    decodable as ``modality``."""
    base = Path(os.path.abspath(base))
    path = Path(os.path.normpath(base / Path(value.strip()).expanduser()))  # lexical: symlinked data files stay valid
    if not path.is_relative_to(base):
        raise ValueError(f"{where}: {value!r} lies outside the table's folder {base}")
    if not path.is_file():
        raise FileNotFoundError(f"{where}: file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{where}: {path} is empty")
    try:
        if modality == "audio":
            rate, frames = audio_header(str(path))
            if frames == 0 or rate <= 0:
                raise ValueError(f"{frames} samples at {rate} Hz")
        else:
            read_image(str(path), 3)
    except ModuleNotFoundError:
        raise
    except Exception as err:  # every decoder has its own errors (scipy, soundfile, Pillow)
        raise ValueError(f"{where}: {path} is not a readable {modality} file: {err}") from err
    return path


def _files_digest(files: list[Path]) -> dict:
    """How many files, their bytes, and a digest of their names and sizes (hashing every file's content could take
    minutes; the feature store's own digests cover what was embedded)."""
    h, total = hashlib.sha256(), 0
    for f in files:
        size = f.stat().st_size
        h.update(f"{f}\0{size}\n".encode())
        total += size
    return {"files": len(files), "bytes": total, "names_sizes_sha256": h.hexdigest()}
