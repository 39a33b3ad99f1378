"""One record schema for every data source (ICG-CXR, MIMIC-EDIT-INSTRUCTION, MIMIC-CXR-JPG, SynthCXR)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# The 14 CheXpert observations, in the order CheXpert / ICG-CXR list them.
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
SPLITS: tuple[str, ...] = ("train", "validate", "test")
SPLIT_ALIASES: dict[str, str] = {"train": "train", "training": "train", "validate": "validate", "val": "validate",
                                 "valid": "validate", "validation": "validate", "test": "test", "testing": "test"}
Source = Literal["icg-cxr", "mimic-edit", "mimic-cxr", "synthcxr"]


@dataclass
class Report:
    """A radiology report reduced to its two sections (either may be empty)."""

    findings: str = ""
    impression: str = ""

    @property
    def text(self) -> str:
        parts = []
        if self.findings:
            parts.append(f"FINDINGS: {self.findings}")
        if self.impression:
            parts.append(f"IMPRESSION: {self.impression}")
        return " ".join(parts)


@dataclass
class EditOp:
    """A parsed edit instruction: "Add the finding of X", "Remove ...", "Change the level of X from A to B"."""

    operation: Literal["add", "remove", "change_level"]
    finding: str
    from_level: str | None = None
    to_level: str | None = None
    location: str | None = None


@dataclass
class CXRRecord:
    """One example: a prior study, optionally a target (follow-up / counterfactual) and the texts between them.

    Image-report pretraining records use ``prior_image`` + ``prior_report`` and leave the target empty.
    Labels are the 14 CheXpert observations: 1.0 positive, 0.0 negative, -1.0 uncertain, absent = missing.
    """

    id: str
    source: Source
    split: str
    prior_image: Path
    target_image: Path | None = None
    prompt: str | None = None
    interpretation: str | None = None
    edit: EditOp | None = None
    region_mask: Path | None = None
    demographics: dict[str, Any] = field(default_factory=dict)
    prior_labels: dict[str, float] = field(default_factory=dict)
    target_labels: dict[str, float] = field(default_factory=dict)
    prior_report: Report | None = None
    target_report: Report | None = None
    view: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (paths as strings)."""

        def conv(v: Any) -> Any:
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [conv(x) for x in v]
            return v

        return conv(dataclasses.asdict(self))


def normalise_split(value: str, path: str | Path) -> str:
    """Map split spellings to train / validate / test; an unknown split is a RecordError naming the file."""
    from progemu.errors import RecordError

    key = str(value).strip().lower()
    if key not in SPLIT_ALIASES:
        raise RecordError(path, f"unknown split {value!r} (expected one of {', '.join(SPLITS)})")
    return SPLIT_ALIASES[key]
