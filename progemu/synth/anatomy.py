"""Per-patient anatomy of a procedural PA chest radiograph, as attenuation maps in a canonical patient frame.

Coordinates are normalised: x and y run from -1 to 1 across the image (y down). The patient's right is on the
image's left (x < 0), as on a PA film; ``sign(side)`` gives -1 for the right lung and +1 for the left. Everything
static for a patient (body, bones, vessel texture, devices) is computed once and reused for all of its studies;
what findings change (heart size, lung fields) is computed per study in ``lung_fields``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from progemu.synth.vocabulary import AGE_RANGES, DEVICES

EDGE = 0.012  # width of soft edges, in normalised units (about 1.5 px at 256 px)


@lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (X, Y), each float32 (size, size) in [-1, 1]; cached per size, read-only."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    xx, yy = np.meshgrid(c, c)
    xx.setflags(write=False)
    yy.setflags(write=False)
    return xx, yy


def ramp(d: np.ndarray, width: float = EDGE) -> np.ndarray:
    """A compact soft step: 0 for d <= -width/2, 1 for d >= width/2 (so masks have exact zeros)."""
    return np.clip(d * (1.0 / width) + 0.5, 0.0, 1.0)


def bump(q: np.ndarray) -> np.ndarray:
    """A compact bump (1 - q)^2 on q = r^2 in [0, 1], exactly zero outside the unit disc."""
    return np.square(np.clip(1.0 - q, 0.0, None))


def sign(side: str) -> float:
    """-1 for the patient's right (image left), +1 for the patient's left."""
    return -1.0 if side == "right" else 1.0


@dataclass
class Patient:
    """Identity of one synthetic patient: demographics and the anatomy shared by all of their studies."""

    pid: int
    seed: int
    sex: str
    age_group: str
    age: int
    width: float  # half-width of the thorax (lateral lung border at the costophrenic angle)
    apex_y: float
    cp_y: float  # height of the costophrenic angles
    dome_rise: tuple[float, float]  # how far each dome rises above the costophrenic angle (right, left)
    base_ctr: float  # normal cardiothoracic ratio of this patient
    bone: float  # bone density (falls with age)
    fat: float  # soft-tissue thickness (habitus)
    breast: float  # breast shadow density (0 for males)
    knob: float  # aortic knob radius (unfolds with age)
    calcified: bool  # calcified aortic knob rim and costal cartilages (old patients)
    devices: tuple[str, ...] = ()
    texture_phase: tuple[float, ...] = field(default_factory=tuple)

    @property
    def hilum_y(self) -> float:
        return self.apex_y + 0.45 * (self.cp_y - self.apex_y)

    def dome_y(self, side: str) -> float:
        return self.cp_y - self.dome_rise[0 if side == "right" else 1]


def sample_patient(pid: int, rng: np.random.Generator) -> Patient:
    """Draw a patient; sex and age group leave visible signatures (habitus, breasts, bones, aorta, inflation)."""
    sex = "female" if rng.random() < 0.5 else "male"
    age_group = ("young", "middle", "old")[int(rng.integers(3))]
    lo, hi = AGE_RANGES[age_group]
    age = int(rng.integers(lo, hi + 1))
    old = age_group == "old"
    young = age_group == "young"
    width = float((0.73 if sex == "male" else 0.66) + rng.uniform(-0.025, 0.025))
    apex_y = float(rng.uniform(-0.66, -0.6))
    # Older lungs are hyperinflated (lower, flatter diaphragms); young ones sit higher.
    cp_y = float(rng.uniform(0.38, 0.44) + (0.06 if old else -0.03 if young else 0.0))
    rise = float(rng.uniform(0.17, 0.23) * (0.75 if old else 1.0))
    devices = tuple(d for d in DEVICES if rng.random() < 0.1)
    return Patient(
        pid=pid, seed=int(rng.integers(2**31)), sex=sex, age_group=age_group, age=age, width=width,
        apex_y=apex_y, cp_y=cp_y, dome_rise=(rise + 0.045, rise), base_ctr=float(rng.uniform(0.41, 0.47)),
        bone=float({"young": 1.15, "middle": 0.9, "old": 0.62}[age_group] + rng.uniform(-0.05, 0.05)),
        fat=float(rng.uniform(0.0, 0.1)), breast=float(rng.uniform(0.1, 0.13)) if sex == "female" else 0.0,
        knob=float(rng.uniform(0.07, 0.085) if old else rng.uniform(0.045, 0.055)), calcified=old,
        devices=devices, texture_phase=tuple(float(v) for v in rng.uniform(0, 2 * np.pi, 8)),
    )


def lateral_border(p: Patient, yy: np.ndarray) -> np.ndarray:
    """|x| of the lateral lung border at height y: a quarter ellipse from the apex down to the costophrenic angle."""
    t = np.clip((yy - p.apex_y) / (p.cp_y - p.apex_y), 0.0, 1.0)
    return 0.2 + (p.width - 0.2) * np.sqrt(np.clip(1.0 - np.square(1.0 - t), 0.0, 1.0))


def lung_shape(p: Patient, side: str, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Soft membership (0..1) of one lung without the heart cut out; also evaluated on shrunken coordinates."""
    u = xx * sign(side)
    d_lat = lateral_border(p, yy) - u
    d_top = yy - (p.apex_y + 1.6 * np.square(u - 0.3))
    dome, pk = p.dome_y(side), 0.33 * p.width
    s = np.clip((u - pk) / (p.width - pk), 0.0, None)
    d_dome = dome + p.dome_rise[0 if side == "right" else 1] * np.square(s) + 0.25 * np.square(
        np.clip(pk - u, 0.0, None)) - yy
    d_med = u - 0.085
    return ramp(np.minimum(np.minimum(d_lat, d_top), np.minimum(d_dome, d_med)))


def heart_geometry(p: Patient, ctr: float) -> tuple[float, float, float, float]:
    """Heart ellipse (cx, cy, a, b) for a cardiothoracic ratio: a third of it right of the midline."""
    a = ctr * p.width
    b = 0.24 * (1.0 + 0.6 * (ctr - p.base_ctr))
    cy = (p.dome_y("right") + p.dome_y("left")) / 2 - b * 0.78
    return a / 3.0, cy + b * 0.2, a, b


def heart_mask(p: Patient, ctr: float, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    cx, cy, a, b = heart_geometry(p, ctr)
    r = np.sqrt(np.square((xx - cx) / a) + np.square((yy - cy) / b))
    return ramp((1.0 - r) * b)


@dataclass
class LungFields:
    """Per-study soft masks: each lung with the heart cut out, and the heart itself."""

    right: np.ndarray
    left: np.ndarray
    heart: np.ndarray

    def side(self, side: str) -> np.ndarray:
        return self.right if side == "right" else self.left


def lung_fields(p: Patient, ctr: float, size: int) -> LungFields:
    """Lung fields for a study whose heart has cardiothoracic ratio ``ctr``."""
    xx, yy = grid(size)
    heart = heart_mask(p, ctr, xx, yy)
    keep = 1.0 - heart
    return LungFields(lung_shape(p, "right", xx, yy) * keep, lung_shape(p, "left", xx, yy) * keep, heart)
