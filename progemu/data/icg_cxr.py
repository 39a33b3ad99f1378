"""Loader for ICG-CXR (ProgEmu's data set) and SynthCXR, which writes the same layout.

Layout: any tree of pair folders ``.../<pair>/`` holding ``<pair>.json``, ``<pair>-ref-reg.png`` (prior) and
``<pair>-flu-reg.png`` (follow-up registered to the prior). JSON field names are read exactly as ICG-CXR
writes them (``progression-description``, ``changes-of-findings``, ``reference-diseases``, ...).
Every ``synth-*`` field goes to ``record.extra`` with the prefix stripped and ``-`` -> ``_`` (``.png`` values
become paths relative to the pair folder) and ``extra["synthetic"] = True``; ``source`` stays ``"icg-cxr"``.

Usage: ``records = load_icg_cxr("icg-cxr-v1", skip_invalid=True, skipped_log="skipped.jsonl")``
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from progemu.data.problems import Problems, check_image_file, make_problems
from progemu.data.records import CHEXPERT_LABELS, CXRRecord, Report, normalise_split
from progemu.errors import RecordError

REQUIRED_FIELDS = ("progression-description", "changes-of-findings", "split")
_ID_FIELDS = ("subject-id", "reference-study-id", "followup-study-id", "reference-dicom-id", "followup-dicom-id",
              "time-interval", "reg_metric")
_DEMOGRAPHICS = ("age", "sex", "race", "ethnicity")
_LABEL_BY_LOWER = {name.lower(): name for name in CHEXPERT_LABELS}


def load_icg_cxr(
    root: str | Path,
    skip_invalid: bool = False,
    skipped_log: str | Path | None = None,
    *,
    verify_images: bool = False,
) -> list[CXRRecord]:
    """All pairs under ``root``, sorted by path. Malformed pairs raise ``RecordError`` unless ``skip_invalid``."""
    problems = make_problems("icg-cxr", skip_invalid, skipped_log)
    records = scan_icg_cxr(root, problems, verify_images=verify_images)
    problems.write()
    return records


def pair_jsons(root: Path) -> list[Path]:
    """``<pair>/<pair>.json`` files under ``root`` (other JSON files, e.g. a manifest, are not pairs)."""
    return sorted(p for p in root.rglob("*.json") if p.stem == p.parent.name)


def scan_icg_cxr(root: str | Path, problems: Problems, *, verify_images: bool = False) -> list[CXRRecord]:
    root = Path(root)
    if not root.is_dir():
        raise RecordError(root, "ICG-CXR root folder not found")
    records = []
    for jpath in pair_jsons(root):
        try:
            rec = read_pair(jpath)
        except RecordError as err:
            problems.from_error(err, jpath.stem)
            continue
        images = [rec.prior_image, rec.target_image] + [v for v in rec.extra.values() if isinstance(v, Path)]
        if all(check_image_file(p, problems, rec.id, verify_images) for p in images):
            records.append(rec)
    return records


def read_pair(jpath: Path) -> CXRRecord:
    """One ``<pair>.json`` and its two images as a record (images are not opened here)."""
    try:
        data = json.loads(jpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordError(jpath, f"unreadable JSON ({err})") from err
    if not isinstance(data, dict):
        raise RecordError(jpath, "the JSON is not an object")
    for key in REQUIRED_FIELDS:
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise RecordError(jpath, f"missing or empty field {key!r}")
    folder, pair = jpath.parent, jpath.stem
    extra: dict[str, Any] = {k.replace("-", "_"): data[k] for k in _ID_FIELDS if k in data}
    comment = data.get("comment")
    if isinstance(comment, dict):
        extra["confidence"] = comment.get("confidence")
        extra["confidence_reason"] = comment.get("reason")
    for key, value in data.items():
        if key.startswith("synth-"):
            name = key[len("synth-"):].replace("-", "_")
            extra[name] = folder / value if isinstance(value, str) and value.lower().endswith(".png") else value
    if any(k.startswith("synth-") for k in data):
        extra["synthetic"] = True  # the source stays "icg-cxr": it names the format (and so the task)
    return CXRRecord(
        id=pair,
        source="icg-cxr",
        split=normalise_split(data["split"], jpath),
        prior_image=folder / f"{pair}-ref-reg.png",
        target_image=folder / f"{pair}-flu-reg.png",
        prompt=data["progression-description"].strip(),
        interpretation=data["changes-of-findings"].strip(),
        demographics={k: data[k] for k in _DEMOGRAPHICS if k in data and data[k] is not None},
        prior_labels=parse_labels(data.get("reference-diseases"), jpath, "reference-diseases"),
        target_labels=parse_labels(data.get("followup-diseases"), jpath, "followup-diseases"),
        prior_report=_report(data.get("reference-report"), jpath, "reference-report"),
        target_report=_report(data.get("followup-report"), jpath, "followup-report"),
        view=data.get("view"),
        extra=extra,
    )


def parse_labels(value: Any, path: Path, field: str) -> dict[str, float]:
    """CheXpert labels from a ``{name: value}`` dict or a 14-value list; missing (-100, None, NaN) dropped."""
    if value is None:
        return {}
    if isinstance(value, list | tuple):
        if len(value) != len(CHEXPERT_LABELS):
            raise RecordError(path, f"{field!r} has {len(value)} values; {len(CHEXPERT_LABELS)} CheXpert labels expected")
        value = dict(zip(CHEXPERT_LABELS, value))
    if not isinstance(value, dict):
        raise RecordError(path, f"{field!r} must be a dict or a list of {len(CHEXPERT_LABELS)} values")
    labels = {}
    for key, raw in value.items():
        name = _LABEL_BY_LOWER.get(str(key).strip().lower())
        if name is None:
            raise RecordError(path, f"{field!r} has an unknown CheXpert label {key!r}")
        if raw is None or raw == "":
            continue
        try:
            v = float(raw)
        except (TypeError, ValueError) as err:
            raise RecordError(path, f"{field!r}[{key!r}] is not a number: {raw!r}") from err
        if math.isnan(v) or v == -100:
            continue
        if v not in (1.0, 0.0, -1.0):
            raise RecordError(path, f"{field!r}[{key!r}] = {raw!r}; expected 1, 0, -1 or -100")
        labels[name] = v
    return labels


def _report(value: Any, path: Path, field: str) -> Report | None:
    if value is None:
        return None
    if isinstance(value, str):
        return Report(findings=value.strip())
    if not isinstance(value, dict):
        raise RecordError(path, f"{field!r} must be an object with 'findings' and 'impression'")
    return Report(findings=str(value.get("findings") or "").strip(), impression=str(value.get("impression") or "").strip())
