"""Loader for MIMIC-EDIT-INSTRUCTION (InstructX2X's data set) and SynthCXR's copy of its layout.

Layout: ``ROOT/instructions.csv`` with columns ``split, past_dicom_id, current_dicom_id, instruction`` (more
columns go to ``record.extra``), images ``ROOT/past/<past_dicom_id>.{png,jpg,jpeg,dcm}`` and
``ROOT/current/<current_dicom_id>.{...}``. Each instruction is parsed into an ``EditOp``.

Usage: ``records = load_mimic_edit("mimic-edit", skip_invalid=True)``
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from progemu.data.problems import Problems, check_image_file, make_problems
from progemu.data.records import CXRRecord, EditOp, normalise_split
from progemu.errors import RecordError

COLUMNS = ("split", "past_dicom_id", "current_dicom_id", "instruction")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
# Severity words that v2 instructions may put before the finding ("Add the finding of moderate pleural effusion").
_SEVERITY = r"(?:trace|tiny|minimal|mild|small|moderate|large|severe|massive|extensive|subtle|minor|significant)"
_SEVERITY_RE = re.compile(rf"^(?P<sev>{_SEVERITY}(?:\s*(?:to|-)\s*{_SEVERITY})?)\s+(?P<rest>.+)$", re.I)
_LOCATION_RE = re.compile(r"^(?P<head>.+?)\s*,?\s+(?:in|at|on|within|involving|over)\s+(?:the\s+)?(?P<loc>.+)$", re.I)
_ADD_RE = re.compile(r"^add\s+(?:the\s+)?(?:new\s+)?(?:findings?\s+of\s+)?(?P<rest>.+)$", re.I)
_REMOVE_RE = re.compile(r"^remove\s+(?:the\s+)?(?:findings?\s+of\s+)?(?P<rest>.+)$", re.I)
_CHANGE_RE = re.compile(r"^change\s+(?:the\s+)?(?:level|severity|degree)\s+of\s+(?P<finding>.+?)\s+from\s+(?P<from>.+?)"
                        r"\s+to\s+(?P<to>.+)$", re.I)


def parse_instruction(text: str) -> EditOp:
    """Parse one instruction: "Add the finding of X", "Remove the finding of X", "Change the level of X from A to B".

    v2 slots are tolerated: a severity before the finding (``to_level`` for add, ``from_level`` for remove)
    and a location after it ("... in the left lower lung"). Raises ``ValueError`` on anything else.
    """
    s = " ".join(str(text).split()).rstrip(" .;")
    if m := _CHANGE_RE.match(s):
        finding, location = _split_location(m["finding"])
        to_level, loc2 = _split_location(m["to"])
        return EditOp("change_level", finding.lower(), m["from"].strip().lower(), to_level.lower(),
                      (location or loc2 or "").lower() or None)
    for op, regex in (("add", _ADD_RE), ("remove", _REMOVE_RE)):
        if m := regex.match(s):
            rest, location = _split_location(m["rest"])
            level = None
            if sm := _SEVERITY_RE.match(rest):
                level, rest = sm["sev"].lower(), sm["rest"]
            if not rest.strip() or re.fullmatch(r"(?:the\s+)?findings?(?:\s+of)?", rest.strip(), re.I):
                break  # "Add the finding of" with no finding
            return EditOp(op, rest.strip().lower(), level if op == "remove" else None,
                          level if op == "add" else None, location.lower() if location else None)
    raise ValueError(f"not an Add / Remove / Change-the-level instruction: {text!r}")


def parse_instructions(text: str) -> list[EditOp]:
    """All instructions of a text that chains several with '.' or ';'."""
    parts = [p for p in re.split(r"[.;]\s+(?=[A-Za-z])", str(text).strip()) if p.strip()]
    return [parse_instruction(p) for p in parts]


def _split_location(text: str) -> tuple[str, str | None]:
    m = _LOCATION_RE.match(text.strip())
    return (m["head"].strip(), m["loc"].strip()) if m else (text.strip(), None)


def load_mimic_edit(
    root: str | Path,
    skip_invalid: bool = False,
    skipped_log: str | Path | None = None,
    *,
    verify_images: bool = False,
) -> list[CXRRecord]:
    """One record per csv row. Malformed rows raise ``RecordError`` unless ``skip_invalid``."""
    problems = make_problems("mimic-edit", skip_invalid, skipped_log)
    records = scan_mimic_edit(root, problems, verify_images=verify_images)
    problems.write()
    return records


def find_image(folder: Path, dicom_id: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        if (p := folder / f"{dicom_id}{suffix}").exists():
            return p
    return None


def scan_mimic_edit(root: str | Path, problems: Problems, *, verify_images: bool = False) -> list[CXRRecord]:
    root = Path(root)
    csv_path = root / "instructions.csv"
    if not csv_path.is_file():
        raise RecordError(csv_path, "instructions.csv not found")
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise RecordError(csv_path, f"missing column(s) {', '.join(missing)} (have {', '.join(header)})")
        rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    records, seen = [], set()
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{csv_path}:{line}"
        empty = [c for c in COLUMNS if not (row.get(c) or "").strip()]
        if empty:
            problems.fail(where, f"empty field(s) {', '.join(empty)}", f"line {line}")
            continue
        past, current, text = row["past_dicom_id"].strip(), row["current_dicom_id"].strip(), row["instruction"].strip()
        item = f"{past}-{current}"
        try:
            split = normalise_split(row["split"], where)
            ops = parse_instructions(text)
        except RecordError as err:
            problems.from_error(err, item)
            continue
        except ValueError as err:
            problems.fail(where, str(err), item)
            continue
        images = []
        for folder, dicom_id in (("past", past), ("current", current)):
            path = find_image(root / folder, dicom_id)
            if path is None:
                problems.fail(root / folder / dicom_id, f"no image {dicom_id}{{{','.join(IMAGE_SUFFIXES)}}} in {folder}/", item)
                break
            if not check_image_file(path, problems, item, verify_images):
                break
            images.append(path)
        if len(images) != 2:
            continue
        rid = item if item not in seen else f"{item}-l{line}"  # a pair may carry several instructions
        seen.add(rid)
        extra = {k: v for k, v in row.items() if k and k not in COLUMNS}
        extra.update(past_dicom_id=past, current_dicom_id=current)
        if len(ops) > 1:
            extra["edits"] = ops
        records.append(CXRRecord(id=rid, source="mimic-edit", split=split, prior_image=images[0],
                                 target_image=images[1], prompt=text, edit=ops[0], extra=extra))
    return records
