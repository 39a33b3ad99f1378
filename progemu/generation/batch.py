"""The batch job behind ``progemu generate``: a manifest in, one folder per item and ``results.jsonl`` out.

    progemu generate --model runs/finetune-tiny/final --input manifest.jsonl --out outputs/cf

Manifest: one JSON object per line, ``id``, ``image`` (path), ``prompt``; optional ``mask`` (path), ``region``.
Relative paths are read relative to the manifest's folder when the file is there, else to the working
directory. Per item: ``OUT/<id>/counterfactual.png`` (``counterfactual-<k>.png`` for further samples),
``interpretation.txt``, ``guidance.png`` / ``.npy`` (where the model changed the image), ``relevance.png`` /
``.npy`` (where the prompt asked it to), ``record.json`` (written last: it marks the item finished; it holds the
prior's reconstruction figures). ``OUT/results.jsonl`` holds one line per manifest line: its outputs (and a
``warning`` for a prior the checkpoint's tokenizer reconstructs far worse than its own validation images), its
error, or ``pending``. A failing item is recorded and the others go on; every file is written atomically; a
re-run skips finished items. Under torchrun the ranks share the items (`distributed`, `results`).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from progemu.errors import ProgEmuError, RecordError
from progemu.generation.distributed import Group, Ranks
from progemu.generation.guidance import overlay
from progemu.generation.pipeline import CounterfactualPipeline, GenerationItem, GenerationResult, PipelineOptions
from progemu.generation.region import load_user_mask
from progemu.generation.results import ResultLog, merge_results
from progemu.io import file_stamp, write_atomic, write_text_atomic

# options added after records were first written, with the value that reproduces the older behaviour
_ADDED_OPTIONS = {"cfg_null": "unconditional"}
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def write_png(path: Path, arr: np.ndarray) -> None:
    """(H, W) float in [0, 1] or uint8 (H, W[, 3]) -> PNG."""
    if arr.dtype != np.uint8:
        arr = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    write_atomic(path, lambda p: Image.fromarray(arr).save(p, format="PNG"))


def write_npy(path: Path, arr: np.ndarray) -> None:
    def save(p: Path) -> None:
        with open(p, "wb") as fh:
            np.save(fh, arr)

    write_atomic(path, save)


def _resolve(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() or not (base / p).exists() else base / p


def read_manifest(path: str | Path, mode: str) -> list[GenerationItem | dict]:
    """Manifest lines -> items, or ``{"id", "status": "error", "error"}`` for a line that cannot be one."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise RecordError(path, f"cannot read the manifest ({err.strerror or err})") from err
    out: list[GenerationItem | dict] = []
    seen: set[str] = set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path.name} line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            out.append({"id": f"line-{n}", "status": "error", "error": f"{where}: not JSON ({err.msg})"})
            continue
        item_id = str(obj.get("id", "")) if isinstance(obj, dict) else ""
        problem = None
        if not isinstance(obj, dict):
            problem = "not a JSON object"
        elif not _SAFE_ID.match(item_id):
            problem = f"id {item_id!r} missing or not a safe folder name (letters, digits, . _ -)"
        elif item_id in seen:
            problem = f"duplicate id {item_id!r}"
        elif mode != "report2image" and not isinstance(obj.get("image"), str):
            problem = "no 'image' path"
        elif mode != "image2report" and not str(obj.get("prompt") or "").strip():
            problem = "empty prompt"
        elif obj.get("mask") is not None and not isinstance(obj.get("mask"), str):
            problem = "'mask' must be a path"
        if problem:  # a duplicate's line is named by its line number: every line of results.jsonl has its own id
            bad_id = item_id if item_id and item_id not in seen else f"line-{n}"
            out.append({"id": bad_id, "status": "error", "error": f"{where}: {problem}"})
            continue
        seen.add(item_id)
        out.append(GenerationItem(
            id=item_id, image=_resolve(obj["image"], path.parent) if obj.get("image") else None,
            prompt=str(obj.get("prompt") or ""), mask=_resolve(obj["mask"], path.parent) if obj.get("mask") else None,
            region=obj.get("region")))
    return out


class BatchRunner:
    """Runs a manifest through a pipeline in batches, writing per-item folders and ``results.jsonl``."""

    def __init__(self, pipeline: CounterfactualPipeline, out_dir: str | Path, options: PipelineOptions,
                 batch_size: int = 8, overwrite: bool = False, progress: bool = True):
        self.pipe, self.out, self.opts = pipeline, Path(out_dir), options
        self.batch_size, self.overwrite, self.progress = max(1, batch_size), overwrite, progress
        self.results: dict[str, dict] = {}

    # ---- bookkeeping --------------------------------------------------------------------------------------
    def _signature(self, src: GenerationItem) -> dict[str, Any]:
        """What an item's output depends on, as JSON holds it: its inputs (files by resolved path, size and time),
        the options that change results (not the speed-only cache settings) and the weights."""
        options = self.opts.to_dict()
        for speed_only in ("cache", "trim_padding"):
            options["decode"].pop(speed_only, None)
        decode, three = options["decode"], options["cfg_null"] == "both"
        if decode["cfg_image"] == 1.0 and decode["cfg_text"] == 1.0 and not (three and decode["cfg_prior"] != 1.0):
            options.pop("cfg_null")  # no CFG: the branch is never built
        if not three:
            decode.pop("cfg_prior")  # read by three-branch guidance alone
        sig = {"inputs": {"image": file_stamp(src.image), "prompt": src.prompt, "mask": file_stamp(src.mask),
                          "region": src.region},
               "options": options, "model": getattr(self.pipe, "source", None)}
        return json.loads(json.dumps(sig, default=str))

    def _finished(self, item: GenerationItem) -> dict | None:
        """The recorded result when the item was done before with the same inputs, options and weights."""
        rec = self.out / item.id / "record.json"
        if not rec.is_file():
            return None
        try:
            data = json.loads(rec.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # a damaged record: do the item again
        sig = self._signature(item)
        if isinstance(data.get("options"), dict):  # options added since the record was written: their old behaviour
            data["options"] = {**{k: v for k, v in _ADDED_OPTIONS.items() if k in sig["options"]}, **data["options"]}
        if any(data.get(key) != value for key, value in sig.items()):
            return None  # made with other settings or weights: redo it rather than mix two runs
        return data.get("result") if data.get("status") == "ok" else None

    def _error(self, item_id: str, err: BaseException) -> None:
        self.results[item_id] = {"id": item_id, "status": "error", "error": f"{type(err).__name__}: {err}"}

    # ---- the job ------------------------------------------------------------------------------------------
    def _prepare(self, item: GenerationItem) -> GenerationItem:
        """Read the prior and the mask now, so a bad file fails this item alone (IngestError names it)."""
        image = self.pipe.load_prior(item.image) if item.image is not None else None
        mask = load_user_mask(item.mask) if item.mask is not None else None
        return GenerationItem(id=item.id, image=image, prompt=item.prompt, mask=mask, region=item.region)

    def _save(self, item: GenerationItem, src: GenerationItem, results: list[GenerationResult]) -> dict:
        folder = self.out / item.id
        folder.mkdir(parents=True, exist_ok=True)
        samples = []
        for r in results:
            suffix = "" if r.sample == 0 else f"-{r.sample}"
            entry: dict[str, Any] = {"sample": r.sample, "seed": r.seed, "interpretation": r.text}
            if r.image is not None:
                write_png(folder / f"counterfactual{suffix}.png", r.image)
                entry["counterfactual"] = f"counterfactual{suffix}.png"
            write_text_atomic(folder / f"interpretation{suffix}.txt", r.text + "\n")
            entry["interpretation_file"] = f"interpretation{suffix}.txt"
            if r.edit_mask is not None:
                entry["edited_codes"] = int(r.edit_mask.sum())
            samples.append(entry)
        first = results[0]
        files: dict[str, Any] = {}
        for r in results[1:]:  # each further sample's own change map (the first's is guidance.png below)
            if r.guidance is not None:
                write_npy(folder / f"guidance-{r.sample}.npy", r.guidance.astype(np.float32))
                write_png(folder / f"guidance-{r.sample}.png", overlay(r.prior, r.guidance))
                samples[r.sample]["guidance"] = f"guidance-{r.sample}.png"
        # guidance: where the model changed the image; relevance: where the prompt asked it to (guidance.py)
        for name, heat in (("guidance", first.guidance), ("relevance", first.relevance)):
            if heat is not None:
                write_npy(folder / f"{name}.npy", heat.astype(np.float32))
                write_png(folder / f"{name}.png", overlay(first.prior, heat))
                files.update({f"{name}_png": f"{name}.png", f"{name}_npy": f"{name}.npy"})
        if first.warning:  # the input lies far outside what the checkpoint knows: said with the result, and aloud
            files["warning"] = first.warning
            tqdm.write(f"progemu generate: warning: item {item.id!r}: {first.warning}", file=sys.stderr)
        result = {"id": item.id, "status": "ok", "folder": str(folder), "samples": samples, **files}
        record = {"status": "ok", "result": result, **self._signature(src), "region": first.region,
                  "prior_reconstruction": first.prior_reconstruction,
                  "seeds": [r.seed for r in results],
                  "timings": {**first.seconds, "note": "seconds of the whole batch this item ran in"},
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_text_atomic(folder / "record.json", json.dumps(record, indent=2, default=str) + "\n")  # last: marks done
        return result

    def _run_batch(self, batch: list[tuple[GenerationItem, GenerationItem]]) -> None:
        try:
            results = self.pipe([it for it, _ in batch], self.opts)
        except Exception as err:  # noqa: BLE001 - isolate the failing item, keep the others
            if len(batch) == 1:
                self._error(batch[0][0].id, err)
                return
            for one in batch:
                self._run_batch([one])
            return
        k = self.opts.num_samples
        for j, (item, src) in enumerate(batch):
            try:
                self.results[item.id] = self._save(item, src, results[j * k: (j + 1) * k])
            except (OSError, ProgEmuError, ValueError) as err:
                self._error(item.id, err)

    def run(self, manifest: str | Path, group: Group | None = None) -> dict[str, Any]:
        """Process the manifest (this rank's share of it under a launcher, see `distributed`); returns counts
        ``{"ok", "error", "skipped"}`` over the whole manifest and, with several ranks, each rank's share."""
        group = group or Group(Ranks())
        rank, world = group.ranks.rank, group.ranks.world
        sources = group.gather(getattr(self.pipe, "source", None))
        if len(set(sources)) > 1:  # records name the weights they were made with: all ranks must agree
            raise ProgEmuError(f"the ranks loaded different weights ({sorted(set(map(str, sources)))}): put the "
                               "model folder where every node reads the same files (a shared filesystem)")
        self.out.mkdir(parents=True, exist_ok=True)
        entries = read_manifest(manifest, self.opts.mode)
        items = {e.id: e for e in entries if isinstance(e, GenerationItem)}
        # rank 0 reads every record once: the finished ones are kept for the merge, the others are the work
        before = {} if rank != 0 or self.overwrite else {i: r for i, e in items.items() if (r := self._finished(e))}
        todo_ids = group.broadcast([i for i in items if i not in before] if rank == 0 else None)
        todo = [items[i] for i in todo_ids]
        log = ResultLog(self.out, rank)
        n_batches = -(-len(todo) // self.batch_size)
        bar = tqdm(total=len(todo), unit="item", disable=not self.progress or rank != 0,
                   desc="generate" if world == 1 else f"generate (rank 0 of {world})")
        t0, mine, busy = time.perf_counter(), 0, 0.0
        while (k := group.claim()) < n_batches:  # the next batch nobody has claimed
            t1 = time.perf_counter()
            share = todo[k * self.batch_size: (k + 1) * self.batch_size]
            batch: list[tuple[GenerationItem, GenerationItem]] = []
            for item in share:
                if self.overwrite:  # the old record must not stand for this run's result if the item now fails
                    (self.out / item.id / "record.json").unlink(missing_ok=True)
                try:
                    batch.append((self._prepare(item), item))
                except (ProgEmuError, OSError, ValueError) as err:
                    self._error(item.id, err)
            if batch:
                self._run_batch(batch)
            log.append([self.results[item.id] for item in share])
            mine, busy = mine + len(share), busy + time.perf_counter() - t1
            bar.update(len(share))
        bar.close()
        share = {"rank": rank, "items": mine, "busy_s": round(busy, 3), "done_s": round(time.perf_counter() - t0, 3)}
        group.barrier()  # every rank's lines are written
        shares = group.gather(share)
        counts = None
        if rank == 0:
            statuses = merge_results(self.out, entries, lambda e: before.get(e.id) or self._finished(e))
            skipped = len(items) - len(todo)
            pending = sum(s == "pending" for s in statuses)
            errors = sum(s == "error" for s in statuses)
            counts = {"ok": len(statuses) - errors - pending - skipped, "error": errors, "skipped": skipped,
                      "pending": pending}
            if world > 1:
                done = [s["done_s"] for s in shares]
                # how much longer the last rank ran than the first: what the claiming of batches leaves unbalanced
                counts.update(ranks=shares, imbalance=round((max(done) - min(done)) / max(max(done), 1e-9), 3))
        return group.broadcast(counts)
