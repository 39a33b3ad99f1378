"""The parts of a chest radiograph that stay fixed for a patient: body, bones, mediastinum, vessels, devices.

Returns attenuation maps in the canonical patient frame (see ``anatomy``); ``render.study_attenuation`` adds the
lungs, the heart and the findings of one study on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from progemu.synth.anatomy import Patient, bump, grid, lateral_border, ramp


@dataclass
class StaticLayers:
    """Attenuation everywhere except the lungs (``base``) and the lung vessel texture (applied inside lungs)."""

    base: np.ndarray  # float32 (S, S)
    vessels: np.ndarray  # float32 (S, S), 0..1


def _band(dist: np.ndarray, half: float) -> np.ndarray:
    """A compact bone-like band profile across a curve at signed distance ``dist``."""
    return bump(np.square(dist * (1.0 / half)))


def _ribs(p: Patient, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Posterior and anterior rib arcs, all at once through a periodic rib phase (one pass per family)."""
    u = np.abs(xx)
    s = u / p.width
    height = p.cp_y + 0.1 - p.apex_y
    spacing = height / 9.5
    inside = ramp(lateral_border(p, np.minimum(yy, p.cp_y)) + 0.07 - u, 0.05) * ramp(u - 0.06, 0.03)
    inside = inside * ramp(p.cp_y + 0.02 - yy, 0.1)
    out = np.zeros_like(xx)
    # Posterior ribs leave the spine, rise a little, then fall laterally.
    for offset, shape, half, dens, lo_s in ((-0.02, -0.07 * s + 0.24 * s * s, 0.2, 0.1, 0.0),
                                            (0.04, 0.2 * (1.0 - s), 0.14, 0.05, 0.35)):
        phase = (yy - shape - (p.apex_y + offset)) / spacing
        k = np.floor(phase)
        frac = phase - k - 0.5
        ok = (k >= 0) & (k < 10) & (s > lo_s)
        out += dens * _band(frac, half * 2) * ok
    out *= inside
    if p.calcified:  # calcified costal cartilages: bright flecks at the medial ends of the anterior ribs
        phase = (yy - 0.2 * (1.0 - s) - (p.apex_y + 0.04)) / spacing
        frac = phase - np.floor(phase) - 0.5
        out += 0.12 * _band(frac, 0.25) * bump(np.square((s - 0.36) / 0.05)) * (yy > p.apex_y + 0.2) * (yy < p.cp_y)
    return out * p.bone


def _clavicles(p: Patient, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    u = np.abs(xx)
    s = np.clip((u - 0.06) / (p.width + 0.05), 0.0, 1.0)
    curve = p.apex_y + 0.02 - 0.13 * s + 0.05 * np.sin(np.pi * s)
    return 0.24 * p.bone * _band(yy - curve, 0.028) * (u > 0.06) * (u < p.width + 0.08)


def _spine(p: Patient, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Vertebral bodies with end plates, and the trachea as an air column down to the carina."""
    h = (p.cp_y - p.apex_y) / 9.0
    plates = 0.75 + 0.25 * np.abs(np.cos(np.pi * (yy - p.apex_y) / h))
    spine = 0.08 * p.bone * plates * ramp(0.055 - np.abs(xx), 0.02)
    carina = p.hilum_y - 0.03
    trachea = -0.08 * ramp(0.022 - np.abs(xx), 0.015) * ramp(carina - yy, 0.03)
    return spine + trachea


def _body(p: Patient, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Soft tissue: neck, shoulders, chest wall, abdomen below the diaphragms, breast shadows in women."""
    chest = p.width + 0.15 + p.fat
    shoulder = min(chest + 0.16, 0.99)
    t = np.clip((yy - (p.apex_y - 0.3)) / 0.25, 0.0, 1.0)
    half = 0.2 + (shoulder - 0.2) * (3 * t * t - 2 * t**3)
    half = np.where(yy > p.apex_y + 0.2, shoulder + (chest - shoulder) * np.clip((yy - p.apex_y - 0.2) / 0.5, 0, 1),
                    half)
    inside = ramp(half - np.abs(xx), 0.03)
    thick = np.sqrt(np.clip(1.0 - np.square(xx / (half + 0.02)), 0.0, 1.0))
    body = (0.33 + 0.45 * thick) * inside
    if p.breast > 0:
        for sx in (-1.0, 1.0):
            q = np.square((xx - sx * 0.62 * p.width) / 0.28) + np.square((yy - (p.cp_y - 0.2)) / 0.2)
            body += p.breast * ramp(1.0 - q, 0.3) * inside  # sharp inferior margin
    return body


def _aorta(p: Patient, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Aortic knob left of the upper mediastinum; with a bright calcified rim in old patients."""
    cx, cy = 0.07 + p.knob * 0.7, p.hilum_y - 0.14
    r = np.sqrt(np.square(xx - cx) + np.square(yy - cy)) / p.knob
    knob = 0.08 * ramp(1.0 - r, 0.2)
    if p.calcified:
        knob += 0.14 * bump(np.square((r - 0.85) / 0.12)) * (yy < cy)
    return knob


def _vessels(p: Patient, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Branching vessel markings radiating from each hilum, fading towards the periphery."""
    out = np.zeros_like(xx)
    ph = p.texture_phase
    for i, sx in enumerate((-1.0, 1.0)):
        dx, dy = xx - sx * 0.13, yy - (p.hilum_y + 0.03)
        r = np.sqrt(dx * dx + dy * dy)
        theta = np.arctan2(dy, dx * sx)
        wav = theta + 0.08 * np.sin(9.0 * r + ph[i]) + 0.05 * np.sin(17.0 * r + ph[i + 2])
        trunks = np.clip(np.cos(11.0 * wav + ph[i + 4]), 0.0, None) ** 8
        twigs = np.clip(np.cos(23.0 * wav + 3.0 * r + ph[i + 6]), 0.0, None) ** 10
        fade = np.clip(1.0 - r / 0.75, 0.0, None)
        beads = 0.6 + 0.4 * np.cos(25.0 * r + 3.0 * theta + ph[i + 1])  # breaks the fan into segments
        out += (trunks * fade + 0.6 * twigs * fade * fade) * beads * np.clip(r / 0.08, 0.0, 1.0)
    return out


def _polyline(xx: np.ndarray, yy: np.ndarray, pts: list[tuple[float, float]], half: float) -> np.ndarray:
    out = np.zeros_like(xx)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        vx, vy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * vx + (yy - y0) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
        d2 = np.square(xx - x0 - t * vx) + np.square(yy - y0 - t * vy)
        out = np.maximum(out, bump(d2 * (1.0 / half**2)))
    return out


def _devices(p: Patient, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Radio-opaque support devices: thin bright tubes and lines, a pacemaker box with leads."""
    out = np.zeros_like(xx)
    hy = p.hilum_y
    if "endotracheal tube" in p.devices:
        out = np.maximum(out, _polyline(xx, yy, [(0.0, -1.0), (0.0, hy - 0.1)], 0.012))
    if "nasogastric tube" in p.devices:
        out = np.maximum(out, _polyline(xx, yy, [(0.0, -1.0), (0.02, hy), (0.06, p.cp_y), (0.3, p.cp_y + 0.15)],
                                        0.01))
    if "central venous catheter" in p.devices:
        out = np.maximum(out, _polyline(xx, yy, [(-0.55, p.apex_y), (-0.15, p.apex_y + 0.08), (-0.06, hy - 0.05),
                                                 (-0.06, hy + 0.06)], 0.008))
    if "pacemaker" in p.devices:
        box = ramp(0.07 - np.abs(xx - 0.5), 0.01) * ramp(0.05 - np.abs(yy - (p.apex_y + 0.12)), 0.01)
        leads = _polyline(xx, yy, [(0.45, p.apex_y + 0.12), (0.1, hy - 0.1), (0.02, hy + 0.2), (0.05, hy + 0.35)],
                          0.008)
        out = np.maximum(out, np.maximum(box, leads))
    return 0.6 * out


def static_layers(p: Patient, size: int) -> StaticLayers:
    """Everything about a patient's radiograph that no finding changes, at ``size`` px."""
    xx, yy = grid(size)
    base = _body(p, xx, yy) + _ribs(p, xx, yy) + _clavicles(p, xx, yy) + _spine(p, xx, yy) + _aorta(p, xx, yy)
    if p.devices:
        base = base + _devices(p, xx, yy)
    return StaticLayers(base.astype(np.float32), _vessels(p, xx, yy).astype(np.float32))
