"""VQ-VAE with and without Mixture-of-DAAM residual blocks (the DAAM blog's "Advanced Applications", docs/paper-notes.md#7-vq-vae).

Architecture (the blog leaves kernel sizes, block counts, β and the loss unstated; the choices below are the
standard VQ-VAE ones and are the same for both variants):

- encoder: 3×3 conv (image → hidden_dims[0]), then one down-sampling block per entry of ``hidden_dims``:
  4×4 stride-2 conv → GroupNorm → ReLU → residual block; then a 1×1 conv to ``latent_dim`` channels.
  The latent grid is ``image_size / 2**len(hidden_dims)`` on a side (256 → 32 with the blog's three levels).
- residual block: ``relu(x + A(GN(conv3×3(relu(GN(conv3×3(x)))))))``. ``A`` is Mixture-of-DAAM on the channel axis
  (``norm_axis=1``; heads × Gaussians from the config; it returns ``h + h ⊙ mixture``) for the ``daam`` variant and the
  identity for ``plain``, so the variants differ by exactly 2 · heads · Gaussians parameters per residual block.
- vector quantiser: nearest codebook vector (``num_embeddings`` × ``latent_dim``), straight-through estimator,
  loss ``‖sg(z)−e‖² + β‖z−sg(e)‖²``; with ``ema=True`` the codebook follows exponential moving averages of its
  assigned encodings (no codebook loss term, no gradient to the codebook).
- decoder: 3×3 conv (latent → hidden_dims[-1]), the down-sampling blocks mirrored with 4×4 stride-2 transposed convs
  (channels hidden_dims reversed, the last block keeping hidden_dims[0]), then a 3×3 conv to the image channels.

Images are scaled to [0, 1]; the loss is pixel MSE + the quantiser loss. Evaluation clamps reconstructions to
[0, 1]. PSNR is computed per image with the MSE floored at 1e-10, so it is capped at 100 dB (identical images give
exactly 100 dB); SSIM uses an 11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, data range 1, valid
(unpadded) windows, averaged over pixels, channels and images (Wang et al. 2004).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import platform
import tempfile
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from daamflow.models.attention import MixtureDAAM
from daamflow.run.fit import read_checkpoint

log = logging.getLogger(__name__)

VARIANTS = ("plain", "daam")
DATASETS = ("fashion_mnist", "image_dir")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PSNR_MSE_FLOOR = 1e-10  # → PSNR cap of 100 dB for a data range of 1
COCO_HINT = (
    "COCO-2017 layout expected: IMAGE_DIR/train2017/*.jpg and IMAGE_DIR/val2017/*.jpg (download "
    "http://images.cocodataset.org/zips/train2017.zip and http://images.cocodataset.org/zips/val2017.zip and "
    "unzip both into IMAGE_DIR); any folder pair of .jpg/.png files works with train_subdir/test_subdir."
)


# ----------------------------------------------------------------------------------------------------------------
# Hyper-parameters


@dataclass
class VQVAEConfig:
    """Everything that determines a run's numbers except the seed and the variant. Defaults = the DAAM blog."""

    hidden_dims: list[int] = field(default_factory=lambda: [128, 256, 512])
    latent_dim: int = 256  # encoder output channels = codebook embedding dim
    num_embeddings: int = 1024
    commitment_cost: float = 0.25  # β: not stated in the blog; the VQ-VAE paper's value
    ema: bool = False  # EMA codebook updates instead of the codebook loss
    ema_decay: float = 0.99
    daam_heads: int = 4
    daam_gaussians: int = 3
    norm_groups: int = 8  # GroupNorm groups; must divide every hidden dim
    dataset: str = "image_dir"  # "image_dir" (COCO-2017 layout by default) or "fashion_mnist"
    image_dir: str | None = None
    train_subdir: str = "train2017"
    test_subdir: str = "val2017"
    image_size: int = 256
    train_images: int | None = None  # first N images of the training split (None: all)
    test_images: int | None = None  # first N images of the held-out split (None: all)
    lr: float = 3e-4
    batch_size: int = 32
    epochs: int = 176

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (whether image_dir exists is checked when loading)."""
        if not self.hidden_dims or any(int(h) < 1 for h in self.hidden_dims):
            raise ValueError(f"hidden_dims must be a non-empty list of positive ints, got {self.hidden_dims!r}")
        for h in self.hidden_dims:
            if h % self.norm_groups:
                raise ValueError(f"norm_groups={self.norm_groups} must divide every hidden dim, got {self.hidden_dims}")
            if h < self.daam_heads:
                raise ValueError(f"daam_heads={self.daam_heads} exceeds the hidden dim {h}: every head needs a channel")
        for name in ("latent_dim", "num_embeddings", "daam_heads", "daam_gaussians", "norm_groups", "image_size",
                     "batch_size", "epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        for name in ("train_images", "test_images"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int or null (all images), got {getattr(self, name)!r}")
        if self.image_size % 2 ** len(self.hidden_dims):
            raise ValueError(
                f"image_size={self.image_size} must be divisible by 2**len(hidden_dims)={2 ** len(self.hidden_dims)}"
            )
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.lr <= 0 or self.commitment_cost < 0:
            raise ValueError(f"lr must be > 0 and commitment_cost >= 0, got {self.lr}, {self.commitment_cost}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: VQVAEConfig | None = None) -> VQVAEConfig:
        """``base`` (default: the blog config) updated with ``values``; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown VQ-VAE hyper-parameter(s) {unknown}; known: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        return dataclasses.replace(base or cls(), **{k: _checked(k, hints[k], v) for k, v in values.items()})


def _checked(name: str, hint: Any, value: Any) -> Any:
    """``value`` if it fits the field's type hint (ints are accepted for floats), else a ValueError naming the field."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if typing.get_origin(option) is list:
            if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                return list(value)
        elif option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        elif option in (int, str, bool) and isinstance(value, option):
            if option is bool or not isinstance(value, bool):  # bool is an int subclass: reject True for an int
                return value
    expected = hint.__name__ if isinstance(hint, type) else str(hint)
    raise ValueError(f"hyper-parameter {name} must be {expected}, got {value!r}")


PRESETS: dict[str, VQVAEConfig] = {
    "blog": VQVAEConfig(),
    # One run: 5–12 s of training + evaluation on one CPU core (11–20 s per process with imports, shared 2-core box).
    "demo": VQVAEConfig(
        hidden_dims=[16, 32], latent_dim=16, num_embeddings=64, dataset="fashion_mnist", image_size=32,
        train_images=512, test_images=128, batch_size=32, epochs=3,
    ),
}


# ----------------------------------------------------------------------------------------------------------------
# Model


class ResidualBlock(nn.Module):
    """``relu(x + attention(body(x)))``; ``attention`` is Mixture-of-DAAM (variant daam) or the identity (plain)."""

    def __init__(self, channels: int, groups: int, attention: nn.Module | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(groups, channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(groups, channels),
        )
        self.attention = attention if attention is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.attention(self.body(x)))


def _residual(channels: int, cfg: VQVAEConfig, variant: str) -> ResidualBlock:
    attention = None
    if variant == "daam":  # channel axis, as the blog: norm_axis=1 on (B, C, H, W)
        attention = MixtureDAAM(num_heads=cfg.daam_heads, num_gaussians=cfg.daam_gaussians, norm_axis=1)
    return ResidualBlock(channels, cfg.norm_groups, attention)


def _scale_block(conv: nn.Module, channels: int, cfg: VQVAEConfig, variant: str) -> nn.Sequential:
    return nn.Sequential(conv, nn.GroupNorm(cfg.norm_groups, channels), nn.ReLU(), _residual(channels, cfg, variant))


class Encoder(nn.Module):
    def __init__(self, in_channels: int, cfg: VQVAEConfig, variant: str) -> None:
        super().__init__()
        dims = [cfg.hidden_dims[0], *cfg.hidden_dims]
        self.stem = nn.Conv2d(in_channels, dims[0], 3, padding=1)
        self.down = nn.Sequential(*(
            _scale_block(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), c_out, cfg, variant)
            for c_in, c_out in zip(dims[:-1], dims[1:])
        ))
        self.to_latent = nn.Conv2d(dims[-1], cfg.latent_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.down(self.stem(x)))


class Decoder(nn.Module):
    def __init__(self, out_channels: int, cfg: VQVAEConfig, variant: str) -> None:
        super().__init__()
        dims = [*reversed(cfg.hidden_dims), cfg.hidden_dims[0]]
        self.stem = nn.Conv2d(cfg.latent_dim, dims[0], 3, padding=1)
        self.up = nn.Sequential(*(
            _scale_block(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), c_out, cfg, variant)
            for c_in, c_out in zip(dims[:-1], dims[1:])
        ))
        self.to_image = nn.Conv2d(dims[-1], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.to_image(self.up(self.stem(z)))


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor  # (B, D, h, w), straight-through: forward = codebook vectors, gradient = identity
    loss: torch.Tensor  # codebook + β · commitment (β · commitment only with EMA)
    indices: torch.Tensor  # (B, h, w) int64
    perplexity: torch.Tensor  # of this batch's code usage


def codebook_perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the code-usage distribution given per-code counts: k codes used equally → k; one code → 1."""
    p = counts.double() / counts.sum().clamp(min=1)
    return torch.exp(-torch.special.xlogy(p, p).sum()).to(torch.float32)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantiser (van den Oord et al. 2017), optionally with EMA codebook updates."""

    def __init__(self, num_embeddings: int, embedding_dim: int, commitment_cost: float = 0.25, ema: bool = False,
                 decay: float = 0.99, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.commitment_cost, self.ema, self.decay, self.eps = commitment_cost, ema, decay, eps
        init = torch.empty(num_embeddings, embedding_dim).uniform_(-1.0 / num_embeddings, 1.0 / num_embeddings)
        self.codebook = nn.Parameter(init, requires_grad=not ema)
        if ema:
            self.register_buffer("ema_count", torch.zeros(num_embeddings))
            self.register_buffer("ema_sum", init.clone())

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        b, d, h, w = z.shape
        if d != self.embedding_dim:
            raise ValueError(f"VectorQuantizer expects {self.embedding_dim} channels, got shape {tuple(z.shape)}")
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        distances = (flat.square().sum(1, keepdim=True) - 2 * flat @ self.codebook.t()
                     + self.codebook.square().sum(1))
        indices = distances.argmin(1)
        if self.ema and self.training:
            self._ema_update(flat.detach(), indices)
        quantized = F.embedding(indices, self.codebook).view(b, h, w, d).permute(0, 3, 1, 2)
        loss = self.commitment_cost * F.mse_loss(z, quantized.detach())
        if not self.ema:
            loss = loss + F.mse_loss(quantized, z.detach())
        counts = torch.bincount(indices, minlength=self.num_embeddings)
        quantized = z + (quantized - z).detach()  # straight-through estimator
        return QuantizerOutput(quantized, loss, indices.view(b, h, w), codebook_perplexity(counts))

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        counts = torch.bincount(indices, minlength=self.num_embeddings).to(flat.dtype)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, flat)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.ema_count.sum()  # Laplace smoothing keeps unused codes from dividing by zero
        smoothed = (self.ema_count + self.eps) / (n + self.num_embeddings * self.eps) * n
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))


class VQVAEOutput(NamedTuple):
    reconstruction: torch.Tensor
    vq_loss: torch.Tensor
    indices: torch.Tensor
    perplexity: torch.Tensor


class VQVAE(nn.Module):
    """Encoder → VectorQuantizer → Decoder; ``variant`` = "plain" or "daam" (Mixture-of-DAAM residual blocks)."""

    def __init__(self, cfg: VQVAEConfig, variant: str, in_channels: int) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        cfg.validate()
        self.variant = variant
        self.encoder = Encoder(in_channels, cfg, variant)
        self.quantizer = VectorQuantizer(cfg.num_embeddings, cfg.latent_dim, cfg.commitment_cost, cfg.ema,
                                         cfg.ema_decay)
        self.decoder = Decoder(in_channels, cfg, variant)

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        q = self.quantizer(self.encoder(x))
        return VQVAEOutput(self.decoder(q.quantized), q.loss, q.indices, q.perplexity)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total, trainable (requires_grad), Mixture-of-DAAM and codebook parameter counts."""
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "daam": sum(p.numel() for m in model.modules() if isinstance(m, MixtureDAAM) for p in m.parameters()),
        "codebook": sum(p.numel() for m in model.modules() if isinstance(m, VectorQuantizer) for p in m.parameters()),
    }


# ----------------------------------------------------------------------------------------------------------------
# Image quality metrics


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB for (B, C, H, W) tensors; MSE floored at 1e-10 (identical images → 100 dB for range 1)."""
    mse = (x - y).square().flatten(1).mean(1).clamp(min=PSNR_MSE_FLOOR)
    return 10 * torch.log10(data_range ** 2 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    g = torch.exp(-(torch.arange(size, dtype=torch.float64) - (size - 1) / 2).square() / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5
         ) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) of (B, C, H, W) tensors: Gaussian window, valid positions, channel mean.

    Images smaller than the window use the largest odd window that fits. Computed in float64: the variances are
    differences of moments (E[x²] − E[x]²), which lose ~1e-4 of SSIM to cancellation in float32.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim expects two (B, C, H, W) tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    size = min(window, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2
    c = x.shape[1]
    kernel = _gaussian_window(size, sigma).to(x.device)[None, None].expand(c, 1, size, size)
    dtype = x.dtype
    x, y = x.to(torch.float64), y.to(torch.float64)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1).to(dtype)


# ----------------------------------------------------------------------------------------------------------------
# Data


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


# ----------------------------------------------------------------------------------------------------------------
# Training and evaluation


@torch.no_grad()
def evaluate(model: VQVAE, loader: DataLoader, device: torch.device | str = "cpu", keep: int = 0) -> dict[str, Any]:
    """Held-out metrics; reconstructions clamped to [0, 1]. ``keep`` first images are returned under "samples".

    mse is the mean over all pixels; psnr and ssim are means of per-image values; perplexity and usage are over the
    whole split's code assignments.
    """
    model.eval()
    k = model.quantizer.num_embeddings
    counts = torch.zeros(k, dtype=torch.long)
    sq_err = psnr_sum = ssim_sum = 0.0
    n_img = n_px = 0
    originals, recons = [], []
    for (x,) in loader:
        x = x.to(device)
        out = model(x)
        r = out.reconstruction.clamp(0.0, 1.0)
        sq_err += (r - x).square().sum().item()
        psnr_sum += psnr(r, x).sum().item()
        ssim_sum += ssim(r, x).sum().item()
        n_img, n_px = n_img + x.shape[0], n_px + x.numel()
        counts += torch.bincount(out.indices.flatten().cpu(), minlength=k)
        if sum(len(o) for o in originals) < keep:
            originals.append(x.cpu())
            recons.append(r.cpu())
    used = int((counts > 0).sum())
    result = {
        "mse": sq_err / n_px, "psnr": psnr_sum / n_img, "ssim": ssim_sum / n_img,
        "perplexity": float(codebook_perplexity(counts)), "codes_used": used, "codebook_usage": used / k,
        "n_images": n_img,
    }
    if keep:
        result["samples"] = (torch.cat(originals)[:keep].numpy(), torch.cat(recons)[:keep].numpy())
    return result


def _train_epoch(model: VQVAE, loader: DataLoader, optimizer: torch.optim.Optimizer, device: torch.device | str,
                 desc: str) -> dict[str, float]:
    from tqdm.auto import tqdm

    model.train()
    totals = {"train_loss": 0.0, "train_recon_mse": 0.0, "train_vq_loss": 0.0, "train_perplexity": 0.0}
    n = 0
    for (x,) in tqdm(loader, desc=desc, leave=False, disable=None):
        x = x.to(device)
        out = model(x)
        recon = F.mse_loss(out.reconstruction, x)
        loss = recon + out.vq_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for key, value in zip(totals, (loss, recon, out.vq_loss, out.perplexity)):
            totals[key] += value.item() * x.shape[0]
        n += x.shape[0]
    return {key: value / n for key, value in totals.items()}


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(tmp)`` to a temp file beside ``path``, then rename (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: Any) -> None:
    _atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def _loader(dataset: Dataset, cfg: VQVAEConfig, shuffle_seed: int | None, workers: int) -> DataLoader:
    generator = None
    if shuffle_seed is not None:
        generator = torch.Generator().manual_seed(shuffle_seed)
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=shuffle_seed is not None, generator=generator,
                      num_workers=workers)


def train_run(cfg: VQVAEConfig, variant: str, seed: int, out_dir: Path | str, *, device: str = "cpu",
              threads: int | None = 1, workers: int = 0, stop_after_epochs: int | None = None,
              grid_images: int = 8) -> dict[str, Any] | None:
    """Train one variant with one seed, checkpointing every epoch to ``out_dir/checkpoint.pt``, then evaluate.

    An existing checkpoint in ``out_dir`` with the same config, variant and seed is resumed from its next epoch
    (on CPU the final numbers equal those of an uninterrupted run: the shuffling of epoch e is seeded by (seed, e)).
    ``stop_after_epochs`` ends this call after that many epochs (e.g. a job's time slice) and returns None.
    Returns the metrics written to ``out_dir/metrics.json``.
    """
    cfg.validate()
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if threads:
        torch.set_num_threads(threads)
    train_set, test_set, channels = load_datasets(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = VQVAE(cfg, variant, channels).to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    test_loader = _loader(test_set, cfg, None, workers)
    identity = {"config": dataclasses.asdict(cfg), "variant": variant, "seed": seed}

    ckpt_path = out / "checkpoint.pt"
    history: list[dict[str, float]] = []
    start_epoch, wall = 1, 0.0
    state = read_checkpoint(ckpt_path, variant)
    if state is not None:
        mismatched = [k for k in identity if state["identity"][k] != identity[k]]
        if mismatched:
            raise ValueError(
                f"{ckpt_path} belongs to a run with a different {', '.join(mismatched)}; "
                "delete it or choose another --out"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, wall, start_epoch = state["history"], state["wall_time_s"], state["epoch"] + 1
        log.info("resuming %s from epoch %d (%s)", variant, start_epoch, ckpt_path)
    else:
        t0 = time.perf_counter()
        history.append({"epoch": 0, **_epoch_eval(model, test_loader, device)})  # the untrained model, for the curve
        wall += time.perf_counter() - t0

    done_now = 0
    for epoch in range(start_epoch, cfg.epochs + 1):
        if stop_after_epochs is not None and done_now >= stop_after_epochs:
            log.info("stopping after %d epoch(s) as asked; rerun to resume at epoch %d", done_now, epoch)
            return None
        t0 = time.perf_counter()
        loader = _loader(train_set, cfg, seed * 100_003 + epoch, workers)
        row = {"epoch": epoch, **_train_epoch(model, loader, optimizer, device, f"{variant} s{seed} e{epoch}")}
        row.update(_epoch_eval(model, test_loader, device))
        wall += time.perf_counter() - t0
        history.append(row)
        log.info("%s seed %d epoch %d/%d: train loss %.5f, recon %.5f, perplexity %.1f; test mse %.5f, psnr %.2f",
                 variant, seed, epoch, cfg.epochs, row["train_loss"], row["train_recon_mse"],
                 row["train_perplexity"], row["test_mse"], row["test_psnr"])
        state = {"identity": identity, "epoch": epoch, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "history": history, "wall_time_s": wall}
        _atomic(ckpt_path, lambda p: torch.save(state, p))
        done_now += 1

    t0 = time.perf_counter()
    final = evaluate(model, test_loader, device, keep=grid_images)
    originals, recons = final.pop("samples")
    wall += time.perf_counter() - t0
    metrics = {
        **identity,
        "metrics": final,
        "final_train": {k: v for k, v in history[-1].items() if k.startswith("train_")},
        "parameters": parameter_counts(model),
        "n_train": len(train_set), "n_test": len(test_set), "image_channels": channels,
        "epochs_run": len(history) - 1, "wall_time_s": wall, "device": str(device),
        "torch_version": torch.__version__, "python_version": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }
    _atomic(out / "model.pt", lambda p: torch.save({"identity": identity, "model": model.state_dict()}, p))
    _atomic(out / "samples.npz", lambda p: np.savez_compressed(p, originals=originals, reconstructions=recons))
    _write_history(out / "history.csv", history)
    _plot_history(out / "loss_curves.png", history, f"VQ-VAE {variant}, seed {seed}")
    _plot_grid(out / "reconstructions.png", originals, [(f"{variant} reconstructions", recons)])
    _write_json(out / "metrics.json", metrics)
    log.info("%s seed %d: test mse %.5f, psnr %.2f dB, ssim %.4f, perplexity %.1f, usage %.2f (%s)", variant, seed,
             final["mse"], final["psnr"], final["ssim"], final["perplexity"], final["codebook_usage"], out)
    return metrics


def _epoch_eval(model: VQVAE, loader: DataLoader, device: torch.device | str) -> dict[str, float]:
    m = evaluate(model, loader, device)
    return {f"test_{k}": m[k] for k in ("mse", "psnr", "ssim", "perplexity", "codebook_usage")}


# ----------------------------------------------------------------------------------------------------------------
# Outputs: history, figures, combined table


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    import pandas as pd

    _atomic(path, lambda p: pd.DataFrame(history).to_csv(p, index=False))


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_history(path: Path, history: list[dict[str, float]], title: str) -> None:
    plt = _figure()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(10, 3.6))
    trained = [r for r in history if "train_loss" in r]
    for key, label in (("train_loss", "train loss (recon + VQ)"), ("train_recon_mse", "train recon MSE")):
        ax_loss.plot([r["epoch"] for r in trained], [r[key] for r in trained], marker="o", label=label)
    ax_loss.plot(epochs, [r["test_mse"] for r in history], marker="s", label="held-out recon MSE (clamped)")
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log", title=title)
    ax_loss.legend(fontsize=8)
    ax_ppl.plot(epochs, [r["test_perplexity"] for r in history], marker="s", color="C3")
    ax_ppl.set(xlabel="epoch", ylabel="held-out codebook perplexity", title="codebook perplexity")
    fig.tight_layout()
    _atomic(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


def _plot_grid(path: Path, originals: np.ndarray, rows: list[tuple[str, np.ndarray]]) -> None:
    """Originals in the first row, one row per (label, reconstructions) below; one mosaic image (fast to draw)."""
    plt = _figure()
    all_rows = [("originals", originals), *rows]
    n, c, h, w = originals.shape
    pad = 2
    mosaic = np.ones((len(all_rows) * (h + pad) - pad, n * (w + pad) - pad, c), dtype=np.float32)
    for r, (_, images) in enumerate(all_rows):
        for i in range(n):
            top, left = r * (h + pad), i * (w + pad)
            mosaic[top:top + h, left:left + w] = np.clip(images[i], 0, 1).transpose(1, 2, 0)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * n + 1.5), 0.9 * len(all_rows) + 0.3))
    ax.imshow(mosaic[..., 0] if c == 1 else mosaic, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * (h + pad) + h / 2 for r in range(len(all_rows))], [label for label, _ in all_rows], fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.tight_layout()
    _atomic(path, lambda p: fig.savefig(p, format="png", dpi=150))
    plt.close(fig)


TABLE_METRICS = {  # key in metrics.json "metrics" -> (column title, format)
    "mse": ("recon MSE", ".5f"), "psnr": ("PSNR (dB)", ".2f"), "ssim": ("SSIM", ".4f"),
    "perplexity": ("perplexity", ".1f"), "codebook_usage": ("codebook usage", ".3f"),
}


def _load_runs(run_dirs: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for d in run_dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {d} a finished `daamflow vqvae train` output folder?")
        runs.append({**json.loads(path.read_text()), "dir": Path(d)})
    reference = runs[0]["config"]
    for run in runs[1:]:  # averaging or comparing runs trained differently would be meaningless
        diff = sorted(k for k in reference if run["config"].get(k) != reference[k])
        if diff:
            raise ValueError(f"{run['dir']} differs from {runs[0]['dir']} in hyper-parameter(s) {diff}")
    return runs


def summarize_runs(run_dirs: list[Path | str]):
    """One row per variant: seeds, parameter counts, and mean/std (population, ddof=0) of every held-out metric.

    Returns a pandas DataFrame (columns ``<metric>_mean``, ``<metric>_std``).
    """
    import pandas as pd

    runs = _load_runs([Path(d) for d in run_dirs])
    rows = []
    for variant in [v for v in VARIANTS if any(r["variant"] == v for r in runs)]:
        group = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["seed"])
        row: dict[str, Any] = {
            "variant": variant, "n_runs": len(group), "seeds": " ".join(str(r["seed"]) for r in group),
            "params_total": group[0]["parameters"]["total"], "params_daam": group[0]["parameters"]["daam"],
        }
        for key in [*TABLE_METRICS, "wall_time_s"]:
            values = np.array([r["metrics"][key] if key in r["metrics"] else r[key] for r in group], dtype=float)
            row[f"{key}_mean"], row[f"{key}_std"] = values.mean(), values.std(ddof=0)
        rows.append(row)
    return pd.DataFrame(rows)


def _markdown(df) -> str:
    import pandas as pd

    table = pd.DataFrame({
        "variant": df["variant"], "runs": df["n_runs"], "params": df["params_total"].map("{:,}".format),
        "DAAM params": df["params_daam"].map("{:,}".format),
        **{title: [f"{m:{fmt}} ± {s:{fmt}}" for m, s in zip(df[f"{k}_mean"], df[f"{k}_std"])]
           for k, (title, fmt) in TABLE_METRICS.items()},
        "wall time (s)": [f"{m:.1f} ± {s:.1f}" for m, s in zip(df["wall_time_s_mean"], df["wall_time_s_std"])],
    })
    return table.to_markdown(index=False) + "\n\nmean ± population std over seeds; held-out split.\n"


def comparison_grid(run_dirs: list[Path | str], out_png: Path | str) -> None:
    """Originals, then one reconstruction row per variant (its lowest-seed run), for the same held-out images."""
    runs = _load_runs([Path(d) for d in run_dirs])
    rows, originals = [], None
    for variant in VARIANTS:
        group = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["seed"])
        if not group:
            continue
        with np.load(group[0]["dir"] / "samples.npz") as samples:
            if originals is None:
                originals = samples["originals"]
            elif not np.array_equal(originals, samples["originals"]):
                raise ValueError(f"{group[0]['dir']} holds different held-out images than the other variant's run")
            rows.append((f"{variant} (seed {group[0]['seed']})", samples["reconstructions"]))
    _plot_grid(Path(out_png), originals, rows)


def write_table(run_dirs: list[Path | str], out_csv: Path | str, out_md: Path | str,
                grid_out: Path | str | None = None):
    """Write the plain-vs-DAAM table as CSV (numbers) and Markdown (mean ± std); optionally the comparison grid."""
    df = summarize_runs(run_dirs)
    _atomic(Path(out_csv), lambda p: df.to_csv(p, index=False))
    _atomic(Path(out_md), lambda p: p.write_text(_markdown(df)))
    if grid_out is not None:
        comparison_grid(run_dirs, grid_out)
    return df


# ----------------------------------------------------------------------------------------------------------------
# CLI


def _flag_type(hint: Any) -> dict[str, Any]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(hint) is list:
        return {"type": args[0], "nargs": "+"}
    return {"type": args[0] if args else hint}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="vqvae_command", metavar="{train,table}", required=True)
    train = sub.add_parser("train", help="train and evaluate one variant with one seed",
                           description="Train one VQ-VAE variant, checkpointing every epoch (a rerun resumes), and "
                           "write metrics.json, history.csv, loss_curves.png, reconstructions.png, samples.npz.")
    train.add_argument("--variant", choices=VARIANTS, required=True)
    train.add_argument("--seed", type=int, required=True)
    train.add_argument("--out", type=Path, required=True, help="output folder of this run")
    train.add_argument("--preset", choices=sorted(PRESETS), default="blog",
                       help="starting hyper-parameters (blog: the DAAM blog's COCO setup; demo: tiny Fashion-MNIST)")
    train.add_argument("--params-json", help="hyper-parameters over the preset: a JSON object, inline or a file")
    train.add_argument("--device", default="cpu", help="torch device (default cpu)")
    train.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    train.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    train.add_argument("--stop-after-epochs", type=int, help="leave after N epochs of this call (resume later)")
    hp = train.add_argument_group("hyper-parameters (override preset and --params-json)")
    blog = dataclasses.asdict(PRESETS["blog"])
    for f, hint in typing.get_type_hints(VQVAEConfig).items():
        extra = _flag_type(hint) | ({"choices": DATASETS} if f == "dataset" else {})
        if "action" not in extra:
            extra["metavar"] = f.upper()
        hp.add_argument(f"--{f.replace('_', '-')}", dest=f"hp_{f}", default=None, help=f"blog: {blog[f]}", **extra)
    table = sub.add_parser("table", help="combine runs: plain vs DAAM, mean ± std over seeds",
                           description="Combine finished runs into a plain-vs-DAAM table (CSV + Markdown) and a grid.")
    table.add_argument("--runs", type=Path, nargs="+", required=True, help="run folders (each with metrics.json)")
    table.add_argument("--out-csv", type=Path, required=True)
    table.add_argument("--out-md", type=Path, required=True)
    table.add_argument("--grid-out", type=Path, help="PNG: originals and both variants' reconstructions")


def config_from_args(args: argparse.Namespace) -> VQVAEConfig:
    """Preset ← --params-json ← explicit hyper-parameter flags."""
    cfg = PRESETS[args.preset]
    if args.params_json is not None:
        from daamflow.config import read_settings

        cfg = VQVAEConfig.from_dict(read_settings(args.params_json), cfg)
    flags = {k[3:]: v for k, v in vars(args).items() if k.startswith("hp_") and v is not None}
    return VQVAEConfig.from_dict(flags, cfg)


def main(args: argparse.Namespace) -> int:
    if args.vqvae_command == "train":
        train_run(config_from_args(args), args.variant, args.seed, args.out, device=args.device,
                  threads=args.threads, workers=args.workers, stop_after_epochs=args.stop_after_epochs)
        return 0
    df = write_table(args.runs, args.out_csv, args.out_md, args.grid_out)
    print(_markdown(df))
    return 0
