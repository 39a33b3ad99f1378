"""Encode a data set once with the frozen VQ tokenizer into code shards (``datasets`` Arrow, one folder per split).

Run: ``python -m tokenizer.encode_dataset --model runs/vq-tiny --data data/synthcxr-128/icg-cxr --format icg-cxr
--out data/shards-128`` (``--batch 32``, ``--chunk 256``, ``--size`` defaults to the tokenizer's image size).
Sharded: ``torchrun --nproc_per_node=8 -m tokenizer.encode_dataset ...`` (same flags; several nodes:
``torchrun --nnodes=N --node_rank=R --rdzv_endpoint=HOST:PORT ...`` with ``--out`` on a shared file system).

Columns (docs/architecture.md, "Code shards"): id, task_source, prior_codes, target_codes (row-major h*w lists,
may be empty), grid_h, grid_w, prompt, interpretation, instruction, prior_report, target_report.
Resumable: records (sorted by id) are cut into chunks of ``--chunk`` records, each written atomically to
``OUT/.chunks/<split>/chunk-K`` by the rank that encoded it; a rerun (with any number of ranks) encodes only the
missing chunks, then rank 0 joins each split into ``OUT/<split>`` (the same rows in the same order whatever the
number of ranks). A record whose image cannot be read is logged to ``OUT/errors.jsonl`` (split, id, file, reason)
and left out; the job goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from progemu.data.records import SPLITS, CXRRecord
from progemu.errors import ProgEmuError
from progemu.generation.distributed import Group, Ranks
from progemu.io import file_stamp, write_json_atomic, write_text_atomic

ERRORS = "errors.json"  # a chunk's unreadable records, inside its folder
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


def _save_chunk(ds: datasets.Dataset, errors: list[dict[str, str]], path: Path) -> None:
    """The chunk's rows and its unreadable records, written to a private temp folder, then renamed into place:
    a chunk folder exists only complete (a crash leaves a ``.tmp-*`` folder that a rerun ignores)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    (tmp / ERRORS).write_text(json.dumps(errors))
    os.replace(tmp, path)


def _save_atomic(ds: datasets.Dataset, path: Path) -> None:
    """``ds`` into ``path``: written beside it, then swapped in; the old folder is moved aside before it is removed,
    so ``path`` is at every moment either the old split or the new one (a crash leaves a ``.old`` / ``.tmp`` folder
    that the next run removes)."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def encode_dataset(model_dir: str | Path, data: str | Path, fmt: str, out: str | Path, size: int | None = None,
                   batch: int = 32, chunk: int = 256, device: str | None = None, progress: bool = True,
                   max_chunks: int | None = None) -> dict[str, int]:
    """Encode every record of ``data`` into ``out/<split>``; returns the number of rows per split.

    Under torchrun every rank encodes its share of the missing chunks (on ``cuda:LOCAL_RANK`` where there are
    GPUs), then rank 0 joins them. ``max_chunks``: encode at most that many chunks per rank, then stop without
    joining (a time-sliced job; a rerun, with any number of ranks, finishes the rest); returns {} then.
    """
    from progemu.data.loaders import load_records
    from progemu.emu3_vq import load_image_tokenizer

    ranks = Ranks.from_env()  # torchrun's RANK / WORLD_SIZE / LOCAL_RANK; (0, 1, 0) without it
    rank, world, local = ranks.rank, ranks.world, ranks.local_rank
    # gloo also beside GPUs (only small Python objects travel); ranks wait for the slowest one's chunks
    group = Group(ranks, timeout=timedelta(hours=24))
    out = Path(out)
    if device is None:
        # one GPU per local rank; more ranks than GPUs share them (round robin)
        device = f"cuda:{local % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    model = load_image_tokenizer(model_dir).to(dev).eval()  # progemu's VQ or a converted Emu3's VQ-VAE
    size = size or int(model.config.image_size)
    model.grid_size(size)  # fails early when size is not a multiple of the downsampling factor
    chunks_dir = out / ".chunks"
    # every rank reads (and so vets) all records: rank 0's log is the job's, the others' are copies
    skipped = out / ("skipped.jsonl" if rank == 0 else f".skipped-rank{rank}.jsonl")
    out.mkdir(parents=True, exist_ok=True)
    records = sorted(load_records(data, fmt, skip_invalid=True, skipped_log=skipped), key=lambda r: r.id)
    by_split = {split: [r for r in records if r.split == split] for split in SPLITS}
    # the weights by their stamp, not the folder alone: a VQ retrained in place must not reuse the old codes
    weights = sorted(Path(model_dir).glob("*.safetensors")) + sorted(Path(model_dir).glob("*.bin"))
    state = {"model": str(Path(model_dir).resolve()), "weights": [file_stamp(w) for w in weights],
             "data": str(Path(data).resolve()), "format": fmt, "size": size, "chunk": chunk, "records": len(records)}
    state_file = chunks_dir / "state.json"
    todo: list[tuple[str, int]] = []
    if rank == 0:
        try:
            previous = json.loads(state_file.read_text()) if state_file.exists() else state
        except json.JSONDecodeError:
            previous = None  # a damaged state: start over rather than trust the chunks
        if previous != state:
            shutil.rmtree(chunks_dir)  # another model / data / chunking: the finished chunks do not apply
            (out / "encode_info.json").unlink(missing_ok=True)
        chunks_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(state_file, state)
        # chunk k of a split = its records k*chunk..(k+1)*chunk-1 in id order, whatever the world size: so a
        # rerun with another number of ranks knows which chunks are done
        todo = [(split, k) for split, recs in by_split.items() for k in range(-(-len(recs) // chunk))
                if not (chunks_dir / split / f"chunk-{k:05d}").is_dir()]
    todo = group.broadcast(todo)  # rank 0 lists the missing chunks once, so every rank cuts the same list
    mine = todo[rank::world][:max_chunks]
    for split, k in tqdm(mine, desc=f"encode (rank {rank}/{world})", disable=not progress):
        errors: list[dict[str, str]] = []
        rows = encode_chunk(model, by_split[split][k * chunk : (k + 1) * chunk], size, batch, dev, errors)
        path = chunks_dir / split / f"chunk-{k:05d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_chunk(datasets.Dataset.from_list(rows, features=FEATURES), [{"split": split, **e} for e in errors],
                    path)
    group.barrier()
    if max_chunks is not None and len(todo) > world * max_chunks:
        return {}
    counts: dict[str, int] = {}
    if rank == 0:
        (out / "encode_info.json").unlink(missing_ok=True)  # "finished" again only once every split is joined
        errors_all: list[dict[str, str]] = []
        for split, recs in by_split.items():
            if not recs:
                continue
            paths = [chunks_dir / split / f"chunk-{k:05d}" for k in range(-(-len(recs) // chunk))]
            for path in paths:
                if (path / ERRORS).is_file():
                    errors_all += json.loads((path / ERRORS).read_text())
            joined = datasets.concatenate_datasets([datasets.load_from_disk(str(p)) for p in paths])
            _save_atomic(joined, out / split)
            counts[split] = len(joined)
        write_text_atomic(out / "errors.jsonl", "".join(json.dumps(e) + "\n" for e in errors_all))
        # written last: `train.launch` takes it as "finished"
        write_json_atomic(out / "encode_info.json", {**state, "rows": counts}, indent=1)
    return group.broadcast(counts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/vq-tiny")
    ap.add_argument("--data", default="data/synthcxr-128/icg-cxr")
    ap.add_argument("--format", default="icg-cxr", help="icg-cxr, mimic-edit or mimic-cxr")
    ap.add_argument("--out", default="data/shards-128")
    ap.add_argument("--size", type=int, default=None, help="image side (default: the tokenizer's image_size)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK where there are GPUs, else cpu")
    ap.add_argument("--max-chunks", type=int, default=None,
                    help="encode at most N chunks per rank, then stop (a time-sliced job; rerun to finish)")
    args = ap.parse_args(argv)
    datasets.disable_progress_bars()  # one bar per saved chunk would drown the encoding bar
    counts = encode_dataset(args.model, args.data, args.format, args.out, args.size, args.batch, args.chunk,
                            args.device, max_chunks=args.max_chunks)
    if Ranks.from_env().rank == 0:
        print(json.dumps(counts))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
