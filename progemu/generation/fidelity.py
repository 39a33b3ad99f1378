"""How well the checkpoint's image tokenizer reconstructs an input, against its own validation figures.

A checkpoint knows only images like those its tokenizer and transformer were trained on. The first thing to go
wrong on anything else is the tokenizer: an input it cannot reconstruct (a real radiograph given to a tokenizer
trained on synthetic ones reconstructs at ~21-25 dB PSNR where its own validation images reach ~30 dB) comes back
as a different image, and the counterfactual is made from that. So every prior is encoded and decoded once, its
PSNR / SSIM are recorded, and an item far below the tokenizer's validation figures (stored in the VQ config as
``validation``, written when the tokenizer is trained or converted) gets a warning that says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

# "far below": under the 1st percentile of the tokenizer's validation images by this margin as well; what its
# own validation data reaches almost always passes, what it has never seen falls below
PSNR_MARGIN_DB = 1.0
SSIM_MARGIN = 0.03
PSNR_CAP_DB = 100.0  # an exact reconstruction (infinite PSNR) is recorded as this, so that JSON stays valid


def reconstruct(model: Any, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Encode -> decode (N, S, S) [0, 1] images with a ``ProgEmuVQModel``: reconstructions (N, S, S) in [0, 1] and
    codes (N, h, w)."""
    device = next(model.parameters()).device
    recs, codes = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i : i + batch_size])[:, None].to(device) * 2 - 1  # (B, 1, S, S)
            c = model.encode(x)
            recs.append(((model.decode(c).float().clamp(-1, 1) + 1) / 2)[:, 0].cpu().numpy())
            codes.append(c.cpu().numpy())
    return np.concatenate(recs), np.concatenate(codes)


def reconstruction_scores(image: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
    """PSNR (dB, at most `PSNR_CAP_DB`) and SSIM of (H, W) images in [0, 1] (data range 1), as the tokenizer's
    validation computes them."""
    a, b = np.clip(image, 0, 1).astype(np.float64), np.clip(reconstruction, 0, 1).astype(np.float64)
    psnr = min(peak_signal_noise_ratio(a, b, data_range=1.0), PSNR_CAP_DB) if not np.array_equal(a, b) else PSNR_CAP_DB
    return {"psnr": round(float(psnr), 3), "ssim": round(float(structural_similarity(a, b, data_range=1.0)), 4)}


def validation_figures(scores: list[dict[str, float]], data: str, image_size: int) -> dict[str, Any]:
    """The ``validation`` entry of a VQ config from per-image scores on held-out images of ``data``."""
    if not scores:
        raise ValueError("validation figures need at least one held-out image")
    psnr = np.array([s["psnr"] for s in scores], np.float64)
    ssim = np.array([s["ssim"] for s in scores], np.float64)
    return {"data": data, "image_size": int(image_size), "n_images": len(scores),
            "psnr": round(float(psnr.mean()), 3), "psnr_p01": round(float(np.percentile(psnr, 1)), 3),
            "ssim": round(float(ssim.mean()), 4), "ssim_p01": round(float(np.percentile(ssim, 1)), 4)}


def unfamiliar(scores: dict[str, float], validation: dict[str, Any] | None) -> str | None:
    """A warning when ``scores`` lie far below the tokenizer's ``validation`` figures, else None."""
    if not validation:
        return None
    low = []
    if "psnr_p01" in validation and scores["psnr"] < validation["psnr_p01"] - PSNR_MARGIN_DB:
        low.append(f"PSNR {scores['psnr']:.1f} dB (its validation images: {validation['psnr']:.1f} dB on average, "
                   f"99% above {validation['psnr_p01']:.1f})")
    if "ssim_p01" in validation and scores["ssim"] < validation["ssim_p01"] - SSIM_MARGIN:
        low.append(f"SSIM {scores['ssim']:.3f} (its validation images: {validation['ssim']:.3f} on average, "
                   f"99% above {validation['ssim_p01']:.3f})")
    if not low:
        return None
    return (f"the checkpoint's image tokenizer reconstructs this prior at {' and '.join(low)}: the input is unlike "
            f"what the checkpoint was trained on ({validation.get('data', 'unknown data')}); the counterfactual is "
            "made from a different image and is not to be trusted")
