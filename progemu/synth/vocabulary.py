"""The canonical finding vocabulary of SynthCXR, shared by the generator, the texts and the evaluation labeler.

Every finding has one canonical key (``pleural_effusion``), the name used in edit instructions, the synonyms a
radiologist may write, the CheXpert label it sets (plus the CheXpert parents it implies), whether it has a side
and which lung zones it may occupy.
"""

from __future__ import annotations

from dataclasses import dataclass

from progemu.data.records import CHEXPERT_LABELS

SEVERITIES: tuple[str, ...] = ("none", "mild", "moderate", "severe")
SIDES: tuple[str, ...] = ("right", "left")
ZONES: tuple[str, ...] = ("upper", "middle", "lower")
SEXES: tuple[str, ...] = ("male", "female")
AGE_GROUPS: tuple[str, ...] = ("young", "middle", "old")
AGE_RANGES: dict[str, tuple[int, int]] = {"young": (20, 39), "middle": (40, 64), "old": (65, 90)}
CHANGE_TYPES: tuple[str, ...] = ("new", "resolved", "worsened", "improved", "unchanged")


@dataclass(frozen=True)
class FindingSpec:
    """One finding type of the vocabulary."""

    key: str
    name: str  # as used in "Add the finding of <name>"
    label: str  # CheXpert label set to 1.0 when present
    parents: tuple[str, ...]  # CheXpert parent labels implied by it
    synonyms: tuple[str, ...]  # phrases a report may use (lower case), the name first
    lateral: bool  # has a side (right / left)
    zones: tuple[str, ...]  # lung zones it may occupy; () when the location is fixed
    size_words: tuple[str, str, str]  # words for mild / moderate / severe in reports ("small", ...)


FINDINGS: dict[str, FindingSpec] = {
    spec.key: spec
    for spec in (
        FindingSpec("pleural_effusion", "pleural effusion", "Pleural Effusion", (),
                    ("pleural effusion", "effusion", "pleural fluid"), True, ("lower",),
                    ("small", "moderate", "large")),
        FindingSpec("cardiomegaly", "cardiomegaly", "Cardiomegaly", ("Enlarged Cardiomediastinum",),
                    ("cardiomegaly", "enlarged cardiac silhouette", "enlargement of the cardiac silhouette",
                     "cardiac enlargement"), False, (), ("mild", "moderate", "severe")),
        FindingSpec("consolidation", "consolidation", "Consolidation", ("Lung Opacity",),
                    ("consolidation", "airspace opacity", "airspace consolidation", "airspace disease"), True,
                    ZONES, ("patchy", "moderate", "extensive")),
        FindingSpec("edema", "edema", "Edema", ("Lung Opacity",),
                    ("pulmonary edema", "edema", "interstitial edema", "alveolar edema"), False, (),
                    ("mild", "moderate", "severe")),
        FindingSpec("pneumothorax", "pneumothorax", "Pneumothorax", (),
                    ("pneumothorax",), True, ("upper",), ("small", "moderate", "large")),
        FindingSpec("atelectasis", "atelectasis", "Atelectasis", ("Lung Opacity",),
                    ("atelectasis", "plate-like atelectasis", "subsegmental atelectasis", "linear atelectasis"), True,
                    ("lower", "middle"), ("minimal", "moderate", "extensive")),
        FindingSpec("nodule", "lung nodule", "Lung Lesion", ("Lung Opacity",),
                    ("nodule", "pulmonary nodule", "nodular opacity", "mass", "lung nodule"), True, ZONES,
                    ("small", "moderate-sized", "large")),
    )
}
FINDING_KEYS: tuple[str, ...] = tuple(FINDINGS)
# Support devices persist for a patient: context, never an edit target.
DEVICES: tuple[str, ...] = ("endotracheal tube", "nasogastric tube", "central venous catheter", "pacemaker")
DEVICE_LABEL = "Support Devices"


def severity_index(severity: str) -> int:
    """0 for none, 1 mild, 2 moderate, 3 severe."""
    return SEVERITIES.index(severity)


def chexpert_labels(findings: dict[str, str], devices: tuple[str, ...] = ()) -> dict[str, float]:
    """CheXpert labels {name: 1.0/0.0} of a study given {finding key: severity} and its devices."""
    labels = {name: 0.0 for name in CHEXPERT_LABELS}
    any_pathology = False
    for key, severity in findings.items():
        if severity == "none":
            continue
        spec = FINDINGS[key]
        any_pathology = True
        labels[spec.label] = 1.0
        for parent in spec.parents:
            labels[parent] = 1.0
    if devices:
        labels[DEVICE_LABEL] = 1.0
    labels["No Finding"] = 0.0 if any_pathology else 1.0
    return labels


def location_phrase(key: str, side: str | None, zone: str | None) -> str:
    """Where a finding sits, in words: "left lower lung", "right apex", "heart", "both perihilar regions"."""
    if key == "cardiomegaly":
        return "heart"
    if key == "edema":
        return "both perihilar regions"
    if key == "pneumothorax":
        return f"{side} apex"
    if key == "pleural_effusion":
        return f"{side} lower lung"
    return f"{side} {zone} lung"


def label_to_findings(label: str) -> tuple[str, ...]:
    """The finding keys whose own CheXpert label is ``label``."""
    return tuple(k for k, s in FINDINGS.items() if s.label == label)


def resolve_finding(text: str) -> str:
    """The canonical key of a finding given its key, name, CheXpert label or a synonym (case-insensitive)."""
    t = text.strip().lower().replace("_", " ")
    for key, spec in FINDINGS.items():
        if t in (key.replace("_", " "), spec.name, spec.label.lower()) or t in spec.synonyms:
            return key
    raise KeyError(f"unknown finding {text!r}; known: {', '.join(FINDINGS)}")
