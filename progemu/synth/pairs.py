"""Patients, their studies over time, and longitudinal pairs with ground truth: the ``SynthCXR`` generator.

Pair ``i`` is the pair (study j, study j+1) of patient ``i // PAIRS_PER_PATIENT`` with ``j = i % PAIRS_PER_PATIENT``.
A patient's whole history (identity, findings of every study, acquisitions) is drawn from ``(seed, patient)``
alone, so any pair can be generated on its own, in any order, by any worker, with the same result.

Usage::

    gen = SynthCXR(size=128, seed=0)
    pair = gen.pair(0)   # SynthPair: images float32 [0, 1], masks, labels, attributes, texts
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from progemu.data.records import Report
from progemu.synth import text
from progemu.synth.anatomy import Patient, lung_fields, sample_patient
from progemu.synth.findings import Change, FindingState, render_findings
from progemu.synth.render import (
    Acquisition,
    Warp,
    add_noise,
    expose,
    noise_field,
    sample_acquisition,
    study_attenuation,
    study_ctr,
)
from progemu.synth.static import StaticLayers, static_layers
from progemu.synth.vocabulary import FINDING_KEYS, FINDINGS, SEVERITIES, chexpert_labels

GENERATOR_VERSION = "synthcxr-1.0"
PAIRS_PER_PATIENT = 2
SPLIT_WEIGHTS = (("train", 0.8), ("validate", 0.1), ("test", 0.1))
CHANGE_THRESHOLD = 1.0 / 255  # a pixel belongs to the change mask when the noise-free images differ by more


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


@dataclass
class SynthPair:
    """One longitudinal pair with its full ground truth (images float32 (S, S) in [0, 1], masks bool)."""

    index: int
    pair_id: str
    split: str
    patient: Patient
    prior: np.ndarray
    followup: np.ndarray  # as acquired: the follow-up's own pose and exposure
    counterfactual: np.ndarray  # the prior's acquisition with the follow-up's findings
    change_mask: np.ndarray
    prior_masks: dict[str, np.ndarray]  # finding key -> bool (S, S), prior frame
    target_masks: dict[str, np.ndarray]  # finding key -> bool (S, S), prior frame (the counterfactual's)
    prior_findings: dict[str, FindingState]
    target_findings: dict[str, FindingState]
    changes: list[Change]
    prior_labels: dict[str, float]
    target_labels: dict[str, float]
    prompt: str
    interpretation: str
    instruction: str
    prior_report: Report
    target_report: Report
    ids: dict[str, str]
    time_interval_days: int
    acquisitions: tuple[Acquisition, Acquisition]
    bits: tuple[np.ndarray, np.ndarray] = field(default=(None, None))  # type: ignore[assignment]

    @property
    def attributes(self) -> dict[str, object]:
        return {"sex": self.patient.sex, "age_group": self.patient.age_group, "age": self.patient.age}


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
    """Whether every focal finding shows: not hidden behind the heart, an effusion or another opacity."""
    focal = [k for k in states if k in FOCAL]
    if not focal:
        return True
    layers = render_findings(p, states, lung_fields(p, study_ctr(p, states), size), size)
    for key in focal:
        st = states[key]
        own = layers.masks[key]
        if key == "nodule":  # a nodule inside another opacity is not seen
            others = {k: v for k, v in states.items() if k not in ("nodule", "cardiomegaly", "pneumothorax")}
            if others:
                rest = render_findings(p, others, lung_fields(p, study_ctr(p, states), size), size)
                own = own & (np.clip(rest.fill[st.side], 0, 1) < 0.4)
        if own.sum() < 3:
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
    for key in rng.choice(FINDING_KEYS, size=n, replace=False):
        key = str(key)
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


def _hex_id(*parts: object) -> str:
    """A MIMIC-style DICOM id (five groups of eight hex digits), stable for its parts."""
    h = hashlib.sha1("-".join(map(str, parts)).encode()).hexdigest()
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))


def change_mask(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Where two noise-free images differ visibly, closed into regions (bool (S, S)).

    No hole filling: an enlarging heart changes a ring around the old heart, not the heart itself.
    """
    diff = np.abs(after - before) > CHANGE_THRESHOLD
    if not diff.any():
        return diff
    rows, cols = np.nonzero(diff.any(axis=1))[0], np.nonzero(diff.any(axis=0))[0]
    m = 4  # the closing below reaches 2 px; work on the changed box only, with a margin
    r0, r1 = max(rows[0] - m, 0), min(rows[-1] + m + 1, diff.shape[0])
    c0, c1 = max(cols[0] - m, 0), min(cols[-1] + m + 1, diff.shape[1])
    box = ndimage.binary_closing(np.pad(diff[r0:r1, c0:c1], m), iterations=2)[m:-m, m:-m]
    out = np.zeros_like(diff)
    out[r0:r1, c0:c1] = box | diff[r0:r1, c0:c1]
    return out


def _unpack(bits: np.ndarray) -> dict[str, np.ndarray]:
    return {key: (bits >> i) & 1 == 1 for i, key in enumerate(FINDING_KEYS) if np.any((bits >> i) & 1)}


class SynthCXR:
    """Deterministic generator of longitudinal synthetic chest X-ray pairs (any size from 64 to 512 px)."""

    def __init__(self, size: int = 128, seed: int = 0):
        if not 64 <= size <= 512:
            raise ValueError(f"SynthCXR size must be between 64 and 512 px, got {size}")
        self.size, self.seed = int(size), int(seed)
        self._static: OrderedDict[int, StaticLayers] = OrderedDict()
        self._hist: OrderedDict[int, PatientHistory] = OrderedDict()
        self._acq: OrderedDict[tuple[int, int], tuple[Warp, np.ndarray]] = OrderedDict()
        self._att: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def history(self, patient_index: int) -> PatientHistory:
        """Identity, split and all studies of one patient (cheap: no images; cached)."""
        if patient_index not in self._hist:
            self._hist[patient_index] = self._draw_history(patient_index)
            while len(self._hist) > 8:
                self._hist.popitem(last=False)
        return self._hist[patient_index]

    def _draw_history(self, patient_index: int) -> PatientHistory:
        rng = np.random.default_rng([self.seed, patient_index, 7])
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

    def _cached_static(self, p: Patient) -> StaticLayers:
        if p.pid not in self._static:
            self._static[p.pid] = static_layers(p, self.size)
            while len(self._static) > 4:
                self._static.popitem(last=False)
        return self._static[p.pid]

    def _attenuation(self, hist: PatientHistory, j: int) -> tuple[np.ndarray, np.ndarray]:
        key = (hist.patient.pid, j)
        if key not in self._att:
            st = self._cached_static(hist.patient)
            self._att[key] = study_attenuation(hist.patient, st, hist.studies[j].findings, self.size)
            while len(self._att) > 6:
                self._att.popitem(last=False)
        return self._att[key]

    def _acquire(self, hist: PatientHistory, j: int) -> tuple[Warp, np.ndarray]:
        """The resampling and the noise of study j's acquisition (cached: study j ends one pair, starts the next)."""
        key = (hist.patient.pid, j)
        if key not in self._acq:
            acq = hist.studies[j].acquisition
            self._acq[key] = (Warp(acq, self.size), noise_field(acq, self.size))
            while len(self._acq) > 6:
                self._acq.popitem(last=False)
        return self._acq[key]

    def ids(self, hist: PatientHistory, j: int) -> dict[str, str]:
        pid = hist.patient.pid
        return {"subject-id": str(10_000_000 + pid), "reference-study-id": str(50_000_000 + pid * 10 + j),
                "followup-study-id": str(50_000_000 + pid * 10 + j + 1),
                "reference-dicom-id": _hex_id(self.seed, pid, j), "followup-dicom-id": _hex_id(self.seed, pid, j + 1)}

    def pair(self, index: int) -> SynthPair:
        """Pair ``index``: images, masks, labels, attributes and texts; the same for the same (seed, index)."""
        pidx, j = divmod(int(index), PAIRS_PER_PATIENT)
        hist = self.history(pidx)
        p, s0, s1 = hist.patient, hist.studies[j], hist.studies[j + 1]
        att0, bits0 = self._attenuation(hist, j)
        att1, bits1 = self._attenuation(hist, j + 1)
        acq0, acq1 = s0.acquisition, s1.acquisition
        w0, noise0 = self._acquire(hist, j)
        clean0 = expose(w0.apply(att0), acq0)
        clean_cf = expose(w0.apply(att1), acq0)
        change = change_mask(clean0, clean_cf)
        prior = add_noise(clean0, acq0, noise0)
        # Outside the change mask the counterfactual is the prior itself, bit for bit (the noise-free images
        # differ there by at most CHANGE_THRESHOLD, and the noise is the same acquisition's).
        cf = np.where(change, add_noise(clean_cf, acq0, noise0), prior).astype(np.float32)
        w1, noise1 = self._acquire(hist, j + 1)
        follow = add_noise(expose(w1.apply(att1), acq1), acq1, noise1)
        wb0, wb1 = w0.apply(bits0, order=0), w0.apply(bits1, order=0)
        changes, stable = diff_findings(s0.findings, s1.findings)
        rng = np.random.default_rng([self.seed, index, 11])
        mentioned = {c.key for c in changes} | {st.key for st in stable}
        absent = [k for k in FINDING_KEYS if k not in mentioned]
        absent = [absent[i] for i in sorted(rng.choice(len(absent), size=min(len(absent), int(rng.integers(0, 3))),
                                                       replace=False))]
        ctr = (study_ctr(p, s0.findings), study_ctr(p, s1.findings))
        return SynthPair(
            index=int(index), pair_id=f"synth-{self.seed}-{int(index):06d}", split=hist.split, patient=p,
            prior=prior, followup=follow, counterfactual=cf, change_mask=change,
            prior_masks=_unpack(wb0), target_masks=_unpack(wb1),
            prior_findings=s0.findings, target_findings=s1.findings, changes=changes,
            prior_labels=chexpert_labels({k: v.severity for k, v in s0.findings.items()}, p.devices),
            target_labels=chexpert_labels({k: v.severity for k, v in s1.findings.items()}, p.devices),
            prompt=text.progression_prompt(changes, stable, absent, rng),
            interpretation=text.interpretation(changes, ctr, rng), instruction=text.edit_instruction(changes),
            prior_report=text.report(s0.findings, p.devices, ctr[0], rng),
            target_report=text.report(s1.findings, p.devices, ctr[1], rng),
            ids=self.ids(hist, j), time_interval_days=s1.day - s0.day, acquisitions=(acq0, acq1), bits=(wb0, wb1),
        )
