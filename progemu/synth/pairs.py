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
from progemu.findings import FINDING_KEYS
from progemu.synth import text
from progemu.synth.anatomy import Patient
from progemu.synth.findings import Change, FindingState
from progemu.synth.history import PAIRS_PER_PATIENT, PatientHistory, diff_findings, draw_history
from progemu.synth.render import (
    Acquisition,
    Warp,
    add_noise,
    expose,
    noise_field,
    study_attenuation,
    study_ctr,
)
from progemu.synth.static import StaticLayers, static_layers
from progemu.synth.vocabulary import chexpert_labels

GENERATOR_VERSION = "synthcxr-1.0"
CHANGE_THRESHOLD = 1.0 / 255  # a pixel belongs to the change mask when the noise-free images differ by more


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
            self._hist[patient_index] = draw_history(self.seed, patient_index)
            while len(self._hist) > 8:
                self._hist.popitem(last=False)
        return self._hist[patient_index]

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
