"""The feature store: pooled per-layer encoder features of one (dataset, encoder), verified on every read.

Layout of a store folder:
    features.npy   float16 (n, N, d): n samples, N layers, width d (read memory-mapped)
    index.csv      row, id, label, label_name, group, split (row i describes features[i])
    manifest.json  encoder, layers kept, pooling rule, dtype, shape, sha256 of both files, package versions
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from daamflow.data.manifest import MANIFEST_COLUMNS, atomic_dir, sha256_file, write_json

FEATURES, INDEX, MANIFEST = "features.npy", "index.csv", "manifest.json"
DTYPE = np.dtype("float16")
INDEX_COLUMNS = ["row"] + MANIFEST_COLUMNS
_CHUNK_ROWS = 4096


class FeatureStoreError(RuntimeError):
    """A feature store is missing, incomplete or does not match its manifest."""


@dataclass(frozen=True)
class FeatureStore:
    """A loaded store; ``features`` is a read-only memory map."""

    path: Path
    features: np.ndarray
    index: pd.DataFrame
    manifest: dict

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.features.shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[2])

    @property
    def labels(self) -> np.ndarray:
        return self.index["label"].to_numpy(dtype=np.int64)

    @property
    def groups(self) -> np.ndarray:
        return self.index["group"].to_numpy(dtype=str)

    @property
    def splits(self) -> np.ndarray:
        return self.index["split"].to_numpy(dtype=str)


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that determine the features' values."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "numpy", "daamflow"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _check_index(index: pd.DataFrame, n: int) -> None:
    missing = [c for c in MANIFEST_COLUMNS if c not in index.columns]
    if missing:
        raise ValueError(f"index lacks columns {missing} (needs {MANIFEST_COLUMNS})")
    if len(index) != n:
        raise ValueError(f"index has {len(index)} rows but features has {n}")


def _finish(work: Path, index: pd.DataFrame, manifest: dict, shape: tuple) -> None:
    """Write index.csv and manifest.json (with shape, dtype, checksums, versions) beside ``work/features.npy``."""
    table = index[MANIFEST_COLUMNS].reset_index(drop=True)
    table.insert(0, "row", np.arange(len(table)))
    table.to_csv(work / INDEX, index=False)
    write_json(work / MANIFEST, {
        **manifest,
        "dtype": DTYPE.name,
        "shape": list(shape),
        "sha256": {FEATURES: sha256_file(work / FEATURES), INDEX: sha256_file(work / INDEX)},
        "versions": package_versions(),
    })


def write_store(out_dir: Path | str, features: np.ndarray, index: pd.DataFrame, manifest: dict) -> Path:
    """Write a store atomically (temp folder beside ``out_dir``, then rename) and return ``out_dir``.

    Args:
        features: (n, N, d) array (any float dtype, may be a memory map); stored as float16.
        index: one row per sample with columns id, label, label_name, group, split, in feature order.
        manifest: provenance (encoder id/revision, layers, pooling rule, ...); dtype, shape, sha256 and
            package versions are added here.
    """
    if features.ndim != 3:
        raise ValueError(f"features must have shape (n, layers, dim), got {features.shape}")
    _check_index(index, features.shape[0])
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as work:
        stored = np.lib.format.open_memmap(work / FEATURES, mode="w+", dtype=DTYPE, shape=features.shape)
        for start in range(0, features.shape[0], _CHUNK_ROWS):  # chunked: never a second full copy in memory
            with np.errstate(over="ignore"):  # overflow is reported just below, with the rows
                chunk = np.asarray(features[start:start + _CHUNK_ROWS]).astype(DTYPE)
            if not np.isfinite(chunk).all():
                raise ValueError(f"features rows {start}..{start + len(chunk) - 1} hold NaN, inf or values "
                                 f"beyond the float16 range (|x| > 65504)")
            stored[start:start + len(chunk)] = chunk
        stored.flush()
        del stored
        _finish(work, index, manifest, features.shape)
    return out_dir


def adopt_store(out_dir: Path | str, features_file: Path | str, index: pd.DataFrame, manifest: dict) -> Path:
    """Make a store around an existing complete float16 ``.npy`` file without copying it (a hard link).

    For features too large to pass through memory twice (AG News × Llama-2-13B: ~52 GB). The caller has checked
    the values (finite); ``features_file`` stays where it is until the caller removes it.
    """
    features_file = Path(features_file)
    features = np.load(features_file, mmap_mode="r")
    if features.dtype != DTYPE or features.ndim != 3:
        raise ValueError(f"{features_file}: {features.dtype} {features.shape}; expected float16 (n, layers, dim)")
    shape = features.shape
    del features
    _check_index(index, shape[0])
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as work:
        try:
            os.link(features_file, work / FEATURES)
        except OSError:  # another file system, or links not allowed there
            shutil.copyfile(features_file, work / FEATURES)
        _finish(work, index, manifest, shape)
    return out_dir


def _fail(store_dir: Path, what: str) -> FeatureStoreError:
    return FeatureStoreError(f"feature store {store_dir}: {what}; re-run the embed step for this dataset and encoder")


def load_store(store_dir: Path | str, verify: bool = True) -> FeatureStore:
    """Open a store; check files, dtype, shape and index against the manifest, and (``verify``) the sha256s.

    Raises ``FeatureStoreError`` naming the file and what was expected versus found.
    """
    store_dir = Path(store_dir)
    for name in (FEATURES, INDEX, MANIFEST):
        if not (store_dir / name).is_file():
            raise _fail(store_dir, f"{name} is missing")
    try:
        manifest = json.loads((store_dir / MANIFEST).read_text())
        expected_shape, expected_sha = tuple(manifest["shape"]), manifest["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise _fail(store_dir, f"{MANIFEST} is unreadable or lacks shape/sha256 ({err})") from err
    if verify:
        for name in (FEATURES, INDEX):
            found = sha256_file(store_dir / name)
            if found != expected_sha.get(name):
                raise _fail(store_dir, f"{name} sha256 is {found}, manifest expects {expected_sha.get(name)} "
                                       f"(the file changed or is corrupt)")
    try:
        features = np.load(store_dir / FEATURES, mmap_mode="r")
    except ValueError as err:
        raise _fail(store_dir, f"{FEATURES} is not a valid .npy file ({err})") from err
    if features.dtype != DTYPE or features.shape != expected_shape:
        raise _fail(store_dir, f"{FEATURES} holds {features.dtype} {features.shape}, "
                               f"manifest expects {manifest.get('dtype')} {expected_shape}")
    index = pd.read_csv(store_dir / INDEX, dtype={c: str for c in ("id", "label_name", "group", "split")},
                        keep_default_na=False)
    if list(index.columns) != INDEX_COLUMNS or len(index) != features.shape[0] \
            or not np.array_equal(index["row"].to_numpy(), np.arange(len(index))):
        raise _fail(store_dir, f"{INDEX} has columns {list(index.columns)} and {len(index)} rows; expected "
                               f"{INDEX_COLUMNS} with rows 0..{features.shape[0] - 1}")
    index["label"] = index["label"].astype(np.int64)
    return FeatureStore(path=store_dir, features=features, index=index, manifest=manifest)
