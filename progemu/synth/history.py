"""Patient histories: identity, split, and the findings and acquisition of every study over time.

Findings evolve study to study (0 to 3 changes: new, resolved, worsened, improved); a drawn state is kept only
if every focal finding stays visible (not hidden behind the heart, an effusion or another opacity), so each
change the texts mention shows in the images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from progemu.findings import FINDING_KEYS, FINDINGS
from progemu.synth.anatomy import Patient, lung_fields, sample_patient
from progemu.synth.findings import Change, FindingState, render_findings
from progemu.synth.render import Acquisition, sample_acquisition, study_ctr
from progemu.synth.vocabulary import SEVERITIES

PAIRS_PER_PATIENT = 2
SPLIT_WEIGHTS = (("train", 0.8), ("validate", 0.1), ("test", 0.1))


@dataclass
class Study:
    """One study of a patient: its findings and how it was acquired."""

    index: int
    day: int
    findings: dict[str, FindingState]
    acquisition: Acquisition


@dataclass
class PatientHistory:
    patient: Patient
    split: str
    studies: list[Study]


FOCAL = ("consolidation", "atelectasis", "nodule")  # findings that must not overlap one another


def _new_state(key: str, rng: np.random.Generator, others: dict[str, FindingState]) -> FindingState:
    """A new finding with random severity and place; focal findings avoid places other focal ones hold."""
    spec = FINDINGS[key]
    sev = SEVERITIES[int(rng.integers(1, 4))]
    taken = {(st.side, st.zone) for k, st in others.items() if k in FOCAL and k != key}
    places = [(side, zone) for side in (("right", "left") if spec.lateral else (None,))
              for zone in (spec.zones or (None,)) if key not in FOCAL or (side, zone) not in taken]
    side, zone = places[int(rng.integers(len(places)))]
    return FindingState(key, sev, side, zone)


def visible(p: Patient, states: dict[str, FindingState], size: int = 64) -> bool:
    """Whether each focal finding and effusion shows: at least half of it outside the heart and other opacities."""
    keys = [k for k in states if k in FOCAL or k == "pleural_effusion"]
    if not keys:
        return True
    lungs = lung_fields(p, study_ctr(p, states), size)
    single = {k: render_findings(p, {k: st}, lungs, size) for k, st in states.items() if k != "cardiomegaly"}
    for key in keys:
        side = states[key].side
        others = sum((lay.fill[side] for k, lay in single.items() if k != key), np.zeros((size, size), np.float32))
        mask = single[key].masks[key]
        if (mask & (others < 0.4)).sum() < max(3, 0.5 * mask.sum()):
            return False
    return True


def _next_findings(p: Patient, cur: dict[str, FindingState], rng: np.random.Generator) -> dict[str, FindingState]:
    """The next study's findings: 0 to 3 findings change (new, resolved, worsened, improved), all visible."""
    for _ in range(20):
        nxt = _draw_next(cur, rng)
        if visible(p, nxt):
            return nxt
    return dict(cur)


def _draw_next(cur: dict[str, FindingState], rng: np.random.Generator) -> dict[str, FindingState]:
    n = int(rng.choice(4, p=(0.15, 0.55, 0.22, 0.08)))
    nxt = dict(cur)
    present, absent = [k for k in FINDING_KEYS if k in cur], [k for k in FINDING_KEYS if k not in cur]
    picked = []
    for _ in range(n):  # present findings change more often than absent ones appear: balances new vs. the rest
        pool = present if present and (rng.random() < 0.6 or not absent) else absent
        picked.append(pool.pop(int(rng.integers(len(pool)))))
    for key in picked:
        st = cur.get(key)
        if st is None:
            nxt[key] = _new_state(key, rng, nxt)
            continue
        level = SEVERITIES.index(st.severity)
        moves = ["resolved"] + (["worsened"] if level < 3 else []) + (["improved"] if level > 1 else [])
        move = moves[int(rng.integers(len(moves)))]
        if move == "resolved":
            del nxt[key]
        else:
            step = 1 if move == "worsened" else -1
            new_level = int(np.clip(level + step * int(rng.integers(1, 3)), 1, 3))
            nxt[key] = FindingState(key, SEVERITIES[new_level], st.side, st.zone)
    return nxt


def diff_findings(a: dict[str, FindingState], b: dict[str, FindingState]) -> tuple[list[Change], list[FindingState]]:
    """Changes from a to b (in vocabulary order) and the findings present unchanged in both."""
    changes, stable = [], []
    for key in FINDING_KEYS:
        x, y = a.get(key), b.get(key)
        if x is None and y is None:
            continue
        if x is None:
            changes.append(Change(key, "new", None, y))
        elif y is None:
            changes.append(Change(key, "resolved", x, None))
        elif x.severity == y.severity:
            stable.append(y)
        else:
            kind = "worsened" if SEVERITIES.index(y.severity) > SEVERITIES.index(x.severity) else "improved"
            changes.append(Change(key, kind, x, y))
    return changes, stable



def draw_history(seed: int, patient_index: int) -> PatientHistory:
    """Identity, split and every study of one patient, from (seed, patient) alone (no images)."""
    rng = np.random.default_rng([seed, patient_index, 7])
    patient = sample_patient(patient_index, rng)
    u, acc, split = rng.random(), 0.0, "train"
    for name, w in SPLIT_WEIGHTS:
        acc += w
        if u < acc:
            split = name
            break
    n0 = int(rng.choice(4, p=(0.3, 0.35, 0.25, 0.1)))
    findings: dict[str, FindingState] = {}
    for _ in range(20):
        findings = {}
        for k in rng.choice(FINDING_KEYS, size=n0, replace=False):
            findings[str(k)] = _new_state(str(k), rng, findings)
        if visible(patient, findings):
            break
    else:
        findings = {}
    day = int(rng.integers(0, 3000))
    studies = [Study(0, day, findings, sample_acquisition(rng))]
    for j in range(1, PAIRS_PER_PATIENT + 1):
        findings = _next_findings(patient, findings, rng)
        day += int(rng.integers(1, 180))
        studies.append(Study(j, day, findings, sample_acquisition(rng)))
    return PatientHistory(patient, split, studies)
