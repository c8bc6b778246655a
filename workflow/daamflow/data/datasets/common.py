"""Helpers of the downloaded datasets: fetch a file once into a local root, verified by checksum (urllib: http(s),
ftp and file URLs), and draw seeded class-balanced subsets.

The source is a parameter everywhere so that tests (and users with a mirror or a copy on disk) point the same code
path at a ``file://`` URL or a plain local path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

_CHUNK = 1 << 22


def as_url(source: str) -> str:
    """``source`` as a URL: URLs pass through, a local path becomes a ``file://`` URL."""
    if "://" in source:
        return source
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{source!r} is neither a URL nor an existing file")
    return path.resolve().as_uri()


def digests(path: Path | str) -> dict[str, str]:
    """md5 and sha256 of a file, in one pass."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            md5.update(block)
            sha.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def _mismatch(path: Path, found: dict[str, str], md5: str | None, sha256: str | None) -> str | None:
    for name, expected in (("md5", md5), ("sha256", sha256)):
        if expected and found[name] != expected.lower():
            return f"{name} of {path} is {found[name]}, expected {expected}"
    return None


def fetch(source: str, dest: Path | str, md5: str | None = None, sha256: str | None = None) -> dict:
    """Make ``dest`` a verified copy of ``source`` and return its provenance (source, md5, sha256, bytes).

    An existing ``dest`` that passes the checksums is reused (no network). Otherwise the file is streamed to a temp
    file beside ``dest``, checked, and renamed into place, so an interrupted or corrupt download never leaves a
    ``dest`` behind. With no checksum given, the computed ones are returned for the record.
    """
    dest = Path(dest)
    if dest.is_file():
        found = digests(dest)
        if _mismatch(dest, found, md5, sha256) is None:
            return {"source": source, **found, "bytes": dest.stat().st_size}
    url = as_url(source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part{os.getpid()}")
    try:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, _CHUNK)
        except (urllib.error.URLError, OSError) as err:
            raise OSError(
                f"could not download {url}: {err}. This step needs internet access (on a cluster, run the prepare "
                f"step on a login node), or place the file at {dest} yourself, or pass a local path or mirror URL."
            ) from err
        found = digests(tmp)
        problem = _mismatch(tmp, found, md5, sha256)
        if problem:
            raise ValueError(f"download of {url} is corrupt or not the expected file: {problem}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return {"source": source, **found, "bytes": dest.stat().st_size}


def balanced_subset(labels: np.ndarray, per_class: int | None, rng: np.random.Generator, what: str) -> np.ndarray:
    """Sorted indices of ``per_class`` random samples of every class present (all indices when ``per_class`` is None).

    ``what`` names the dataset and split in error messages, e.g. "cifar100 train".
    """
    if per_class is None:
        return np.arange(len(labels))
    if per_class < 1:
        raise ValueError(f"{what}: per-class count must be >= 1 or null (all), got {per_class}")
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise ValueError(f"{what} has {len(members)} samples of label {label}, asked {per_class}")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))
