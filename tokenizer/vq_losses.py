"""Losses and monitors for training the VQ tokenizer; none needs downloaded weights.

- ``ssim``: differentiable SSIM (Gaussian window 11, sigma 1.5, as Wang et al. 2004) for the structural loss.
- ``gradient_loss``: L1 between image gradients (edges: rib borders, costophrenic angles).
- ``PatchDiscriminator`` + hinge losses: the optional patch-GAN after a warm-up (VQGAN).
- ``CodeUsage``: running histogram of codes -> share of the codebook used and perplexity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _gaussian_window(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two (B, 1, H, W) batches (``data_range`` 2 for [-1, 1] pixels); valid-window, like skimage."""
    w = _gaussian_window(size, sigma, x.device, x.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mu_x**2
    syy = F.conv2d(y * y, w) - mu_y**2
    sxy = F.conv2d(x * y, w) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean()


def gradient_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences of two (B, 1, H, W) batches."""
    dx = (x[..., :, 1:] - x[..., :, :-1]) - (y[..., :, 1:] - y[..., :, :-1])
    dy = (x[..., 1:, :] - x[..., :-1, :]) - (y[..., 1:, :] - y[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / VQGAN): a few strided convs -> one real/fake logit per ~70 px patch."""

    def __init__(self, in_channels: int = 1, channels: int = 64, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            mods += [nn.Conv2d(ch, out, 4, stride, 1), nn.GroupNorm(8, out), nn.LeakyReLU(0.2)]
            ch = out
        mods.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, 1, h', w') logits
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


class CodeUsage:
    """Histogram of the codes seen since the last ``reset``: share of the codebook used and perplexity."""

    def __init__(self, codebook_size: int):
        self.codebook_size = codebook_size
        self.counts = torch.zeros(codebook_size, dtype=torch.float64)

    def update(self, codes: torch.Tensor) -> None:
        self.counts += torch.bincount(codes.detach().flatten().cpu(), minlength=self.codebook_size).double()

    def reset(self) -> None:
        self.counts.zero_()

    def stats(self) -> dict[str, float]:
        total = float(self.counts.sum())
        if total == 0:
            return {"usage": 0.0, "perplexity": 0.0}
        p = self.counts / total
        nz = p[p > 0]
        return {"usage": float((self.counts > 0).double().mean()), "perplexity": float(torch.exp(-(nz * nz.log()).sum()))}
