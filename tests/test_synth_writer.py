"""SynthCXR on disk: ICG-CXR fields, MIMIC-EDIT csv, exactness after PNG, patient-level splits, resume, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from progemu.data.records import CHEXPERT_LABELS
from progemu.synth import SynthCXR, write_dataset
from progemu.synth.writer import ICG_DIR

# The published ICG-CXR pair fields (see the project's ANCHORS notes).
ICG_FIELDS = ("progression-description", "changes-of-findings", "comment", "reference-report", "followup-report",
              "time-interval", "view", "subject-id", "reference-study-id", "followup-study-id", "reference-dicom-id",
              "followup-dicom-id", "age", "sex", "race", "ethnicity", "split", "reg_metric", "reference-diseases",
              "followup-diseases")
PAIRS, SIZE, SEED = 24, 64, 5


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, PAIRS, size=SIZE, seed=SEED, preview=True, workers=2)
    return root


def _jsons(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / ICG_DIR).glob("*/*.json"))]


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_icg_cxr_fields_and_files(out):
    recs = _jsons(out)
    assert len(recs) == PAIRS
    for rec in recs:
        assert all(k in rec for k in ICG_FIELDS)
        assert set(rec["reference-diseases"]) == set(CHEXPERT_LABELS) == set(rec["followup-diseases"])
        assert set(rec["reference-report"]) == {"findings", "impression"} and 1 <= rec["comment"]["confidence"] <= 5
        assert rec["sex"] in ("M", "F") and rec["split"] in ("train", "validate", "test") and rec["view"] == "PA"
        assert all(k.startswith("synth-") for k in rec if k not in ICG_FIELDS)
        folder = out / ICG_DIR / f"synth-{SEED}-{rec['synth-index']:06d}"
        for suffix in ("ref-reg", "flu-reg", "flu-raw", "change-mask", "ref-findings", "flu-findings"):
            img = _png(folder / f"{folder.name}-{suffix}.png")
            assert img.shape == (SIZE, SIZE) and img.dtype == np.uint8


def test_files_match_the_in_memory_pairs_and_stay_exact_after_png(out):
    gen = SynthCXR(size=SIZE, seed=SEED)
    for i in (0, 3, 10):
        pair = gen.pair(i)
        folder = out / ICG_DIR / pair.pair_id
        prior, cf = _png(folder / f"{pair.pair_id}-ref-reg.png"), _png(folder / f"{pair.pair_id}-flu-reg.png")
        mask = _png(folder / f"{pair.pair_id}-change-mask.png") > 0
        np.testing.assert_array_equal(mask, pair.change_mask)
        np.testing.assert_array_equal(prior[~mask], cf[~mask])
        assert np.abs(prior.astype(int) - np.rint(pair.prior * 255)).max() == 0
        bits = _png(folder / f"{pair.pair_id}-flu-findings.png")
        rec = json.loads((folder / f"{pair.pair_id}.json").read_text())
        for key, mask_k in pair.target_masks.items():
            np.testing.assert_array_equal((bits >> rec["synth-finding-bits"][key]) & 1 == 1, mask_k)


def test_splits_are_disjoint_by_patient_in_json_and_csv(out):
    split_of: dict[str, set] = {}
    for rec in _jsons(out):
        split_of.setdefault(rec["subject-id"], set()).add(rec["split"])
    assert all(len(s) == 1 for s in split_of.values())
    by_dicom = {}
    for rec in _jsons(out):
        by_dicom[rec["reference-dicom-id"]] = rec
    with open(out / "mimic-edit" / "instructions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == ["split", "past_dicom_id", "current_dicom_id", "instruction"]
    for row in rows:
        rec = by_dicom[row["past_dicom_id"]]
        assert row["split"] == rec["split"] and row["instruction"] == rec["synth-instruction"]
        assert (out / "mimic-edit" / "past" / f"{row['past_dicom_id']}.png").is_file()
        assert (out / "mimic-edit" / "current" / f"{row['current_dicom_id']}.png").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pairs"] == PAIRS and sum(manifest["counts"].values()) == PAIRS
    assert manifest["changed_pairs"] == len(rows) and not manifest["failures"]


def test_loaders_read_the_output(out):
    from progemu.data.icg_cxr import load_icg_cxr
    from progemu.data.mimic_edit import load_mimic_edit

    recs = load_icg_cxr(out / "icg-cxr")
    assert len(recs) == PAIRS
    by_id = {r.id: r for r in recs}
    pair = SynthCXR(size=SIZE, seed=SEED).pair(2)
    r = by_id[pair.pair_id]
    assert r.prompt == pair.prompt and r.interpretation == pair.interpretation and r.split == pair.split
    assert r.extra["change_mask"].is_file() and r.extra["instruction"] == pair.instruction
    assert r.extra["sex"] == pair.patient.sex and r.extra["age_group"] == pair.patient.age_group
    assert r.target_labels == pair.target_labels and r.target_image.name.endswith("-flu-reg.png")
    edits = load_mimic_edit(out / "mimic-edit")
    assert edits and all(e.edit is not None for e in edits)
    ops = {e.edit.operation for e in edits}
    assert ops <= {"add", "remove", "change_level"} and "add" in ops


def test_resume_rewrites_only_what_is_missing(out, tmp_path):
    folder = out / ICG_DIR / f"synth-{SEED}-000001"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    other = out / ICG_DIR / f"synth-{SEED}-000002" / f"synth-{SEED}-000002.json"
    mtime = other.stat().st_mtime_ns
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
    write_dataset(out, PAIRS, size=SIZE, seed=SEED)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert other.stat().st_mtime_ns == mtime


def test_cli_writes_data_and_preview(tmp_path):
    from progemu.cli import main

    assert main(["synth", "--out", str(tmp_path / "d"), "--pairs", "4", "--size", "64", "--seed", "1",
                 "--preview"]) == 0
    sheet = Image.open(tmp_path / "d" / "preview.png")
    assert sheet.width >= 4 * 64 and sheet.height > 4 * 64
    assert main(["synth", "--out", str(tmp_path / "e"), "--pairs", "2", "--size", "32"]) == 2
