"""Write SynthCXR to disk in the ICG-CXR and MIMIC-EDIT-INSTRUCTION layouts, atomically and resumably.

Run: ``progemu synth --out data/synthcxr-128 --pairs 2000 --size 128 --seed 0 --preview``

Layout (see docs/architecture.md)::

    OUT/icg-cxr/synthcxr/pa/<pair>/<pair>.json (+ -ref-reg, -flu-reg, -flu-raw, -change-mask,
                                                  -ref-findings, -flu-findings .png)
    OUT/mimic-edit/instructions.csv, past/<dicom>.png, current/<dicom>.png
    OUT/manifest.json, OUT/preview.png (with --preview)
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import shutil
import sys
import textwrap
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from progemu.findings import FINDING_KEYS
from progemu.io import write_text_atomic
from progemu.synth.history import PAIRS_PER_PATIENT
from progemu.synth.pairs import GENERATOR_VERSION, SynthCXR, SynthPair

ICG_DIR = Path("icg-cxr") / "synthcxr" / "pa"
EDIT_DIR = Path("mimic-edit")
CSV_COLUMNS = ("split", "past_dicom_id", "current_dicom_id", "instruction")
PNG_LEVEL = 1  # zlib level: ~4x faster than the default 6, files ~15% larger


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _save_png(arr: np.ndarray, path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=PNG_LEVEL)
    path.write_bytes(buf.getvalue())


def pair_record(pair: SynthPair, size: int, seed: int) -> dict:
    """The ICG-CXR JSON of a pair: the published fields exactly, then ``synth-*`` ground truth."""
    pid = pair.pair_id
    return {
        "progression-description": pair.prompt,
        "changes-of-findings": pair.interpretation,
        "comment": {"confidence": 5, "reason": "synthetic pair: findings and changes are known exactly"},
        "reference-report": {"findings": pair.prior_report.findings, "impression": pair.prior_report.impression},
        "followup-report": {"findings": pair.target_report.findings, "impression": pair.target_report.impression},
        "time-interval": pair.time_interval_days,
        "view": "PA",
        **pair.ids,
        "age": pair.patient.age,
        "sex": "F" if pair.patient.sex == "female" else "M",
        "race": "UNKNOWN",
        "ethnicity": "UNKNOWN",
        "split": pair.split,
        "reg_metric": 1.0,
        "reference-diseases": pair.prior_labels,
        "followup-diseases": pair.target_labels,
        "synth-version": GENERATOR_VERSION,
        "synth-seed": seed,
        "synth-index": pair.index,
        "synth-size": size,
        "synth-patient-index": pair.patient.pid,
        "synth-sex": pair.patient.sex,
        "synth-age-group": pair.patient.age_group,
        "synth-devices": list(pair.patient.devices),
        "synth-prior-findings": [st.to_dict() for st in pair.prior_findings.values()],
        "synth-target-findings": [st.to_dict() for st in pair.target_findings.values()],
        "synth-changes": [ch.to_dict() for ch in pair.changes],
        "synth-instruction": pair.instruction,
        "synth-change-mask": f"{pid}-change-mask.png",
        "synth-change-fraction": round(float(pair.change_mask.mean()), 6),
        "synth-flu-raw": f"{pid}-flu-raw.png",
        "synth-prior-finding-masks": f"{pid}-ref-findings.png",
        "synth-target-finding-masks": f"{pid}-flu-findings.png",
        "synth-finding-bits": {key: i for i, key in enumerate(FINDING_KEYS)},
        "synth-acquisition": {"reference": pair.acquisitions[0].to_dict(), "followup": pair.acquisitions[1].to_dict()},
    }


def _link(src: Path, dst: Path) -> None:
    """Hard-link (same bytes, no extra space), or copy where the file system cannot; atomic either way."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _row(rec: dict) -> dict:
    return {"split": rec["split"], "past_dicom_id": rec["reference-dicom-id"],
            "current_dicom_id": rec["followup-dicom-id"], "instruction": rec["synth-instruction"],
            "changed": bool(rec["synth-changes"]), "patient": rec["subject-id"]}


def write_pair(pair: SynthPair, out: Path, size: int, seed: int) -> dict:
    """Write one pair folder (built in a temporary folder, then renamed) and its MIMIC-EDIT images."""
    final = out / ICG_DIR / pair.pair_id
    tmp = final.with_name(f"{pair.pair_id}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pid = pair.pair_id
    for suffix, arr in (("ref-reg", to_uint8(pair.prior)), ("flu-reg", to_uint8(pair.counterfactual)),
                        ("flu-raw", to_uint8(pair.followup)), ("change-mask", pair.change_mask.astype(np.uint8) * 255),
                        ("ref-findings", pair.bits[0]), ("flu-findings", pair.bits[1])):
        _save_png(arr, tmp / f"{pid}-{suffix}.png")
    rec = pair_record(pair, size, seed)
    (tmp / f"{pid}.json").write_text(json.dumps(rec, indent=1))
    if final.exists():  # an earlier, interrupted run left it without its JSON
        shutil.rmtree(final)
    os.replace(tmp, final)
    _edit_images(out, final, rec)
    return _row(rec)


def _edit_images(out: Path, folder: Path, rec: dict) -> None:
    """MIMIC-EDIT images of a changed pair: past = the prior, current = the registered follow-up (exact)."""
    if not rec["synth-changes"]:
        return
    pid = folder.name
    for src, dst in ((f"{pid}-ref-reg.png", EDIT_DIR / "past" / f"{rec['reference-dicom-id']}.png"),
                     (f"{pid}-flu-reg.png", EDIT_DIR / "current" / f"{rec['followup-dicom-id']}.png")):
        if not (out / dst).exists():
            _link(folder / src, out / dst)


def _work(args: tuple[str, int, int, list[int]]) -> list[dict]:
    """Generate and write a chunk of pairs (whole patients, so the per-patient caches hit); skip finished ones."""
    out_s, size, seed, indices = args
    out = Path(out_s)
    gen = SynthCXR(size=size, seed=seed)
    rows = []
    for i in indices:
        pid = f"synth-{seed}-{i:06d}"
        js = out / ICG_DIR / pid / f"{pid}.json"
        try:
            if js.exists():
                rec = json.loads(js.read_text())
                _edit_images(out, js.parent, rec)  # the run may have stopped between the rename and the links
                rows.append({**_row(rec), "index": i})
                continue
            rows.append({**write_pair(gen.pair(i), out, size, seed), "index": i})
        except Exception as err:  # noqa: BLE001 - a batch job records the failure per item and goes on
            rows.append({"index": i, "error": f"{type(err).__name__}: {err}"})
    return rows


def write_dataset(out: str | Path, pairs: int, size: int = 128, seed: int = 0, preview: bool = False,
                  workers: int = 1) -> dict:
    """Write ``pairs`` pairs under ``out``; returns the manifest. Re-running resumes where it stopped."""
    out = Path(out)
    for sub in (ICG_DIR, EDIT_DIR / "past", EDIT_DIR / "current"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for stale in (out / ICG_DIR).glob("*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    # Chunks of whole patients (so the per-patient caches hit), small enough to keep every worker busy.
    per_worker = -(-pairs // (max(workers, 1) * 4))
    step = PAIRS_PER_PATIENT * max(1, min(16, -(-per_worker // PAIRS_PER_PATIENT)))
    chunks = [(str(out), size, seed, list(range(a, min(a + step, pairs)))) for a in range(0, pairs, step)]
    if workers > 1 and len(chunks) > 1:
        # fork on Linux: workers start at once instead of re-importing the package (and torch) each.
        ctx = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            results = list(pool.map(_work, chunks))
    else:
        results = [_work(c) for c in chunks]
    rows = sorted((r for chunk in results for r in chunk), key=lambda r: r["index"])
    ok = [r for r in rows if "error" not in r]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(r for r in ok if r["changed"])
    write_text_atomic(out / EDIT_DIR / "instructions.csv", buf.getvalue())
    patients: dict[str, set] = {}
    for r in ok:
        patients.setdefault(r["split"], set()).add(r["patient"])
    manifest = {
        "generator": GENERATOR_VERSION, "seed": seed, "size": size, "pairs": len(ok),
        "pairs_per_patient": PAIRS_PER_PATIENT, "counts": dict(Counter(r["split"] for r in ok)),
        "patients": {k: len(v) for k, v in patients.items()},
        "changed_pairs": sum(r["changed"] for r in ok), "unchanged_pairs": sum(not r["changed"] for r in ok),
        "layout": {"icg-cxr": str(ICG_DIR), "mimic-edit": str(EDIT_DIR)},
        "failures": [{"index": r["index"], "error": r["error"]} for r in rows if "error" in r],
    }
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=1))
    if preview:
        write_preview(out, SynthCXR(size=size, seed=seed), range(min(pairs, 8)))
    return manifest


def write_preview(out: Path, gen: SynthCXR, indices: range | list[int]) -> Path:
    """Contact sheet: prior | follow-up (as acquired) | counterfactual | change mask (red), prompt below each row."""
    cell = max(gen.size, 192)
    font = ImageFont.load_default(size=11)
    rows = []
    for i in indices:
        pair = gen.pair(i)
        tiles = [pair.prior, pair.followup, pair.counterfactual]
        gray = [Image.fromarray(to_uint8(t)).convert("RGB").resize((cell, cell)) for t in tiles]
        over = np.repeat(to_uint8(pair.counterfactual)[..., None], 3, axis=2)
        over[pair.change_mask] = (0.5 * over[pair.change_mask] + [127, 0, 0]).astype(np.uint8)
        gray.append(Image.fromarray(over).resize((cell, cell)))
        lines = textwrap.wrap(f"[{pair.pair_id} {pair.split} {pair.patient.sex} {pair.patient.age_group}] "
                              f"{pair.prompt}", width=cell * 4 // 6)
        row = Image.new("RGB", (cell * 4, cell + 14 * len(lines) + 6), "white")
        for k, tile in enumerate(gray):
            row.paste(tile, (k * cell, 0))
        draw = ImageDraw.Draw(row)
        for k, line in enumerate(lines):
            draw.text((4, cell + 3 + 14 * k), line, fill="black", font=font)
        rows.append(row)
    head = Image.new("RGB", (cell * 4, 18), "white")
    hd = ImageDraw.Draw(head)
    for k, name in enumerate(("prior", "follow-up (raw)", "counterfactual (flu-reg)", "change mask")):
        hd.text((k * cell + 4, 3), name, fill="black", font=font)
    sheet = Image.new("RGB", (cell * 4, 18 + sum(r.height for r in rows)), "white")
    sheet.paste(head, (0, 0))
    y = 18
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    path = out / "preview.png"
    tmp = out / f".preview.png.tmp-{os.getpid()}"
    sheet.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
