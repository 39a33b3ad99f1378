"""Encode a data set once with the frozen VQ tokenizer into code shards (``datasets`` Arrow, one folder per split).

Run: ``python -m tokenizer.encode_dataset --model runs/vq-tiny --data data/synthcxr-128/icg-cxr --format icg-cxr
--out data/shards-128`` (``--batch 32``, ``--chunk 256``, ``--size`` defaults to the tokenizer's image size).

Columns (docs/architecture.md, "Code shards"): id, task_source, prior_codes, target_codes (row-major h*w lists,
may be empty), grid_h, grid_w, prompt, interpretation, instruction, prior_report, target_report.
Resumable: records (sorted by id) are cut into chunks written atomically to ``OUT/.chunks/<split>/``; a rerun
skips finished chunks, then joins each split into ``OUT/<split>``. A record whose image cannot be read is
logged to ``OUT/errors.jsonl`` (id, file, reason) and left out; the job goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from progemu.data.records import SPLITS, CXRRecord
from progemu.errors import ProgEmuError
from progemu.io import write_json_atomic

TEXT_COLUMNS = ("prompt", "interpretation", "instruction", "prior_report", "target_report")
FEATURES = datasets.Features({
    "id": datasets.Value("string"), "task_source": datasets.Value("string"),
    "prior_codes": datasets.Sequence(datasets.Value("int32")), "target_codes": datasets.Sequence(datasets.Value("int32")),
    "grid_h": datasets.Value("int32"), "grid_w": datasets.Value("int32"),
    **{c: datasets.Value("string") for c in TEXT_COLUMNS},
})


def texts(rec: CXRRecord) -> dict[str, str]:
    """The text columns of a record ("" where absent); MIMIC-EDIT's instruction goes to ``instruction``."""
    is_edit = rec.source == "mimic-edit"
    return {
        "prompt": "" if is_edit else (rec.prompt or ""),
        "interpretation": rec.interpretation or "",
        "instruction": (rec.prompt or "") if is_edit else str(rec.extra.get("instruction") or ""),
        "prior_report": rec.prior_report.text if rec.prior_report else "",
        "target_report": rec.target_report.text if rec.target_report else "",
    }


@torch.no_grad()
def encode_chunk(model, records: list[CXRRecord], size: int, batch: int, device: torch.device,
                 errors: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Rows of the shard for ``records``; unreadable records go to ``errors`` instead."""
    from progemu.data.ingest import IngestOptions, load_image

    opts = IngestOptions(size=size)
    images: list[np.ndarray] = []
    slots: list[tuple[int, str]] = []  # (row index, "prior" | "target") per image
    rows: list[dict[str, Any]] = []
    h, w = model.grid_size(size)
    for rec in records:
        loaded, path = {}, None
        try:
            for key, path in (("prior", rec.prior_image), ("target", rec.target_image)):
                if path is not None:
                    loaded[key] = load_image(path, opts)
        except (ProgEmuError, OSError, ValueError) as err:  # the file being read when it failed
            errors.append({"id": rec.id, "file": str(getattr(err, "path", None) or path), "reason": str(err)})
            continue
        for key, arr in loaded.items():
            images.append(arr)
            slots.append((len(rows), key))
        rows.append({"id": rec.id, "task_source": rec.source, "prior_codes": [], "target_codes": [],
                     "grid_h": h, "grid_w": w, **texts(rec)})
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.stack(images[i : i + batch]))[:, None].to(device) * 2 - 1  # (B, 1, S, S)
        codes = model.encode(x).reshape(len(x), -1).cpu().tolist()  # (B, h*w), row-major
        for (row, key), c in zip(slots[i : i + batch], codes):
            rows[row][f"{key}_codes"] = c
    return rows


def _save_atomic(ds: datasets.Dataset, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def encode_dataset(model_dir: str | Path, data: str | Path, fmt: str, out: str | Path, size: int | None = None,
                   batch: int = 32, chunk: int = 256, device: str | None = None, progress: bool = True) -> dict[str, int]:
    """Encode every record of ``data`` into ``out/<split>``; returns the number of rows per split."""
    from progemu.data.loaders import load_records
    from progemu.modeling_vq import ProgEmuVQModel

    out = Path(out)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = ProgEmuVQModel.from_pretrained(str(model_dir)).to(dev).eval()
    size = size or int(model.config.image_size)
    model.grid_size(size)  # fails early when size is not a multiple of the downsampling factor
    records = sorted(load_records(data, fmt, skip_invalid=True, skipped_log=out / "skipped.jsonl"),
                     key=lambda r: r.id)
    state = {"model": str(Path(model_dir).resolve()), "data": str(Path(data).resolve()), "format": fmt,
             "size": size, "chunk": chunk, "records": len(records)}
    chunks_dir = out / ".chunks"
    state_file = chunks_dir / "state.json"
    if state_file.exists() and json.loads(state_file.read_text()) != state:
        shutil.rmtree(chunks_dir)  # another model / data / chunking: the finished chunks do not apply
    chunks_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(state_file, state)
    counts: dict[str, int] = {}
    for split in SPLITS:
        recs = [r for r in records if r.split == split]
        if not recs:
            continue
        parts = []
        for k in tqdm(range(0, len(recs), chunk), desc=f"encode {split}", disable=not progress):
            path = chunks_dir / split / f"chunk-{k // chunk:05d}"
            if not path.exists():
                errors: list[dict[str, str]] = []
                rows = encode_chunk(model, recs[k : k + chunk], size, batch, dev, errors)
                path.parent.mkdir(parents=True, exist_ok=True)
                with (out / "errors.jsonl").open("a") as f:
                    f.writelines(json.dumps({"split": split, **e}) + "\n" for e in errors)
                _save_atomic(datasets.Dataset.from_list(rows, features=FEATURES), path)
            parts.append(datasets.load_from_disk(str(path)))
        joined = datasets.concatenate_datasets(parts)
        _save_atomic(joined, out / split)
        counts[split] = len(joined)
    write_json_atomic(out / "encode_info.json", {**state, "rows": counts}, indent=1)
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/vq-tiny")
    ap.add_argument("--data", default="data/synthcxr-128/icg-cxr")
    ap.add_argument("--format", default="icg-cxr", help="icg-cxr, mimic-edit or mimic-cxr")
    ap.add_argument("--out", default="data/shards-128")
    ap.add_argument("--size", type=int, default=None, help="image side (default: the tokenizer's image_size)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    counts = encode_dataset(args.model, args.data, args.format, args.out, args.size, args.batch, args.chunk,
                            args.device)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
