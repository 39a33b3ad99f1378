"""Optional affine registration of a follow-up chest X-ray to its prior (OpenCV's ECC maximisation).

ICG-CXR ships registered pairs; MIMIC-EDIT-INSTRUCTION does not. Usage::

    from progemu.data.ingest import load_image
    from progemu.data.registration import register_affine
    registered, matrix = register_affine(load_image(followup), load_image(prior))

``matrix`` (2x3, float64, full-resolution pixel coordinates) maps a point ``(x, y)`` of the prior to the
follow-up: ``registered[y, x] = moving[matrix @ (x, y, 1)]``, which is OpenCV's ``WARP_INVERSE_MAP`` convention.
"""

from __future__ import annotations

import numpy as np

from progemu.errors import ProgEmuError


class RegistrationError(ProgEmuError):
    """ECC did not converge (e.g. unrelated or blank images)."""


def register_affine(
    moving: np.ndarray,
    fixed: np.ndarray,
    *,
    levels: int = 3,
    min_side: int = 32,
    iterations: int = 200,
    eps: float = 1e-6,
    motion: str = "affine",
) -> tuple[np.ndarray, np.ndarray]:
    """Align ``moving`` (follow-up, ``(H, W)`` float in [0, 1]) to ``fixed`` (prior, same shape).

    Coarse-to-fine: ECC runs on a Gaussian pyramid of up to ``levels`` levels (never below ``min_side``
    pixels), each level starting from the previous estimate, which captures shifts of many pixels.
    ``motion`` is ``"affine"`` (6 parameters), ``"euclidean"`` (rotation + shift) or ``"translation"``.
    Returns ``(registered, matrix)``: ``registered`` float32 ``(H, W)`` (outside the follow-up = 0).
    Raises ``RegistrationError`` when ECC fails to converge.
    """
    import cv2

    motions = {"affine": cv2.MOTION_AFFINE, "euclidean": cv2.MOTION_EUCLIDEAN, "translation": cv2.MOTION_TRANSLATION}
    if motion not in motions:
        raise ValueError(f"motion must be one of {sorted(motions)}, got {motion!r}")
    moving = np.ascontiguousarray(moving, dtype=np.float32)
    fixed = np.ascontiguousarray(fixed, dtype=np.float32)
    if moving.ndim != 2 or moving.shape != fixed.shape:
        raise ValueError(f"expected two 2-D arrays of one shape, got {moving.shape} and {fixed.shape}")

    pyr_fixed, pyr_moving = [fixed], [moving]
    while len(pyr_fixed) < levels and min(pyr_fixed[-1].shape) // 2 >= min_side:
        pyr_fixed.append(cv2.pyrDown(pyr_fixed[-1]))
        pyr_moving.append(cv2.pyrDown(pyr_moving[-1]))

    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, eps)
    for level in range(len(pyr_fixed) - 1, -1, -1):
        if level != len(pyr_fixed) - 1:
            # pyrDown halves (rounding up); scale the shift from the coarser level to this one.
            sy = pyr_fixed[level].shape[0] / pyr_fixed[level + 1].shape[0]
            sx = pyr_fixed[level].shape[1] / pyr_fixed[level + 1].shape[1]
            warp[0, 2] *= sx
            warp[1, 2] *= sy
        try:
            _, warp = cv2.findTransformECC(pyr_fixed[level], pyr_moving[level], warp, motions[motion], criteria, None, 5)
        except cv2.error as err:
            raise RegistrationError(f"affine registration did not converge at pyramid level {level}: {err}") from err

    h, w = fixed.shape
    registered = cv2.warpAffine(moving, warp, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return registered.astype(np.float32), warp.astype(np.float64)
