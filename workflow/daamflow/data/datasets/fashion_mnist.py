"""Fashion-MNIST adapter: reads the official IDX files (Debian ``dataset-fashion-mnist``)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd

from daamflow.data.manifest import sha256_file

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049
OPTIONS = {
    "per_class_train": 40,
    "per_class_test": 20,
    "classes": list(range(10)),
    "root": str(DEFAULT_ROOT),
}


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Read a (gzipped) IDX file: big-endian int32 magic, ``ndim`` int32 sizes, then uint8 data."""
    if not path.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST file not found: {path}. Install Debian 'dataset-fashion-mnist' "
            f"(apt-get install dataset-fashion-mnist) or pass root= to a folder holding the IDX .gz files."
        )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    header = np.frombuffer(raw, dtype=">i4", count=1 + ndim)
    if int(header[0]) != magic:
        raise ValueError(f"{path}: bad IDX magic number {int(header[0])}, expected {magic}")
    shape = tuple(int(s) for s in header[1:])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + ndim))
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated IDX file: header says {shape}, found {data.size} bytes of data")
    return data.reshape(shape)


def load_split(split: str, root: Path | str = DEFAULT_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """Load one official split.

    Args:
        split: "train" (60,000 images) or "test" (10,000 images).
        root: folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.

    Returns:
        images uint8 (n, 28, 28) and labels int64 (n,), in file order.
    """
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    image_file, label_file = _FILES[split]
    root = Path(root)
    images = _read_idx(root / image_file, _IMAGE_MAGIC, 3)
    labels = _read_idx(root / label_file, _LABEL_MAGIC, 1).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {split} has {len(images)} images but {len(labels)} labels")
    return images.copy(), labels


def _class_index(c: int | str) -> int:
    """Resolve a class given by index (0..9, also as a digit string) or by name (case-insensitive)."""
    if isinstance(c, (int, np.integer)) and 0 <= c < len(CLASS_NAMES):
        return int(c)
    if isinstance(c, str):
        if c.isdigit() and int(c) < len(CLASS_NAMES):
            return int(c)
        lowered = [n.lower() for n in CLASS_NAMES]
        if c.lower() in lowered:
            return lowered.index(c.lower())
    raise ValueError(f"fashion_mnist: unknown class {c!r}; accepted: indices 0..9 or names {CLASS_NAMES}")


def build(work_dir: Path, seed: int, per_class_train: int, per_class_test: int, classes: list, root: str):
    """Sample a class-balanced subset of each official split (seeded) and write ``images.npy`` (uint8, n×28×28).

    Labels are renumbered 0..C-1 in the order of ``classes``. Returns (manifest rows, class names, versions).
    """
    chosen = [_class_index(c) for c in classes]
    if not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"fashion_mnist: classes must be a non-empty list of distinct classes, got {classes}")
    if per_class_train < 0 or per_class_test < 0 or per_class_train + per_class_test == 0:
        raise ValueError(
            f"fashion_mnist: per_class_train and per_class_test must be >= 0 and not both 0, "
            f"got {per_class_train} and {per_class_test}"
        )
    rng = np.random.default_rng(seed)
    images, rows = [], []
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        if per_class == 0:
            continue
        x, y = load_split(split, root)
        for label, original in enumerate(chosen):
            members = np.flatnonzero(y == original)
            if len(members) < per_class:
                raise ValueError(
                    f"fashion_mnist: {split} has {len(members)} images of class {original}, asked {per_class}")
            picked = np.sort(rng.choice(members, size=per_class, replace=False))
            images.append(x[picked])
            rows += [(f"fmnist-{split}-{i:05d}", label, CLASS_NAMES[original], split) for i in picked]
    df = pd.DataFrame(rows, columns=["id", "label", "label_name", "split"])
    df["group"] = df["id"]
    df["image_index"] = np.arange(len(df))
    np.save(work_dir / "images.npy", np.concatenate(images))
    root = Path(root)
    versions = {"fashion_mnist": {name: sha256_file(root / name) for pair in _FILES.values() for name in pair}}
    return df, [CLASS_NAMES[c] for c in chosen], versions
