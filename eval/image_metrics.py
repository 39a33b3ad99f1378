"""Image metrics: SSIM / PSNR, SSIM outside a region (context preservation), guidance-map IoU / AUROC,
Frechet distance of feature sets (gFID with the project's own classifier features), resizing helpers.

Images are float arrays in [0, 1] of shape (H, W); masks are boolean (H, W).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg, ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize


def fit(arr: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """``arr`` resized to ``shape`` (anti-aliased; order 0 for masks)."""
    if arr.shape == tuple(shape):
        return arr
    return resize(arr, shape, order=order, anti_aliasing=order > 0, preserve_range=True).astype(arr.dtype)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two [0, 1] images (skimage, 7x7 window)."""
    return float(structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=1.0))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two [0, 1] images; identical images give +inf (reported as such)."""
    if np.array_equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64), data_range=1.0))


def ssim_outside(a: np.ndarray, b: np.ndarray, region: np.ndarray, margin: int = 3) -> float | None:
    """Mean SSIM map outside ``region`` dilated by ``margin`` px (the SSIM window's half size), so that only
    windows that lie fully outside the region count (MedEBench's context preservation). None where nothing
    lies outside."""
    _, smap = structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=1.0, full=True)
    square = np.ones((2 * margin + 1, 2 * margin + 1), bool)  # the window is square: dilate by a square
    grown = ndimage.binary_dilation(region.astype(bool), structure=square) if margin and region.any() else region
    keep = ~grown.astype(bool)
    return float(smap[keep].mean()) if keep.any() else None


def mask_iou(pred: np.ndarray, true: np.ndarray) -> float:
    """IoU of two boolean masks; two empty masks give 1."""
    pred, true = pred.astype(bool), true.astype(bool)
    union = np.logical_or(pred, true).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, true).sum() / union)


def pixel_auroc(score: np.ndarray, true: np.ndarray) -> float | None:
    """AUROC of a per-pixel score against a boolean mask; None where the mask is all one class."""
    from sklearn.metrics import roc_auc_score

    t = true.astype(bool).ravel()
    if t.all() or not t.any():
        return None
    return float(roc_auc_score(t, score.ravel().astype(np.float64)))


def guidance_scores(guidance: np.ndarray, change: np.ndarray, threshold: float = 0.5) -> dict[str, float | None]:
    """IoU of the guidance map thresholded at ``threshold`` and its pixel AUROC against the true change mask."""
    g = fit(guidance.astype(np.float32), change.shape)
    return {"iou": mask_iou(g >= threshold, change), "auroc": pixel_auroc(g, change)}


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets (the FID formula)."""
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    cov_a = np.atleast_2d(np.cov(feats_a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(feats_b, rowvar=False))
    # tr sqrt(A B) = sum sqrt(eig(sqrt(A) B sqrt(A))): symmetric PSD, so stable even for the singular
    # covariances of small samples (where scipy's sqrtm warns and may return complex noise)
    w, v = linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_covmean)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """(H, W, 3) uint8: the grayscale image with ``heat`` in [0, 1] blended in red (InstructX2X's display);
    ``heat`` is resized to the image first. The blend is the generator's (`progemu.generation.guidance.overlay`)."""
    from progemu.generation.guidance import overlay as red_overlay

    return red_overlay(image.astype(np.float32), fit(heat.astype(np.float32), image.shape), alpha)
