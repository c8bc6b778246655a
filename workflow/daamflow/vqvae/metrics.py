"""Image-quality and codebook metrics of the VQ-VAE (docs/paper-notes.md#7-vq-vae).

PSNR is computed per image with the MSE floored at 1e-10, so it is capped at 100 dB (identical images give exactly
100 dB); SSIM uses an 11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, data range 1, valid (unpadded) windows,
averaged over pixels and channels (Wang et al. 2004); perplexity is exp(entropy) of the code usage.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PSNR_MSE_FLOOR = 1e-10  # → PSNR cap of 100 dB for a data range of 1


def codebook_perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the code-usage distribution given per-code counts: k codes used equally → k; one code → 1."""
    p = counts.double() / counts.sum().clamp(min=1)
    return torch.exp(-torch.special.xlogy(p, p).sum()).to(torch.float32)


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
