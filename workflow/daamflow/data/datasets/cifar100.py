"""CIFAR-100 from the official python-pickle tarball: 50,000 train / 10,000 test RGB 32×32 images, 100 classes.

The tarball is downloaded once into ``root`` (md5-checked) and read in place: the pickles are loaded straight out of
the archive with an unpickler that only accepts numpy arrays. The prepared folder holds ``images.npy`` (uint8,
n×32×32×3, channels last); the encoder's image processor resizes to its input size (224×224 for BEiT-Large).
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

from daamflow.data.datasets.common import balanced_subset, fetch

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"  # published with the dataset
ARCHIVE = "cifar-100-python.tar.gz"
OPTIONS = {
    "root": "resources/cifar100",  # where the tarball is kept (relative to the working directory; git-ignored)
    "url": URL,  # or a mirror, a file:// URL, or a local path
    "md5": MD5,  # null: accept any file (its md5 and sha256 are recorded in meta.json)
    "per_class_train": None,  # null: all 500 per class; a number: a seeded class-balanced subset
    "per_class_test": None,  # null: all 100 per class
}
SIZES = {"train": 50_000, "test": 10_000}
# What a numpy array pickled by numpy 1.x/2.x (or Python 2's cPickle) needs; anything else in the archive is refused.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR-100 archive holds an unexpected object {module}.{name}; refusing it")
        return super().find_class(module, name)


def _read_member(archive: tarfile.TarFile, name: str) -> dict:
    try:
        member = archive.getmember(f"cifar-100-python/{name}")
    except KeyError as err:
        raise ValueError(f"{archive.name} lacks cifar-100-python/{name}: not the CIFAR-100 python archive") from err
    data = archive.extractfile(member).read()
    return _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()


def download(root: Path | str, url: str = URL, md5: str | None = MD5) -> tuple[Path, dict]:
    """The verified tarball in ``root`` (downloaded from ``url`` if missing) and its provenance."""
    path = Path(root) / ARCHIVE
    return path, fetch(url, path, md5=md5)


def load(archive_path: Path | str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, list[str]]], list[str]]:
    """Read the archive: {split: (images uint8 n×32×32×3, fine labels int64, file names)} and the 100 class names."""
    with tarfile.open(archive_path, "r:gz") as archive:
        names = [n.decode() for n in _read_member(archive, "meta")[b"fine_label_names"]]
        splits = {}
        for split in SIZES:
            d = _read_member(archive, split)
            missing = [k for k in (b"data", b"fine_labels", b"filenames") if k not in d]
            if missing:
                raise ValueError(f"{archive_path}: {split} lacks keys {missing}")
            data = np.asarray(d[b"data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(d[b"fine_labels"]):
                raise ValueError(f"{archive_path}: {split} data has shape {data.shape} for "
                                 f"{len(d[b'fine_labels'])} labels; expected (n, 3072)")
            # rows are 1024 red, 1024 green, 1024 blue values (row-major 32×32 planes) → channels last
            images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            splits[split] = (np.ascontiguousarray(images), np.asarray(d[b"fine_labels"], dtype=np.int64),
                             [f.decode() for f in d[b"filenames"]])
    return splits, names


def build(work_dir: Path, seed: int, root: str, url: str, md5: str | None, per_class_train: int | None,
          per_class_test: int | None):
    """Download (once) and read CIFAR-100, write ``images.npy``; one row per image, the official split kept."""
    archive, provenance = download(root, url, md5)
    splits, classes = load(archive)
    rng = np.random.default_rng(seed)
    frames, images = [], []
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        x, y, files = splits[split]
        picked = balanced_subset(y, per_class, rng, f"cifar100 {split}")
        frames.append(pd.DataFrame({
            "id": [f"cifar100-{split}-{i:05d}" for i in picked],
            "label": y[picked],
            "label_name": np.asarray(classes, dtype=object)[y[picked]],
            "split": split,
            "filename": [files[i] for i in picked],
        }))
        images.append(x[picked])
    df = pd.concat(frames, ignore_index=True)
    df["group"] = df["id"]  # every image is its own group: the clean protocol's dev split is a plain stratified one
    df["image_index"] = np.arange(len(df))
    np.save(work_dir / "images.npy", np.concatenate(images))
    return df, classes, {"cifar100": provenance}
