"""The VQ-VAE with and without Mixture-of-DAAM residual blocks (the DAAM blog's "Advanced Applications",
docs/paper-notes.md#7-vq-vae): pure nn.Modules, no data, files or training loop.

The blog leaves kernel sizes, block counts, β and the loss unstated; the choices below are the standard VQ-VAE ones
and are the same for both variants:

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
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from daamflow.models.daam import MixtureDAAM
from daamflow.vqvae.config import VQVAEConfig, check_variant
from daamflow.vqvae.metrics import codebook_perplexity


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
        check_variant(variant)
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
