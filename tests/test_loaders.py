"""Loaders of ICG-CXR, MIMIC-EDIT-INSTRUCTION and MIMIC-CXR-JPG read format-faithful fixtures field by field."""

import csv
import gzip
import json
import shutil
from pathlib import Path

import pytest
from formats import (
    CXR_IMAGES,
    REPORT_NO_SECTIONS,
    icg_pair_json,
    write_icg_pair,
    write_mimic_cxr,
    write_mimic_edit,
)

from progemu.cli import main
from progemu.data import CHEXPERT_LABELS, EditOp, Report, load_records
from progemu.data.icg_cxr import load_icg_cxr
from progemu.data.mimic_cxr import extract_sections, load_mimic_cxr
from progemu.data.mimic_edit import load_mimic_edit, parse_instruction
from progemu.errors import RecordError


# ----------------------------------------------------------------------------------------------- ICG-CXR
def test_icg_cxr_fields(tmp_path):
    root = tmp_path / "icg-cxr-v1"
    folder = write_icg_pair(root / "mimic_cxr" / "pa" / "1" / "10000001", "p10000001_s1_s2")
    write_icg_pair(root / "chexpertplus" / "pa" / "1", "pairB", dict(icg_pair_json("pairB", "test", True)))
    (root / "manifest.json").write_text("{}")  # not a pair
    recs = {r.id: r for r in load_icg_cxr(root)}
    assert set(recs) == {"p10000001_s1_s2", "pairB"}
    r = recs["p10000001_s1_s2"]
    data = icg_pair_json("p10000001_s1_s2")
    assert r.source == "icg-cxr" and r.split == "train" and r.view == "PA"
    assert r.prior_image == folder / "p10000001_s1_s2-ref-reg.png"
    assert r.target_image == folder / "p10000001_s1_s2-flu-reg.png"
    assert r.prompt == data["progression-description"] and r.interpretation == data["changes-of-findings"]
    assert r.demographics == {"age": 61, "sex": "F", "race": "WHITE", "ethnicity": "not hispanic"}
    assert r.prior_report == Report("Lungs are clear.", "No acute process.")
    assert r.target_report == Report("Small left effusion.", "New left effusion.")
    assert r.prior_labels == {"Pleural Effusion": 0.0, "No Finding": 1.0}  # -100 = missing is dropped
    assert r.target_labels == {"Pleural Effusion": 1.0, "Cardiomegaly": -1.0}
    for key in ("subject-id", "reference-study-id", "followup-study-id", "reference-dicom-id", "followup-dicom-id",
                "time-interval", "reg_metric"):
        assert r.extra[key.replace("-", "_")] == data[key]
    assert r.extra["confidence"] == 4 and r.extra["confidence_reason"] == "invented reason"
    assert recs["pairB"].split == "test" and recs["pairB"].prior_labels == r.prior_labels  # 14-list form
    json.dumps(r.to_dict())


def test_icg_cxr_synth_fields_go_to_extra(tmp_path):
    data = icg_pair_json("s1") | {"synth-change-mask": "s1-change-mask.png", "synth-prior-findings": ["edema"],
                                  "synth-age-group": "60-69", "synth-instruction": "Add the finding of edema"}
    folder = write_icg_pair(tmp_path, "s1", data)
    (folder / "s1-change-mask.png").write_bytes((folder / "s1-ref-reg.png").read_bytes())
    (r,) = load_icg_cxr(tmp_path)
    assert r.extra["change_mask"] == folder / "s1-change-mask.png"
    assert r.extra["prior_findings"] == ["edema"] and r.extra["age_group"] == "60-69"
    assert r.extra["instruction"] == "Add the finding of edema" and r.extra["synthetic"] is True


@pytest.mark.parametrize(("breakage", "fragment"), [
    ("missing_field", "progression-description"),
    ("unknown_split", "unknown split"),
    ("missing_image", "image file not found"),
    ("bad_json", "unreadable JSON"),
    ("bad_labels", "CheXpert"),
    ("empty_image", "empty"),
])
def test_icg_cxr_malformed_pair_fails_then_skips(tmp_path, breakage, fragment):
    root = tmp_path / "data"
    write_icg_pair(root, "good")
    data = icg_pair_json("bad")
    if breakage == "missing_field":
        del data["progression-description"]
    elif breakage == "unknown_split":
        data["split"] = "holdout"
    elif breakage == "bad_labels":
        data["followup-diseases"] = [1.0, 0.0]
    folder = write_icg_pair(root, "bad", data)
    if breakage == "missing_image":
        (folder / "bad-flu-reg.png").unlink()
    elif breakage == "bad_json":
        (folder / "bad.json").write_text("{not json")
    elif breakage == "empty_image":
        (folder / "bad-ref-reg.png").write_bytes(b"")
    with pytest.raises(RecordError) as info:
        load_icg_cxr(root)
    assert "bad" in info.value.path and fragment in info.value.reason
    log = tmp_path / "skipped.jsonl"
    recs = load_icg_cxr(root, skip_invalid=True, skipped_log=log)
    assert [r.id for r in recs] == ["good"]
    (entry,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert "bad" in entry["path"] and fragment in entry["reason"]


# -------------------------------------------------------------------------------------------- MIMIC-EDIT
def test_parse_instruction():
    assert parse_instruction("Add the finding of pleural effusion") == EditOp("add", "pleural effusion")
    assert parse_instruction("Remove the finding of cardiomegaly.") == EditOp("remove", "cardiomegaly")
    assert parse_instruction("Change the level of edema from mild to moderate") == EditOp(
        "change_level", "edema", "mild", "moderate")
    assert parse_instruction("Add the finding of moderate pleural effusion in the left lower lung") == EditOp(
        "add", "pleural effusion", None, "moderate", "left lower lung")
    assert parse_instruction("Change the level of atelectasis in the right lung from small to large") == EditOp(
        "change_level", "atelectasis", "small", "large", "right lung")
    for bad in ("Make it look worse", "Add the finding of", "Change the level of edema"):
        with pytest.raises(ValueError):
            parse_instruction(bad)


def test_mimic_edit_fields(tmp_path):
    root = write_mimic_edit(tmp_path / "me", extra_columns={"study_gap_days": ["10", "20", "30", "40"]})
    recs = load_mimic_edit(root)
    assert [r.id for r in recs] == ["aaaa-0001-bbbb-0001", "aaaa-0002-bbbb-0002", "aaaa-0003-bbbb-0003",
                                    "aaaa-0004-bbbb-0004"]
    r = recs[1]
    assert r.source == "mimic-edit" and r.split == "train"
    assert r.prior_image == root / "past" / "aaaa-0002.jpg" and r.target_image == root / "current" / "bbbb-0002.jpg"
    assert r.prompt == "Remove the finding of cardiomegaly" and r.edit == EditOp("remove", "cardiomegaly")
    assert r.extra == {"study_gap_days": "20", "past_dicom_id": "aaaa-0002", "current_dicom_id": "bbbb-0002"}
    assert recs[2].split == "validate" and recs[2].edit.to_level == "moderate"
    assert recs[3].edit.location == "left lower lung"


def test_mimic_edit_malformed_rows(tmp_path):
    rows = [("train", "p1", "c1", "Add the finding of edema"), ("holdout", "p2", "c2", "Add the finding of edema"),
            ("train", "p3", "c3", "Make it look worse"), ("test", "p4", "c4", "Remove the finding of edema"),
            ("train", "", "c5", "Add the finding of edema")]
    root = write_mimic_edit(tmp_path / "me", rows=rows)
    (root / "current" / "c4.png").unlink()
    with pytest.raises(RecordError) as info:
        load_mimic_edit(root)
    assert "instructions.csv:3" in info.value.path and "unknown split" in info.value.reason
    log = tmp_path / "skipped.csv"
    recs = load_mimic_edit(root, skip_invalid=True, skipped_log=log)
    assert [r.id for r in recs] == ["p1-c1"]
    with open(log) as f:
        reasons = [row["reason"] for row in csv.DictReader(f)]
    assert len(reasons) == 4
    assert any("unknown split" in x for x in reasons) and any("not an Add" in x for x in reasons)
    assert any("no image c4" in x for x in reasons) and any("empty field" in x for x in reasons)
    (root / "instructions.csv").write_text("split,past,current,instruction\n")
    with pytest.raises(RecordError, match="past_dicom_id"):
        load_mimic_edit(root)


# --------------------------------------------------------------------------------------------- MIMIC-CXR
def test_extract_sections():
    report, fallback = extract_sections(REPORT_NO_SECTIONS)
    assert fallback and report == Report(impression="Invented last paragraph.")
    report, fallback = extract_sections("FINDINGS: a.\nIMPRESSION: b.\nADDENDUM:\nIMPRESSION: c.")
    assert not fallback and report == Report("a.", "c.")  # the last statement of a section wins


def test_mimic_cxr_fields(tmp_path):
    root = write_mimic_cxr(tmp_path / "mimic-cxr-jpg", reports={"50000003": REPORT_NO_SECTIONS})
    recs = {r.id: r for r in load_mimic_cxr(root)}
    assert set(recs) == {"d0001", "d0003", "d0004"}  # the LATERAL image is not kept
    r = recs["d0001"]
    assert r.source == "mimic-cxr" and r.split == "train" and r.view == "PA" and r.target_image is None
    assert r.prior_image == root / "files" / "p10" / "p10000001" / "s50000001" / "d0001.jpg"
    assert r.prior_report == Report("Invented findings line one. The heart size is normal.", "No invented acute process.")
    assert r.prior_labels == {"Edema": 1.0, "Pleural Effusion": -1.0, "Cardiomegaly": 0.0}
    assert r.extra["subject_id"] == "10000001" and r.extra["study_id"] == "50000001"
    assert recs["d0003"].split == "validate" and recs["d0003"].view == "AP"
    assert recs["d0004"].prior_report.impression == "Invented last paragraph." and recs["d0004"].extra["report_fallback"]
    assert set(CHEXPERT_LABELS) >= set(r.prior_labels)
    assert [x.id for x in load_mimic_cxr(root, views=("PA",))] == ["d0001", "d0004"]


def test_mimic_cxr_gz_csvs_and_separate_report_tree(tmp_path):
    root = write_mimic_cxr(tmp_path / "jpg")
    for name in ("mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-split.csv", "mimic-cxr-2.0.0-chexpert.csv"):
        (root / f"{name}.gz").write_bytes(gzip.compress((root / name).read_bytes()))
        (root / name).unlink()
    reports = tmp_path / "mimic-cxr-reports"
    for txt in (root / "files").rglob("*.txt"):
        dest = reports / txt.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(txt, dest)
    assert len(load_mimic_cxr(root, reports_root=reports)) == 3


def test_mimic_cxr_malformed(tmp_path):
    images = CXR_IMAGES + [("d0005", "12000005", "50000005", "PA", "train"), ("d0006", "12000006", "50000006", "PA", "x")]
    root = write_mimic_cxr(tmp_path / "jpg", images=images)
    (root / "files" / "p12" / "p12000005" / "s50000005.txt").unlink()
    (root / "files" / "p10" / "p10000002" / "s50000002" / "d0003.jpg").unlink()
    with pytest.raises(RecordError):
        load_mimic_cxr(root)
    recs = load_mimic_cxr(root, skip_invalid=True, skipped_log=tmp_path / "s.jsonl")
    assert sorted(r.id for r in recs) == ["d0001", "d0004"]
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert sorted(reasons) == sorted(["image file not found", "report file not found", "unknown split 'x' (expected "
                                                                                       "one of train, validate, test)"])
    (root / "mimic-cxr-2.0.0-split.csv").unlink()
    with pytest.raises(RecordError, match="split.csv"):
        load_mimic_cxr(root)


# ------------------------------------------------------------------------------------ dispatch and check
def test_load_records_dispatch(tmp_path, monkeypatch):
    write_icg_pair(tmp_path / "icg", "p1")
    assert [r.id for r in load_records(tmp_path / "icg", "icg-cxr")] == ["p1"]
    assert len(load_records(write_mimic_edit(tmp_path / "me"), "mimic-edit")) == 4
    assert len(load_records(write_mimic_cxr(tmp_path / "mc"), "mimic-cxr", views=("PA",))) == 2
    with pytest.raises(ValueError, match="unknown data format"):
        load_records(tmp_path, "chexpert")
    monkeypatch.chdir(tmp_path)  # skip_invalid without a log path writes ./skipped-<fmt>.jsonl, even when empty
    load_records(tmp_path / "icg", "icg-cxr", skip_invalid=True)
    assert Path(tmp_path / "skipped-icg-cxr.jsonl").read_text() == ""


def test_data_check_command(tmp_path, capsys):
    root = tmp_path / "icg"
    write_icg_pair(root, "a")
    write_icg_pair(root, "b", icg_pair_json("b", "validate"))
    assert main(["data", "check", str(root), "--format", "icg-cxr"]) == 0
    out = capsys.readouterr().out
    assert "2 valid records" in out and "train: 1" in out and "validate: 1" in out and "0 problem(s)" in out
    (root / "b" / "b-flu-reg.png").write_bytes(b"garbage that is not a png")  # only decoding finds this
    data = icg_pair_json("c")
    del data["split"]
    write_icg_pair(root, "c", data)
    assert main(["data", "check", str(root), "--format", "icg-cxr"]) == 1
    out = capsys.readouterr().out
    assert "1 valid records" in out and "2 problem(s)" in out
    assert "b-flu-reg.png: unreadable image" in out and "c.json: missing or empty field 'split'" in out
    assert main(["data", "check", str(tmp_path / "me"), "--format", "mimic-edit"]) == 2  # no instructions.csv
    assert "instructions.csv not found" in capsys.readouterr().err
    write_mimic_cxr(tmp_path / "mc")
    assert main(["data", "check", str(tmp_path / "mc"), "--format", "mimic-cxr", "--views", "PA"]) == 0
    assert "train: 1" in capsys.readouterr().out


def test_reads_synthcxr_writer_output(tmp_path):
    writer = pytest.importorskip("progemu.synth.writer")
    manifest = writer.write_dataset(tmp_path / "syn", pairs=6, size=64, seed=0)
    icg = load_records(tmp_path / "syn", "icg-cxr")
    assert len(icg) == 6 and all(r.extra["synthetic"] and r.extra["change_mask"].is_file() for r in icg)
    assert {s: sum(r.split == s for r in icg) for s in manifest["counts"]} == manifest["counts"]
    edit = load_records(tmp_path / "syn" / "mimic-edit", "mimic-edit")
    assert len(edit) == manifest["changed_pairs"] and all(r.edit is not None for r in edit)
    assert main(["data", "check", str(tmp_path / "syn"), "--format", "icg-cxr"]) == 0
