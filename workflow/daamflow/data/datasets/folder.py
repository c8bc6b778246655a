"""Your own data as a folder: one sub-folder per class of audio or image files (the ImageFolder / AudioFolder
convention), optionally under ``train/`` and ``test/``::

    root/<class>/<file>                         the evaluation makes folds
    root/train/<class>/<file>, root/test/...    the given split: the evaluation runs seeds over it

Files may sit deeper inside a class folder; hidden files and folders (``.name``) are skipped. The option ``pattern``
(a regular expression searched in the file name) takes the group from the name, e.g. ``^(?P<group>[^_]+)_`` for the
speaker of ``spk3_0042.wav``: its named group ``group``, else its first group, else the whole match. The modality is
declared or inferred from the files' extensions. The files are checked, and the manifest built, by the table
source's shared code (``daamflow.data.datasets.table.assemble``): the same errors, naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from daamflow.data.batching import AUDIO_SUFFIXES, IMAGE_SUFFIXES
from daamflow.data.datasets.table import SPLIT_NAMES, assemble, modality_of

OPTIONS = {
    "root": None,  # the folder (required)
    "pattern": None,  # regular expression that takes the group from each file name (default: no groups)
    "modality": None,  # audio | image (default: inferred from the file extensions)
    "folds": None,  # every class needs at least this many samples (set from `evaluation` by the config)
}


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _root(root: str | None) -> Path:
    if root is None:
        raise ValueError("folder: option 'root' is required")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"folder {path}: not a folder")
    return path


def _parts(root: Path) -> list[tuple[str, Path]]:
    """(split, folder of class folders): ``[("", root)]``, or the train/ and test/ folders when both exist."""
    names = {p.name for p in _visible(root) if p.is_dir()}
    if not set(SPLIT_NAMES) <= names:
        return [("", root)]
    others = sorted(names - set(SPLIT_NAMES))
    if others:
        raise ValueError(f"folder {root}: holds train/ and test/ and also {others}: put every class folder under "
                         f"train/ and test/ (a given split), or none (folds)")
    return [(part, root / part) for part in SPLIT_NAMES]


def has_split(options: dict) -> bool:
    """Whether the folder gives its own train/test split (then the evaluation runs seeds over it)."""
    return _parts(_root(options.get("root")))[0][0] != ""


def scan(root: Path, pattern: str | None) -> pd.DataFrame:
    """One row per file: id (path below root), label_name (class folder), input (path), group, split, where."""
    regex = re.compile(pattern) if pattern else None
    rows = []
    for split, base in _parts(root):
        for entry in _visible(base):
            if not entry.is_dir():
                if entry.suffix.lower() in AUDIO_SUFFIXES + IMAGE_SUFFIXES:
                    raise ValueError(f"folder {root}: {entry} is not inside a class folder")
                continue  # a README or licence beside the class folders
            files = [f for f in sorted(entry.rglob("*"))
                     if f.is_file() and not any(part.startswith(".") for part in f.relative_to(entry).parts)]
            if not files:
                raise ValueError(f"folder {root}: class folder {entry} holds no files")
            for f in files:
                rows.append({"id": f.relative_to(root).as_posix(), "label_name": entry.name,
                             "input": str(f.relative_to(root)), "group": _group(regex, f, root),
                             "split": split, "where": f"folder {root}, file {f.relative_to(root)}"})
    if not rows:
        raise ValueError(f"folder {root}: no class folders (expected root/<class>/<files>)")
    return pd.DataFrame(rows)


def _group(regex: re.Pattern | None, f: Path, root: Path) -> str:
    if regex is None:
        return ""
    match = regex.search(f.name)
    if match is None:
        raise ValueError(f"folder {root}, file {f.relative_to(root)}: the name does not match the pattern "
                         f"{regex.pattern!r} that takes its group")
    if "group" in regex.groupindex:
        return match.group("group")
    return match.group(1) if regex.groups else match.group(0)


def infer_modality(options: dict, sample: int | None = None) -> str:
    """The modality of a folder's files, from their extensions (the first ``sample`` files; all when None)."""
    root = _root(options.get("root"))
    rows = scan(root, None).head(sample)
    return modality_of(rows["input"].tolist(), rows["where"].tolist(), f"folder {root}")


def build(work_dir: Path, seed: int, root: str | None, pattern: str | None, modality: str | None,
          folds: int | None):
    """The manifest of a folder's files (checked) and the classes, sorted; nothing is written besides the manifest.
    ``modality`` is the declared or inferred one (``prepare`` infers it when not given)."""
    root = _root(root)
    if modality not in ("audio", "image"):
        raise ValueError(f"folder {root}: modality {modality!r}; a folder source holds audio or image files "
                         f"({' '.join(AUDIO_SUFFIXES + IMAGE_SUFFIXES)})")
    rows = scan(root, pattern)
    return assemble(rows, modality, root, folds, split_given=rows["split"].iloc[0] != "", versions={})
