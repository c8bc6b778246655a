"""The VQ-VAE's images: Fashion-MNIST (the CPU demo) or a folder pair of .jpg/.png files (COCO-2017 by default),
scaled to [0, 1], and the DataLoaders over them."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from daamflow.vqvae.config import DATASETS, VQVAEConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
COCO_HINT = (
    "COCO-2017 layout expected: IMAGE_DIR/train2017/*.jpg and IMAGE_DIR/val2017/*.jpg (download "
    "http://images.cocodataset.org/zips/train2017.zip and http://images.cocodataset.org/zips/val2017.zip and "
    "unzip both into IMAGE_DIR); any folder pair of .jpg/.png files works with train_subdir/test_subdir."
)


class ImageFolder(Dataset):
    """.jpg/.png files of one folder (sorted by name), RGB, shorter side resized to ``size``, centre-cropped, [0, 1]."""

    def __init__(self, folder: Path, size: int, limit: int | None = None) -> None:
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}. {COCO_HINT}")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no .jpg/.png images in {folder}. {COCO_HINT}")
        self.files, self.size = files[:limit], size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor]:
        from PIL import Image  # pillow comes with matplotlib

        with Image.open(self.files[i]) as im:
            im = im.convert("RGB")
            scale = self.size / min(im.size)
            w, h = max(self.size, round(im.width * scale)), max(self.size, round(im.height * scale))
            im = im.resize((w, h), Image.Resampling.BICUBIC)
            left, top = (w - self.size) // 2, (h - self.size) // 2
            im = im.crop((left, top, left + self.size, top + self.size))
            arr = np.asarray(im, dtype=np.float32) / 255.0
        return (torch.from_numpy(arr).permute(2, 0, 1).contiguous(),)


@functools.lru_cache(maxsize=2)  # several runs in one process (seeds, tests) decompress the IDX files once
def _fashion_mnist_images(split: str) -> np.ndarray:
    from daamflow.data.datasets.fashion_mnist import load_split

    images = load_split(split)[0]
    images.flags.writeable = False
    return images


def _fashion_mnist(split: str, size: int, limit: int | None) -> TensorDataset:
    images = _fashion_mnist_images(split)
    x = torch.tensor(images[:limit], dtype=torch.float32).div_(255.0).unsqueeze(1)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return TensorDataset(x)


def load_datasets(cfg: VQVAEConfig) -> tuple[Dataset, Dataset, int]:
    """(train, held-out test, image channels) for ``cfg.dataset``; each item is a 1-tuple (image,) in [0, 1]."""
    if cfg.dataset == "fashion_mnist":
        return (_fashion_mnist("train", cfg.image_size, cfg.train_images),
                _fashion_mnist("test", cfg.image_size, cfg.test_images), 1)
    if cfg.dataset == "image_dir":
        if not cfg.image_dir:
            raise ValueError(f"dataset='image_dir' needs image_dir (--image-dir). {COCO_HINT}")
        root = Path(cfg.image_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"image_dir {root} does not exist. {COCO_HINT}")
        return (ImageFolder(root / cfg.train_subdir, cfg.image_size, cfg.train_images),
                ImageFolder(root / cfg.test_subdir, cfg.image_size, cfg.test_images), 3)
    raise ValueError(f"dataset must be one of {DATASETS}, got {cfg.dataset!r}")


def loader(dataset: Dataset, cfg: VQVAEConfig, shuffle_seed: int | None, workers: int) -> DataLoader:
    """Batches of ``cfg.batch_size``, shuffled by a generator seeded with ``shuffle_seed`` (None: in order)."""
    generator = None
    if shuffle_seed is not None:
        generator = torch.Generator().manual_seed(shuffle_seed)
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=shuffle_seed is not None, generator=generator,
                      num_workers=workers)
