"""Loader for MIMIC-CXR-JPG image-report pairs (pretraining data).

Layout (as distributed; the CSVs may also be ``.csv.gz``)::

    ROOT/files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg
    ROOT/files/pXX/pXXXXXXXX/sXXXXXXXX.txt          report (or under REPORTS_ROOT/files/..., MIMIC-CXR's own tree)
    ROOT/mimic-cxr-2.0.0-metadata.csv               dicom_id, subject_id, study_id, ViewPosition, ...
    ROOT/mimic-cxr-2.0.0-split.csv                  dicom_id, study_id, subject_id, split
    ROOT/mimic-cxr-2.0.0-chexpert.csv               subject_id, study_id, 14 labels (optional)

One record per image whose ViewPosition is kept (PA/AP by default), with the study's FINDINGS and IMPRESSION.
Usage: ``records = load_mimic_cxr("mimic-cxr-jpg/2.1.0", views=("PA",))``
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Iterator
from pathlib import Path

from progemu.data.problems import Problems, check_image_file, make_problems
from progemu.data.records import CHEXPERT_LABELS, CXRRecord, Report, normalise_split
from progemu.errors import RecordError

METADATA = "mimic-cxr-2.0.0-metadata.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"
CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
# Section names that hold findings / impression text (MIMIC reports are free text with "NAME:" headers).
_FINDINGS = {"findings", "finding", "findings and impression", "findings/impression", "findings & impression"}
_IMPRESSION = {"impression", "impressions", "conclusion", "conclusions", "impression and recommendation"}
_HEADER_RE = re.compile(r"(?m)^[ \t]*(?P<name>[A-Za-z][A-Za-z &/()-]{1,40}?)[ \t]*:")


def extract_sections(text: str) -> tuple[Report, bool]:
    """FINDINGS and IMPRESSION of a free-text report; ``(report, used_fallback)``.

    Headers are upper-case ``NAME:`` at a line start (or a known section name in any case). The last
    occurrence of a section wins (addenda restate it). Without either section, the last paragraph is taken
    as the impression (as MIMIC-CXR's own section script does) and ``used_fallback`` is True.
    """
    headers = [m for m in _HEADER_RE.finditer(text)
               if m["name"].strip().isupper() or m["name"].strip().lower() in _FINDINGS | _IMPRESSION]
    findings = impression = ""
    for i, m in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        body = " ".join(text[m.end():end].split())
        name = m["name"].strip().lower()
        if name in _FINDINGS and body:
            findings = body
        elif name in _IMPRESSION and body:
            impression = body
    if findings or impression:
        return Report(findings=findings, impression=impression), False
    tail = text[headers[-1].end():] if headers else text
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", tail) if p.strip()]
    if not paragraphs:  # e.g. the last header has no body: fall back to the whole text's last paragraph
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    paragraphs = [p for p in paragraphs if p.upper() != "FINAL REPORT"]
    return Report(impression=paragraphs[-1] if paragraphs else ""), True


def _find_csv(root: Path, name: str, required: bool = True) -> Path | None:
    for p in (root / name, root / f"{name}.gz"):
        if p.is_file():
            return p
    if required:
        raise RecordError(root / name, "CSV not found (also looked for .csv.gz)")
    return None


def _read_csv(path: Path, columns: tuple[str, ...]) -> Iterator[dict[str, str]]:
    opener = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    with opener as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise RecordError(path, f"missing column(s) {', '.join(missing)}")
        yield from reader


def _num(value: str) -> str:
    """'p10000032' / 's5041' / '10000032.0' -> digits only."""
    v = str(value).strip().lstrip("ps")
    return v[:-2] if v.endswith(".0") else v


def load_mimic_cxr(
    root: str | Path,
    skip_invalid: bool = False,
    skipped_log: str | Path | None = None,
    *,
    views: tuple[str, ...] = ("PA", "AP"),
    reports_root: str | Path | None = None,
    verify_images: bool = False,
) -> list[CXRRecord]:
    """Image-report records of the kept views. Malformed rows raise ``RecordError`` unless ``skip_invalid``."""
    problems = make_problems("mimic-cxr", skip_invalid, skipped_log)
    records = scan_mimic_cxr(root, problems, views=views, reports_root=reports_root, verify_images=verify_images)
    problems.write()
    return records


def scan_mimic_cxr(
    root: str | Path,
    problems: Problems,
    *,
    views: tuple[str, ...] = ("PA", "AP"),
    reports_root: str | Path | None = None,
    verify_images: bool = False,
) -> list[CXRRecord]:
    root = Path(root)
    if not root.is_dir():
        raise RecordError(root, "MIMIC-CXR-JPG root folder not found")
    report_roots = [root] + ([Path(reports_root)] if reports_root else [])
    split_path = _find_csv(root, SPLIT)
    splits = {r["dicom_id"].strip(): r["split"] for r in _read_csv(split_path, ("dicom_id", "split"))}
    labels: dict[tuple[str, str], dict[str, float]] = {}
    if (label_path := _find_csv(root, CHEXPERT, required=False)) is not None:
        for r in _read_csv(label_path, ("subject_id", "study_id")):
            labels[(_num(r["subject_id"]), _num(r["study_id"]))] = {
                k: float(r[k]) for k in CHEXPERT_LABELS if (r.get(k) or "").strip() not in ("", "nan")}
    meta_path = _find_csv(root, METADATA)
    keep = {v.upper() for v in views}
    reports: dict[tuple[str, str], tuple[Report, bool] | None] = {}
    records = []
    for line, r in enumerate(_read_csv(meta_path, ("dicom_id", "subject_id", "study_id", "ViewPosition")), start=2):
        if (r["ViewPosition"] or "").strip().upper() not in keep:
            continue
        dicom, subject, study = r["dicom_id"].strip(), _num(r["subject_id"]), _num(r["study_id"])
        if not (dicom and subject and study):
            problems.fail(f"{meta_path}:{line}", "empty dicom_id, subject_id or study_id", dicom)
            continue
        if dicom not in splits:
            problems.fail(split_path, f"no split for dicom_id {dicom}", dicom)
            continue
        try:
            split = normalise_split(splits[dicom], split_path)
        except RecordError as err:
            problems.from_error(err, dicom)
            continue
        rel = Path("files", f"p{subject[:2]}", f"p{subject}")
        image = root / rel / f"s{study}" / f"{dicom}.jpg"
        if not check_image_file(image, problems, dicom, verify_images):
            continue
        key = (subject, study)
        if key not in reports:
            reports[key] = _load_report(report_roots, rel / f"s{study}.txt", problems, dicom)
        if reports[key] is None:
            continue
        report, fallback = reports[key]
        extra = {"subject_id": subject, "study_id": study}
        extra.update({k: r[k] for k in ("StudyDate", "StudyTime") if r.get(k)})
        if fallback:
            extra["report_fallback"] = True
        records.append(CXRRecord(id=dicom, source="mimic-cxr", split=split, prior_image=image, prior_report=report,
                                 prior_labels=dict(labels.get(key, {})), view=r["ViewPosition"].strip().upper(),
                                 extra=extra))
    return records


def _load_report(roots: list[Path], rel: Path, problems: Problems, item: str) -> tuple[Report, bool] | None:
    path = next((r / rel for r in roots if (r / rel).is_file()), None)
    if path is None:
        problems.fail(roots[-1] / rel, "report file not found", item)
        return None
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        problems.fail(path, f"unreadable report ({err})", item)
        return None
    report, fallback = extract_sections(text)
    if not report.findings and not report.impression:
        problems.fail(path, "empty report", item)
        return None
    return report, fallback
