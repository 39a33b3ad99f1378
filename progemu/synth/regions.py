"""Population-level anatomical region priors per finding, for region-specific editing.

Like InstructX2X's union of expert bounding boxes, ``anatomical_prior(finding, size)`` is the union, over a fixed
population of synthetic patients and every place and size the finding can take, of the finding's bounding boxes,
widened by the largest acquisition shift. Usage::

    from progemu.synth import anatomical_prior
    region = anatomical_prior("pleural effusion", 128, laterality="left")  # bool (128, 128)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from progemu.findings import FINDINGS, resolve_finding
from progemu.synth.anatomy import lung_fields, sample_patient
from progemu.synth.findings import FindingState, render_findings
from progemu.synth.render import study_ctr
from progemu.synth.vocabulary import SIDES

POPULATION = 48  # patients drawn (with a fixed seed) to build each prior
MARGIN = 0.08  # normalised units: acquisition shift (0.03) plus what rotation and scale move the lung bases


@lru_cache(maxsize=64)
def _boxes(key: str, laterality: str | None) -> tuple[tuple[float, float, float, float], ...]:
    """Normalised (x0, y0, x1, y1) boxes of the finding over the population, at every severity and place."""
    spec = FINDINGS[key]
    sides = ((laterality,) if laterality else SIDES) if spec.lateral else (None,)
    size = 64
    c = ((np.arange(size) + 0.5) / size) * 2 - 1
    boxes = []
    rng = np.random.default_rng(12345)
    for i in range(POPULATION):
        p = sample_patient(i, rng)
        for side in sides:
            for zone in spec.zones or (None,):
                for sev in ("mild", "severe"):
                    st = FindingState(key, sev, side, zone)
                    states = {key: st}
                    mask = render_findings(p, states, lung_fields(p, study_ctr(p, states), size), size).masks[key]
                    if not mask.any():
                        continue
                    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
                    boxes.append((c[cols[0]], c[rows[0]], c[cols[-1]], c[rows[-1]]))
    return tuple(boxes)


def anatomical_prior(finding: str, size: int, laterality: str | None = None) -> np.ndarray:
    """Bool (size, size): where ``finding`` (key, name or synonym) can appear; only that side if ``laterality``."""
    key = resolve_finding(finding)
    if laterality is not None:
        laterality = laterality.strip().lower()
        if laterality not in SIDES:
            raise ValueError(f"laterality must be one of {SIDES} or None, got {laterality!r}")
    out = np.zeros((size, size), dtype=bool)
    c = ((np.arange(size) + 0.5) / size) * 2 - 1
    for x0, y0, x1, y1 in _boxes(key, laterality):
        cols = (c >= x0 - MARGIN) & (c <= x1 + MARGIN)
        rows = (c >= y0 - MARGIN) & (c <= y1 + MARGIN)
        out |= rows[:, None] & cols[None, :]
    return out
