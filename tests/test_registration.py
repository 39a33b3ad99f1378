"""Affine registration of a follow-up to its prior recovers a known shift and rotation."""

import cv2
import numpy as np
import pytest
from formats import chest

from progemu.data.registration import RegistrationError, register_affine


def textured(n: int, seed: int) -> np.ndarray:
    """A chest-like image with many blobs, so that every affine parameter is well constrained."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n] / n
    img = chest(n, n, seed).astype(np.float64)
    for _ in range(40):
        cx, cy, r = rng.uniform(0.05, 0.95, 2).tolist() + [rng.uniform(0.02, 0.06)]
        img += rng.uniform(0.2, 0.6) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    return (img / img.max()).astype(np.float32)


@pytest.mark.parametrize(("angle", "shift"), [(0.0, (7.0, -5.0)), (4.0, (3.0, 2.0)), (-3.0, (-6.0, 4.0))])
def test_known_affine_is_recovered(angle, shift):
    # Warp a larger scene and crop both images so that neither has empty borders.
    size, off = 128, 32
    scene = textured(size + 2 * off, seed=3)
    big = cv2.getRotationMatrix2D((size / 2 + off, size / 2 + off), angle, 1.0)  # (2, 3)
    big[:, 2] += shift
    moved = cv2.warpAffine(scene, big, scene.shape[::-1])  # moved(big @ p) = scene(p)
    prior, followup = scene[off:-off, off:-off], moved[off:-off, off:-off]  # followup(big @ p) = prior(p)
    truth = big.copy()  # the same map in the cropped coordinates: A @ (q + o) + t - o
    truth[:, 2] = big[:, :2] @ np.array([off, off]) + big[:, 2] - off
    registered, matrix = register_affine(followup, prior)
    assert matrix.shape == (2, 3) and registered.shape == prior.shape and registered.dtype == np.float32
    np.testing.assert_allclose(matrix[:, :2], truth[:, :2], atol=0.01)
    np.testing.assert_allclose(matrix[:, 2], truth[:, 2], atol=0.5)
    inner = (slice(16, -16), slice(16, -16))  # the borders hold pixels the follow-up never saw
    before = np.abs(followup - prior)[inner].mean()
    after = np.abs(registered - prior)[inner].mean()
    assert after < 0.1 * before and after < 0.01


def test_identity_for_identical_images_and_bad_input():
    img = chest(64, 64, seed=1)
    registered, matrix = register_affine(img, img)
    np.testing.assert_allclose(matrix, np.eye(2, 3), atol=1e-3)
    np.testing.assert_allclose(registered[4:-4, 4:-4], img[4:-4, 4:-4], atol=1e-3)
    with pytest.raises(ValueError):
        register_affine(img, img[:32])


def test_blank_images_raise_registration_error():
    blank = np.zeros((64, 64), np.float32)
    with pytest.raises(RegistrationError):
        register_affine(blank, blank)


def test_ingest_exposes_register_affine():
    from progemu.data import ingest

    assert ingest.register_affine is register_affine
