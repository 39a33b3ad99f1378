"""SynthCXR's generator vocabulary: severities, sides, demographics, change types, devices, CheXpert labels of a
study and location phrases.

The findings themselves (``FINDINGS``: key, name, synonyms, CheXpert label and parents, side, zones) are the
package's one finding vocabulary, ``progemu.findings``, which inference and evaluation share with the generator.
"""

from __future__ import annotations

from progemu.data.records import CHEXPERT_LABELS
from progemu.findings import FINDINGS

SEVERITIES: tuple[str, ...] = ("none", "mild", "moderate", "severe")
SIDES: tuple[str, ...] = ("right", "left")
SEXES: tuple[str, ...] = ("male", "female")
AGE_GROUPS: tuple[str, ...] = ("young", "middle", "old")
AGE_RANGES: dict[str, tuple[int, int]] = {"young": (20, 39), "middle": (40, 64), "old": (65, 90)}
CHANGE_TYPES: tuple[str, ...] = ("new", "resolved", "worsened", "improved", "unchanged")


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
