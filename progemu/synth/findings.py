"""Findings of SynthCXR: each one rendered as layers on the lung fields, plus its own mask.

Every layer has compact support (exact zeros away from the finding), so a study that differs from another only
in one finding differs only where that finding is: this is what makes the counterfactual exact outside the
change mask. Shapes are seeded per (patient, finding), so a finding keeps its shape and place as it worsens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from progemu.findings import FINDINGS
from progemu.synth.anatomy import EDGE, LungFields, Patient, bump, grid, lung_shape, ramp, sign
from progemu.synth.vocabulary import severity_index

CTR_BY_SEVERITY = (None, 0.55, 0.6, 0.65)  # cardiomegaly: cardiothoracic ratio for mild, moderate, severe


@dataclass(frozen=True)
class FindingState:
    """One present finding of a study."""

    key: str
    severity: str  # mild / moderate / severe
    side: str | None = None  # right / left for lateral findings
    zone: str | None = None  # upper / middle / lower where the finding may move between zones

    def to_dict(self) -> dict:
        return {"finding": self.key, "name": FINDINGS[self.key].name, "severity": self.severity,
                "side": self.side, "zone": self.zone}


@dataclass
class Layers:
    """What a study's findings add: lung filling per side, lucency and pleural lines (pneumothorax)."""

    fill: dict[str, np.ndarray] = field(default_factory=dict)  # side -> 0..1 fraction of air replaced
    lucent: dict[str, np.ndarray] = field(default_factory=dict)  # side -> 0..1 air without lung
    line: dict[str, np.ndarray] = field(default_factory=dict)  # side -> visceral pleural line
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # finding key -> bool (S, S)


def _shape_rng(p: Patient, key: str) -> np.random.Generator:
    return np.random.default_rng([p.seed, sum(ord(c) * (i + 1) for i, c in enumerate(key))])


def zone_centre(p: Patient, side: str, zone: str, rng: np.random.Generator) -> tuple[float, float]:
    """A point inside the given lung zone, jittered per patient and finding."""
    h = p.cp_y - p.apex_y
    y = {"upper": p.apex_y + 0.22 * h, "middle": p.hilum_y + 0.06 * h, "lower": p.cp_y - 0.2 * h}[zone]
    # Left-sided middle and lower places sit more laterally: the heart takes the medial part there.
    lateral = {"upper": 0.45, "middle": 0.55, "lower": 0.6}[zone] + (0.1 if side == "left" and zone != "upper" else 0)
    u = p.width * lateral + rng.uniform(-0.05, 0.05)
    return sign(side) * u, y + rng.uniform(-0.04, 0.04)


def _effusion(p: Patient, st: FindingState, lungs: LungFields, xx, yy, rng) -> np.ndarray:
    """Dependent fluid with a meniscus that climbs laterally; it blunts the costophrenic angle first."""
    u = xx * sign(st.side)
    h = p.cp_y - p.apex_y
    level = p.cp_y - (0.2, 0.34, 0.52)[severity_index(st.severity) - 1] * h
    depth = (0.1, 0.14, 0.12)[severity_index(st.severity) - 1] + rng.uniform(0, 0.03)
    meniscus = level + depth * np.square(np.clip(1.0 - u / p.width, 0.0, 1.0)) * 4.0
    body = ramp(yy - meniscus, 0.05)
    return 0.95 * body * ramp(u - 0.02, 0.02)


def _consolidation(p: Patient, st: FindingState, xx, yy, rng) -> np.ndarray:
    """Lobulated, slightly mottled airspace opacity with air bronchograms when larger."""
    cx, cy = zone_centre(p, st.side, st.zone, rng)
    k = severity_index(st.severity)
    radius = (0.1, 0.15, 0.21)[k - 1]
    ph = rng.uniform(0, 2 * np.pi, 4)
    dx, dy = xx - cx, yy - cy
    theta = np.arctan2(dy, dx)
    r_eff = radius * (1.0 + 0.16 * np.sin(3 * theta + ph[0]) + 0.09 * np.sin(5 * theta + ph[1]))
    q = (dx * dx + dy * dy) / np.square(r_eff)
    mottle = 0.8 + 0.07 * (np.cos(57 * xx + 19 * yy + ph[2]) + np.cos(-23 * xx + 52 * yy + ph[3])
                           + np.cos(41 * xx - 43 * yy + ph[2] + ph[3]))
    fill = (0.62 + 0.12 * k) * np.sqrt(np.sqrt(bump(q))) * mottle
    if k >= 2:  # air bronchograms: dark branching lines inside the opacity
        bronchi = np.clip(np.cos(7.0 * theta + ph[2]), 0.0, None) ** 12 * (q < 0.7)
        fill = fill * (1.0 - 0.45 * bronchi)
    return fill


def _edema(p: Patient, st: FindingState, xx, yy, rng) -> np.ndarray:
    """Bilateral perihilar ("bat-wing") haze; Kerley B lines at the lateral bases when moderate or severe."""
    k = severity_index(st.severity)
    scale = (0.75, 0.95, 1.15)[k - 1]
    ph = rng.uniform(0, 2 * np.pi, 2)
    fill = np.zeros_like(xx)
    for sx in (-1.0, 1.0):
        q = np.square((xx - sx * 0.22) / (0.32 * scale)) + np.square((yy - p.hilum_y - 0.06) / (0.36 * scale))
        fill = np.maximum(fill, np.sqrt(bump(q)))
    # Irregular fluffiness: three plane waves in different directions rather than a checkerboard.
    fluff = 0.75 + 0.09 * (np.cos(41 * xx + 13 * yy + ph[0]) + np.cos(-17 * xx + 38 * yy + ph[1])
                           + np.cos(29 * xx - 31 * yy + ph[0] + ph[1]))
    fill = (0.33 + 0.15 * k) * fill * fluff
    if k >= 2:
        u = np.abs(xx)
        lines = np.clip(np.cos(np.pi * (yy - p.cp_y) / 0.035), 0.0, None) ** 16
        zone = ramp(u - (p.width - 0.13), 0.02) * ramp(yy - (p.cp_y - 0.28), 0.03)
        fill = fill + 0.5 * lines * zone
    return fill


def _atelectasis(p: Patient, st: FindingState, xx, yy, rng) -> np.ndarray:
    """Plate-like (discoid) bands, more and thicker with severity."""
    cx, cy = zone_centre(p, st.side, st.zone, rng)
    k = severity_index(st.severity)
    half = 0.014 + 0.005 * k
    slope = rng.uniform(0.05, 0.2) * sign(st.side)
    fill = np.zeros_like(xx)
    for i in range(k):
        y0 = cy + (i - (k - 1) / 2) * 0.09  # separate plates, never one slab
        length = 0.2 + 0.05 * k
        t = np.clip((xx - cx) / length, -1.0, 1.0)
        dist = yy - (y0 + slope * t * length)
        along = bump(np.square(t))
        fill = np.maximum(fill, 0.9 * ramp(half - np.abs(dist), 0.012) * np.sqrt(along))
    return fill


def _nodule(p: Patient, st: FindingState, xx, yy, rng) -> np.ndarray:
    """A well-circumscribed round nodule; a lobulated mass when severe."""
    cx, cy = zone_centre(p, st.side, st.zone, rng)
    k = severity_index(st.severity)
    radius = (0.04, 0.065, 0.1)[k - 1]
    dx, dy = xx - cx, yy - cy
    r = np.sqrt(dx * dx + dy * dy)
    if k == 3:
        r = r / (1.0 + 0.12 * np.sin(4 * np.arctan2(dy, dx) + rng.uniform(0, 6.28)))
    return 0.92 * ramp(radius - r, EDGE * 0.8)


def _pneumothorax(p: Patient, st: FindingState, lungs: LungFields, xx, yy):
    """Air between chest wall and a collapsed lung: no markings, a thin visceral pleural line."""
    k = severity_index(st.severity)
    shrink = (0.9, 0.78, 0.62)[k - 1]
    cx, cy = sign(st.side) * 0.3 * p.width, p.cp_y - 0.05  # collapse towards the base: apical air first
    collapsed = lung_shape(p, st.side, cx + (xx - cx) / shrink, cy + (yy - cy) / shrink)
    lung = lungs.side(st.side)
    lucent = lung * (1.0 - collapsed)
    line = 4.0 * collapsed * (1.0 - collapsed) * lung
    return lucent, line, collapsed * (0.05 * k)


def render_findings(p: Patient, states: dict[str, FindingState], lungs: LungFields, size: int) -> Layers:
    """Layers and per-finding masks (canonical patient frame) for the present findings of one study."""
    xx, yy = grid(size)
    out = Layers()
    for side in ("right", "left"):
        out.fill[side] = np.zeros_like(xx)
    for key, st in states.items():
        rng = _shape_rng(p, key)
        if key == "cardiomegaly":
            out.masks[key] = lungs.heart > 0.5
            continue
        if key == "pneumothorax":
            lucent, line, denser = _pneumothorax(p, st, lungs, xx, yy)
            out.lucent[st.side], out.line[st.side] = lucent, line
            out.fill[st.side] = out.fill[st.side] + denser
            out.masks[key] = lucent > 0.05
            continue
        if key == "pleural_effusion":
            fill = _effusion(p, st, lungs, xx, yy, rng)
        elif key == "consolidation":
            fill = _consolidation(p, st, xx, yy, rng)
        elif key == "edema":
            fill = _edema(p, st, xx, yy, rng)
        elif key == "atelectasis":
            fill = _atelectasis(p, st, xx, yy, rng)
        elif key == "nodule":
            fill = _nodule(p, st, xx, yy, rng)
        else:
            raise KeyError(f"unknown finding {key!r}")
        mask = np.zeros(xx.shape, dtype=bool)
        for side in ("right", "left"):
            if st.side not in (None, side):
                continue
            # The lung mask is applied once, in the attenuation; applying it here too would darken lung edges.
            out.fill[side] = out.fill[side] + fill
            mask |= fill * lungs.side(side) > 0.05
        out.masks[key] = mask
    return out


@dataclass(frozen=True)
class Change:
    """How one finding differs between prior and follow-up: new, resolved, worsened, improved or unchanged."""

    key: str
    kind: str
    before: FindingState | None
    after: FindingState | None

    @property
    def state(self) -> FindingState:
        """The state that carries the finding's place (the follow-up's, or the prior's when it resolved)."""
        return self.after if self.after is not None else self.before  # type: ignore[return-value]

    def to_dict(self) -> dict:
        st = self.state
        return {"finding": self.key, "name": FINDINGS[self.key].name, "change": self.kind,
                "from": self.before.severity if self.before else "none",
                "to": self.after.severity if self.after else "none", "side": st.side, "zone": st.zone}
