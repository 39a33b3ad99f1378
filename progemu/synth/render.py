"""From anatomy + findings to a radiograph: attenuation of a study, then an acquisition (pose, exposure, blur, noise).

The pose is applied by resampling the canonical attenuation map, so one study can be "acquired" twice: with
its own acquisition (the real follow-up) and with the prior's (the exact counterfactual).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from progemu.findings import FINDING_KEYS
from progemu.synth.anatomy import LungFields, Patient, grid, lung_fields
from progemu.synth.findings import CTR_BY_SEVERITY, FindingState, Layers, render_findings, severity_index
from progemu.synth.static import StaticLayers

LUNG_AIR = 0.58  # attenuation removed by aerated lung
VESSEL = 0.2
HEART = 0.03


@dataclass(frozen=True)
class Acquisition:
    """How one study was taken: pose (shift in normalised units, rotation in degrees, scale) and exposure."""

    dx: float
    dy: float
    rotation: float
    scale: float
    exposure: float
    contrast: float
    brightness: float
    gamma: float
    blur: float  # Gaussian sigma in pixels at 256 px
    noise: float  # per-pixel noise standard deviation at mid grey
    noise_seed: int

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def sample_acquisition(rng: np.random.Generator) -> Acquisition:
    """Small positioning and exposure differences between studies, as in real longitudinal pairs."""
    return Acquisition(
        dx=float(rng.uniform(-0.03, 0.03)), dy=float(rng.uniform(-0.03, 0.03)), rotation=float(rng.uniform(-2.5, 2.5)),
        scale=float(rng.uniform(0.97, 1.03)), exposure=float(rng.uniform(0.94, 1.06)),
        contrast=float(rng.uniform(0.92, 1.08)), brightness=float(rng.uniform(-0.03, 0.03)),
        gamma=float(rng.uniform(0.9, 1.1)), blur=float(rng.uniform(0.4, 0.8)), noise=float(rng.uniform(0.004, 0.009)),
        noise_seed=int(rng.integers(2**31)),
    )


def study_ctr(p: Patient, states: dict[str, FindingState]) -> float:
    st = states.get("cardiomegaly")
    return p.base_ctr if st is None else CTR_BY_SEVERITY[severity_index(st.severity)]


def study_attenuation(p: Patient, static: StaticLayers, states: dict[str, FindingState], size: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation (S, S) float32 of one study in the patient frame and its finding bitfield (S, S) uint8."""
    lungs: LungFields = lung_fields(p, study_ctr(p, states), size)
    layers: Layers = render_findings(p, states, lungs, size)
    xx, yy = grid(size)
    # Air replaces tissue in proportion to the chest's depth there; upper zones hold a little more.
    air = LUNG_AIR * np.sqrt(np.clip(1.0 - np.square(xx / 0.95), 0.05, 1.0)) + 0.05 * (-yy)
    att = static.base + HEART * lungs.heart
    for side in ("right", "left"):
        lung = lungs.side(side)
        fill = np.clip(layers.fill[side], 0.0, 1.0)
        keep = 1.0 - fill
        vessels = static.vessels * VESSEL
        if side in layers.lucent:
            keep_v = keep * (1.0 - layers.lucent[side])
            att = att - 0.09 * layers.lucent[side] * lung + 0.16 * layers.line[side]
        else:
            keep_v = keep
        att = att + lung * (fill * 0.05 - air * keep + vessels * keep_v)
    bits = np.zeros((size, size), dtype=np.uint8)
    for key, mask in layers.masks.items():
        bits |= mask.astype(np.uint8) << FINDING_KEYS.index(key)
    return att.astype(np.float32), bits


def _pose_matrix(acq: Acquisition, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) for ndimage.affine_transform: output pixel (row, col) -> patient-frame pixel."""
    th = np.deg2rad(acq.rotation)
    c, s = np.cos(th), np.sin(th)
    mat = np.array([[c, -s], [s, c]]) / acq.scale
    centre = np.array([size / 2 - 0.5, size / 2 - 0.5])
    shift = np.array([acq.dy, acq.dx]) * size / 2
    return mat, centre - mat @ (centre + shift)


class Warp:
    """The resampling of one acquisition, precomputed once and applied to many maps by gathers.

    ``apply(field)`` equals ``ndimage.affine_transform(field, *pose, order=1, cval=0)`` up to rounding; a gather
    is several times faster, and the same pose is applied to the prior, the counterfactual and their masks.
    """

    def __init__(self, acq: Acquisition, size: int):
        mat, off = _pose_matrix(acq, size)
        ar = np.arange(size, dtype=np.float32)
        # Source (row, col) of every output pixel, as outer sums of 1-D terms: (S, S) each.
        src_r = (mat[0, 0] * ar)[:, None] + (mat[0, 1] * ar + off[0])[None, :].astype(np.float32)
        src_c = (mat[1, 0] * ar)[:, None] + (mat[1, 1] * ar + off[1])[None, :].astype(np.float32)
        self.size = size
        self.idx, self.weights = [], []
        r0, c0 = np.floor(src_r), np.floor(src_c)
        fr, fc = src_r - r0, src_c - c0
        r0, c0 = r0.astype(np.int32), c0.astype(np.int32)
        for dr, wr in ((0, 1.0 - fr), (1, fr)):
            r = r0 + dr
            ok_r = (r >= 0) & (r < size)
            rc = np.clip(r, 0, size - 1) * size
            for dc, wc in ((0, 1.0 - fc), (1, fc)):
                c = c0 + dc
                ok = ok_r & (c >= 0) & (c < size)
                self.idx.append((rc + np.clip(c, 0, size - 1)).ravel())
                self.weights.append((wr * wc * ok).astype(np.float32).ravel())
        rn, cn = np.rint(src_r).astype(np.int32), np.rint(src_c).astype(np.int32)
        self.nearest_ok = ((rn >= 0) & (rn < size) & (cn >= 0) & (cn < size)).ravel()
        self.nearest = (np.clip(rn, 0, size - 1) * size + np.clip(cn, 0, size - 1)).ravel()

    def apply(self, field: np.ndarray, order: int = 1) -> np.ndarray:
        """Resample a patient-frame map into the image frame (order 0 for masks and bitfields)."""
        flat = field.ravel()
        if order == 0:
            out = np.where(self.nearest_ok, flat[self.nearest], 0).astype(field.dtype)
        else:
            out = flat[self.idx[0]] * self.weights[0]
            for i, w in zip(self.idx[1:], self.weights[1:]):
                out += flat[i] * w
        return out.reshape(self.size, self.size)


def warp(field: np.ndarray, acq: Acquisition, order: int = 1) -> np.ndarray:
    """Resample one patient-frame map into the acquisition's image frame (see ``Warp`` for many maps)."""
    return Warp(acq, field.shape[0]).apply(field, order)


def expose(att_img: np.ndarray, acq: Acquisition) -> np.ndarray:
    """Noise-free radiograph (S, S) float32 in [0, 1] from an attenuation map already in the image frame."""
    # A linear window on attenuation (soft tissue near 0.5, mediastinum near 0.85), then the detector's gamma.
    img = (att_img * acq.exposure - 0.06) * (1.0 / 0.94)
    img = np.clip(acq.contrast * (img - 0.5) + 0.5 + acq.brightness, 0.0, 1.0) ** acq.gamma
    sigma = acq.blur * att_img.shape[0] / 256
    return ndimage.gaussian_filter(img, sigma, truncate=2.5).astype(np.float32)


def noise_field(acq: Acquisition, size: int) -> np.ndarray:
    """The acquisition's unit noise (S, S) float32, fixed by its noise seed."""
    return np.random.default_rng(acq.noise_seed).standard_normal((size, size), dtype=np.float32)


def add_noise(clean: np.ndarray, acq: Acquisition, noise: np.ndarray | None = None) -> np.ndarray:
    """Quantum-like noise, stronger in bright (dense) regions; fixed by the acquisition's noise seed."""
    if noise is None:
        noise = noise_field(acq, clean.shape[0])
    return np.clip(clean + acq.noise * np.sqrt(clean + 0.05) * noise, 0.0, 1.0).astype(np.float32)
