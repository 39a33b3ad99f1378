"""Writers of tiny fixtures in the exact real formats (invented texts and images only; never real data).

ICG-CXR pair folders, MIMIC-EDIT-INSTRUCTION csv + image folders, a MIMIC-CXR-JPG tree with its CSVs and
reports, and DICOM files built with pydicom.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from progemu.data.records import CHEXPERT_LABELS


def chest(h: int = 40, w: int = 32, seed: int = 0) -> np.ndarray:
    """A smooth invented 'chest' in [0, 1]: bright mediastinum, dark lungs, a few blobs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = 0.3 + 0.5 * np.exp(-((x - 0.5) ** 2) / 0.01)
    for _ in range(4):
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.15)
        img = img + 0.3 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    return (img / img.max()).astype(np.float32)


def save_png(path: Path, arr01: np.ndarray, bits: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    top = 255 if bits == 8 else 65535
    data = np.round(np.clip(arr01, 0, 1) * top).astype(np.uint8 if bits == 8 else np.uint16)
    Image.fromarray(data).save(path)
    return path


# --------------------------------------------------------------------------------------------- ICG-CXR
def icg_pair_json(pair: str, split: str = "train", labels_as_list: bool = False) -> dict:
    ref = {name: -100.0 for name in CHEXPERT_LABELS} | {"Pleural Effusion": 0.0, "No Finding": 1.0}
    flu = {name: -100.0 for name in CHEXPERT_LABELS} | {"Pleural Effusion": 1.0, "Cardiomegaly": -1.0}
    if labels_as_list:
        ref = [ref[n] for n in CHEXPERT_LABELS]
    return {
        "progression-description": "Mild pleural effusion has developed in the left lower lung.",
        "changes-of-findings": "There is new blunting of the left costophrenic angle.",
        "comment": {"confidence": 4, "reason": "invented reason"},
        "reference-report": {"findings": "Lungs are clear.", "impression": "No acute process."},
        "followup-report": {"findings": "Small left effusion.", "impression": "New left effusion."},
        "time-interval": 12,
        "view": "PA",
        "subject-id": "10000001",
        "reference-study-id": "50000001",
        "followup-study-id": "50000002",
        "reference-dicom-id": f"{pair}-ref",
        "followup-dicom-id": f"{pair}-flu",
        "age": 61,
        "sex": "F",
        "race": "WHITE",
        "ethnicity": "not hispanic",
        "split": split,
        "reg_metric": 0.93,
        "reference-diseases": ref,
        "followup-diseases": flu,
    }


def write_icg_pair(root: Path, pair: str, data: dict | None = None, size: int = 32, seed: int = 0,
                   images: bool = True) -> Path:
    """``root/<pair>/<pair>.json`` + ``-ref-reg.png`` + ``-flu-reg.png``; returns the pair folder."""
    folder = root / pair
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{pair}.json").write_text(json.dumps(icg_pair_json(pair) if data is None else data, indent=1))
    if images:
        save_png(folder / f"{pair}-ref-reg.png", chest(size, size, seed))
        save_png(folder / f"{pair}-flu-reg.png", chest(size, size, seed + 1))
    return folder


# ------------------------------------------------------------------------------------------ MIMIC-EDIT
EDIT_ROWS = [
    ("train", "aaaa-0001", "bbbb-0001", "Add the finding of pleural effusion"),
    ("train", "aaaa-0002", "bbbb-0002", "Remove the finding of cardiomegaly"),
    ("validate", "aaaa-0003", "bbbb-0003", "Change the level of edema from mild to moderate"),
    ("test", "aaaa-0004", "bbbb-0004", "Add the finding of moderate pleural effusion in the left lower lung"),
]


def write_mimic_edit(root: Path, rows=EDIT_ROWS, extra_columns: dict[str, list[str]] | None = None,
                     suffixes: tuple[str, ...] = (".png", ".jpg", ".png", ".png"), size: int = 32) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    header = ["split", "past_dicom_id", "current_dicom_id", "instruction"] + list(extra_columns or {})
    with open(root / "instructions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, row in enumerate(rows):
            w.writerow(list(row) + [vals[i] for vals in (extra_columns or {}).values()])
    for i, (_, past, current, _) in enumerate(rows):
        suffix = suffixes[i % len(suffixes)]
        for folder, dicom in (("past", past), ("current", current)):
            if not dicom:
                continue
            path = root / folder / f"{dicom}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((chest(size, size, i) * 255).astype(np.uint8)).save(path)
    return root


# ------------------------------------------------------------------------------------------- MIMIC-CXR
REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ with invented cough

 COMPARISON:  None.

 FINDINGS:

 Invented findings line one.  The heart size is
 normal.

 IMPRESSION:

 No invented acute process.
"""
REPORT_NO_SECTIONS = """                                 FINAL REPORT
 HISTORY:  invented.

 Lungs are clear.

 Invented last paragraph.
"""
# (dicom_id, subject_id, study_id, ViewPosition, split)
CXR_IMAGES = [
    ("d0001", "10000001", "50000001", "PA", "train"),
    ("d0002", "10000001", "50000001", "LATERAL", "train"),
    ("d0003", "10000002", "50000002", "AP", "validate"),
    ("d0004", "11000003", "50000003", "PA", "test"),
]


def write_mimic_cxr(root: Path, images=CXR_IMAGES, reports: dict[str, str] | None = None, size: int = 32) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    reports = reports or {}
    with open(root / "mimic-cxr-2.0.0-metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"])
        for dicom, subject, study, view, _ in images:
            w.writerow([dicom, subject, study, "CHEST (PA AND LAT)", view, size, size, "21800101", "101010.123",
                        "CHEST (PA AND LAT)", "postero-anterior", "Erect"])
    with open(root / "mimic-cxr-2.0.0-split.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dicom_id", "study_id", "subject_id", "split"])
        for dicom, subject, study, _, split in images:
            w.writerow([dicom, study, subject, split])
    label_cols = sorted(CHEXPERT_LABELS)  # the real CSV lists the labels alphabetically
    with open(root / "mimic-cxr-2.0.0-chexpert.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject_id", "study_id"] + label_cols)
        for subject, study in sorted({(s, st) for _, s, st, _, _ in images}):
            vals = {c: "" for c in label_cols} | {"Edema": "1.0", "Pleural Effusion": "-1.0", "Cardiomegaly": "0.0"}
            w.writerow([subject, study] + [vals[c] for c in label_cols])
    for i, (dicom, subject, study, _, _) in enumerate(images):
        study_dir = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        study_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray((chest(size, size, i) * 255).astype(np.uint8)).save(study_dir / f"{dicom}.jpg", quality=95)
        (study_dir.parent / f"s{study}.txt").write_text(reports.get(study, REPORT))
    return root


# ----------------------------------------------------------------------------------------------- DICOM
def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                slope: float | None = None, intercept: float | None = None, window: tuple[float, float] | None = None,
                frames: int = 1, rle: bool = False, transfer_syntax: str | None = None,
                with_pixels: bool = True) -> Path:
    """A secondary-capture DICOM of unsigned integer ``pixels`` (``(H, W)`` or ``(F, H, W)``)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientName = "CR", "INVENTED", "Invented^Patient"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.Rows, ds.Columns = pixels.shape[-2], pixels.shape[-1]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0.0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if with_pixels:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    if rle:
        ds.compress(RLELossless)
    elif transfer_syntax is not None:  # fake compressed payload: decoding must fail before touching it
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9" * 8])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
