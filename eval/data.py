"""Records -> what the evaluators and metrics need: labelled image tables and evaluation items.

Works on any loader output (``CXRRecord``): SynthCXR written by ``progemu synth``, ICG-CXR, MIMIC-CXR.
Attributes: sex (``male``/``female``), age group (``young`` < 40 <= ``middle`` < 65 <= ``old``, SynthCXR's
groups; from ``extra["age_group"]`` or the numeric age), race where the record has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from progemu.data.records import CHEXPERT_LABELS, CXRRecord
from progemu.errors import RecordError

AGE_GROUPS: tuple[str, ...] = ("young", "middle", "old")
_SEX = {"m": "male", "male": "male", "man": "male", "f": "female", "female": "female", "woman": "female"}


def load_records(root: str | Path, source: str = "icg-cxr") -> list[CXRRecord]:
    """Records of a data folder through the package's loaders (``DIR`` or ``DIR/<source>``)."""
    root = Path(root)
    if (root / source).is_dir():
        root = root / source
    from progemu.data import loaders

    return loaders.load_records(root, source)


def load_gray(path: str | Path, size: int | None = None) -> np.ndarray:
    """A [0, 1] float32 image through the package's ingestion (any format it accepts)."""
    from progemu.data.ingest import IngestOptions, load_image

    return load_image(path, IngestOptions(size=size))


def sex_of(rec: CXRRecord) -> str | None:
    value = rec.extra.get("sex", rec.demographics.get("sex"))
    return _SEX.get(str(value).strip().lower()) if value not in (None, "") else None


def age_group_of(rec: CXRRecord) -> str | None:
    group = rec.extra.get("age_group", rec.demographics.get("age_group"))
    if group in AGE_GROUPS:
        return str(group)
    try:
        age = float(rec.demographics.get("age"))
    except (TypeError, ValueError):
        return None
    return "young" if age < 40 else "middle" if age < 65 else "old"


def race_of(rec: CXRRecord) -> str | None:
    value = rec.demographics.get("race")
    text = str(value).strip().lower() if value is not None else ""
    return None if text in ("", "unknown", "none", "nan", "other", "unable to obtain", "patient declined to answer") \
        else text


ATTRIBUTES = {"sex": sex_of, "age_group": age_group_of, "race": race_of}


def label_row(labels: dict[str, float]) -> np.ndarray:
    """(14,) float: 1 positive, 0 negative, NaN missing or uncertain (uncertain labels are not trained on)."""
    row = np.full(len(CHEXPERT_LABELS), np.nan, np.float32)
    for j, name in enumerate(CHEXPERT_LABELS):
        v = labels.get(name)
        if v is not None and float(v) in (0.0, 1.0):
            row[j] = float(v)
    return row


@dataclass
class ImageTable:
    """Images with their finding labels and attributes: ``images`` (N, S, S), ``labels`` (N, 14)."""

    images: np.ndarray
    labels: np.ndarray
    attributes: dict[str, list[str | None]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def from_records(cls, records: Sequence[CXRRecord], size: int, use_targets: bool = True) -> ImageTable:
        """Every prior (and target) image of ``records`` at ``size`` px with its own study's labels."""
        imgs, rows, attrs = [], [], {k: [] for k in ATTRIBUTES}
        for rec in records:
            studies = [(rec.prior_image, rec.prior_labels)]
            if use_targets and rec.target_image is not None:
                studies.append((rec.target_image, rec.target_labels))
            for path, labels in studies:
                imgs.append(load_gray(path, size))
                rows.append(label_row(labels))
                for k, fn in ATTRIBUTES.items():
                    attrs[k].append(fn(rec))
        images = np.stack(imgs) if imgs else np.zeros((0, size, size), np.float32)
        labels = np.stack(rows) if rows else np.zeros((0, len(CHEXPERT_LABELS)), np.float32)
        return cls(images, labels, attrs)

    @classmethod
    def from_synth(cls, pairs: Sequence[Any]) -> ImageTable:
        """In-memory ``progemu.synth.SynthPair`` objects: each prior and counterfactual with its labels."""
        imgs, rows, attrs = [], [], {k: [] for k in ATTRIBUTES}
        for p in pairs:
            for img, labels in ((p.prior, p.prior_labels), (p.counterfactual, p.target_labels)):
                imgs.append(np.asarray(img, np.float32))
                rows.append(label_row(labels))
                attrs["sex"].append(p.attributes["sex"])
                attrs["age_group"].append(p.attributes["age_group"])
                attrs["race"].append(None)
        return cls(np.stack(imgs), np.stack(rows), attrs)


@dataclass
class EvalItem:
    """One evaluation example: inputs, references and ground truth (paths; images are loaded on demand)."""

    id: str
    prompt: str
    reference: str
    prior_path: Path
    target_path: Path | None
    change_mask_path: Path | None
    prior_labels: dict[str, float]
    target_labels: dict[str, float]
    attributes: dict[str, str | None]
    extra: dict[str, Any] = field(default_factory=dict)

    def prompted_findings(self) -> dict[str, float]:
        """{finding: follow-up state} for the findings the prompt changes: labels that differ between prior and
        follow-up and that the prompt names (the labeler reads it); all differing labels where it names none
        (parent labels such as Lung Opacity change along with their child but are rarely named)."""
        from eval.labeler import label_text

        changed = {}
        for name in CHEXPERT_LABELS:
            a, b = self.prior_labels.get(name), self.target_labels.get(name)
            if a in (0.0, 1.0) and b in (0.0, 1.0) and a != b and name != "No Finding":
                changed[name] = float(b)
        named = set(label_text(self.prompt).findings)
        return {k: v for k, v in changed.items() if k in named} or changed


def _mask_path(rec: CXRRecord) -> Path | None:
    value = rec.extra.get("change_mask") or rec.extra.get("change-mask")
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() or path.exists() else rec.prior_image.parent / path


def eval_items(records: Sequence[CXRRecord], split: str | None = "test", limit: int | None = None) -> list[EvalItem]:
    """Evaluation items of one split (all splits when ``split`` is None), first ``limit`` of them."""
    items = []
    for rec in records:
        if split and rec.split != split:
            continue
        if not rec.prompt and not rec.extra.get("instruction"):
            raise RecordError(rec.prior_image, f"record {rec.id} has no prompt to evaluate")
        items.append(EvalItem(
            id=rec.id, prompt=rec.prompt or str(rec.extra.get("instruction")), reference=rec.interpretation or "",
            prior_path=rec.prior_image, target_path=rec.target_image, change_mask_path=_mask_path(rec),
            prior_labels=dict(rec.prior_labels), target_labels=dict(rec.target_labels),
            attributes={k: fn(rec) for k, fn in ATTRIBUTES.items()}, extra=dict(rec.extra)))
        if limit and len(items) >= limit:
            break
    return items
