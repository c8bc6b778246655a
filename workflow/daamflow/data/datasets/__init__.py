"""Dataset adapters: each source becomes a prepared folder (``manifest.csv``, ``meta.json``, raw inputs).

Sources: the paper's datasets (``iemocap`` from the user's licensed copy, ``cifar100`` and ``agnews`` downloaded once
into a local root), the offline demo stand-ins (``wordnet``, ``fashion_mnist``, ``espeak_prosody``), and the user's
own data (``table``: a CSV/TSV/JSON Lines/Parquet file; ``folder``: one sub-folder per class).

A source module exposes ``OPTIONS`` (name → default) and
``build(work_dir, seed, **options) -> (manifest DataFrame, class names, versions)``; ``prepare`` validates the
options, runs ``build`` in a temp folder and swaps it into place only when everything succeeded. A source's modality
is the catalog's (``daamflow.catalog.SOURCE_MODALITY``); the generic sources (modality ``None`` there) take it as the
option ``modality``, or infer it from the data (their ``infer_modality``; ``has_split`` says whether the data gives
its own train/test split).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd

from daamflow.catalog import SOURCE_MODALITY
from daamflow.data.datasets import agnews, cifar100, espeak, fashion_mnist, folder, iemocap, table, wordnet
from daamflow.data.manifest import MANIFEST_COLUMNS, atomic_dir, input_column, validate_manifest, write_json

_MODULES = {
    "wordnet": wordnet, "fashion_mnist": fashion_mnist, "espeak_prosody": espeak,
    "iemocap": iemocap, "cifar100": cifar100, "agnews": agnews, "table": table, "folder": folder,
}
GENERIC = {name: _MODULES[name] for name, modality in SOURCE_MODALITY.items() if modality is None}
SOURCES: dict[str, dict] = {name: copy.deepcopy(module.OPTIONS) for name, module in _MODULES.items()}


def prepare(source: str, out_dir: Path | str, seed: int, **options) -> pd.DataFrame:
    """Prepare one source into ``out_dir`` and return its manifest.

    Args:
        source: one of ``SOURCES`` ("iemocap", "cifar100", "agnews", "wordnet", "fashion_mnist", "espeak_prosody",
            "table", "folder").
        out_dir: destination folder; replaced atomically, an existing one survives a failure.
        seed: drives every random choice (subsets, prosody jitter).
        **options: source options (see ``SOURCES[source]`` for names and defaults).
    """
    if source not in _MODULES:
        raise ValueError(f"unknown dataset source {source!r}; accepted: {sorted(_MODULES)}")
    module, modality = _MODULES[source], SOURCE_MODALITY[source]
    unknown = sorted(set(options) - set(module.OPTIONS))
    if unknown:
        raise ValueError(f"{source}: unknown options {unknown}; accepted: {sorted(module.OPTIONS)}")
    resolved = {**copy.deepcopy(module.OPTIONS), **options}
    if modality is None:
        modality = resolved["modality"] = resolved["modality"] or module.infer_modality(resolved)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as work:
        df, classes, versions = module.build(work, int(seed), **resolved)
        column = input_column(df, modality)
        extra = [c for c in df.columns if c not in MANIFEST_COLUMNS and c != column]
        df = df[MANIFEST_COLUMNS + [column] + extra].reset_index(drop=True)
        validate_manifest(df, modality, classes)
        df.to_csv(work / "manifest.csv", index=False)
        counts = df["label_name"].value_counts()
        write_json(work / "meta.json", {
            "source": source,
            "modality": modality,
            "classes": classes,
            "options": resolved,
            "seed": int(seed),
            "n": len(df),
            "counts": {name: int(counts.get(name, 0)) for name in classes},
            "versions": versions,
        })
    return df
