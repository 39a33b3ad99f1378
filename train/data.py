"""Code shards -> token sequences (through the processor) -> packed rows or length-grouped batches.

No VQ runs here: the shards already hold code grids (``tokenizer/encode_dataset.py``). Each shard row gives
one sequence per configured task; each *round* is one pass over the rows with its own random draws (CFG
dropout, prompt augmentation), seeded by ``(seed, round, row, task)`` so that every rank and every resumed
run builds exactly the same sequences.

Packing (the default) concatenates whole sequences into rows of ``max_length`` tokens (best-fit decreasing,
so a row is ~99% real tokens where ProgEmu pads every sample to 9,216). Position ids restart at 0 for every
sequence and no attention mask is passed: transformers then builds a block-diagonal causal mask from the
position ids (SDPA/eager) or uses variable-length FlashAttention, so packed sequences never attend to each
other (no cross-contamination), and the first token of each sequence carries no label.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from progemu.errors import ProgEmuError, SequenceTooLongError

IGNORE = -100
# builder(row, task, rng) -> {"input_ids", "labels", "loss_weights"} (lists), or None where the row cannot serve
# the task; `ProgEmuProcessor.build_from_row` is the real one (see `processor_builder`).
SequenceBuilder = Callable[[dict[str, Any], str, random.Random], "dict[str, Any] | None"]
Seq = tuple[np.ndarray, np.ndarray, np.ndarray]  # input_ids int32, labels int32, loss_weights float32


def load_split(shards: str | Path, split: str, max_samples: int | None = None) -> datasets.Dataset:
    """One split's Arrow folder written by ``tokenizer/encode_dataset.py``. ``shards`` may name several shard
    folders separated by commas (e.g. ICG-CXR and MIMIC-EDIT encoded separately): their rows are concatenated."""
    parts = []
    for root in [r.strip() for r in str(shards).split(",") if r.strip()]:
        path = Path(root) / split
        if not path.is_dir():
            raise ProgEmuError(f"{path}: no code shards for split {split!r}; build them with "
                               "`python -m tokenizer.encode_dataset` (or run `make pretrain`, which builds them)")
        try:
            parts.append(datasets.load_from_disk(str(path)))
        except Exception as exc:  # datasets raises several types for a broken folder
            raise ProgEmuError(f"{path}: cannot read the code shards ({exc})") from exc
    if not parts:
        raise ProgEmuError(f"{shards!r}: no code shard folder given")
    ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    return ds


def row_rng(seed: int, rnd: int, index: int, task: str) -> random.Random:
    """The random source of one (round, row, task): independent of rank, batch and resume point."""
    return random.Random(f"{seed}/{rnd}/{index}/{task}")


def build_round(rows: datasets.Dataset, builder: SequenceBuilder, tasks: Sequence[str], seed: int, rnd: int,
                max_length: int) -> list[Seq]:
    """Every (row, task) sequence of one round as (input_ids, labels, loss_weights) arrays."""
    out = []
    for i, row in enumerate(rows):
        for task in tasks:
            built = builder(row, task, row_rng(seed, rnd, i, task))
            if built is None:
                continue
            ids, labels = np.asarray(built["input_ids"], np.int32), np.asarray(built["labels"], np.int32)
            weights = built.get("loss_weights")
            weights = (labels != IGNORE).astype(np.float32) if weights is None else np.asarray(weights, np.float32)
            if len(ids) > max_length:
                raise SequenceTooLongError(len(ids), max_length, f"{task} sequence of row {row.get('id', i)!r}")
            out.append((ids, labels, weights))
    return out


def pack_lengths(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: indices grouped into bins whose total length <= capacity."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        j = bisect.bisect_left(free, (n, -1))
        if j < len(free):
            room, b = free.pop(j)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (room - n, b))
    return bins


class SequenceDataset(torch.utils.data.Dataset):
    """Rows of token sequences for the Trainer: packed bins (``pack``) or single sequences (``group``/``pad_max``)."""

    def __init__(self, sequences: list[Seq], max_length: int, packing: str, pad_id: int,
                 seed: int = 0, rounds_bounds: Sequence[int] | None = None):
        self.sequences = sequences
        self.max_length = max_length
        self.packing = packing
        self.pad_id = pad_id
        if packing == "pack":
            # pack each round separately so that a row never mixes two rounds' draws of one sample
            bounds = list(rounds_bounds or [0, len(sequences)])
            self.rows = []
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                bins = pack_lengths([len(s[0]) for s in sequences[lo:hi]], max_length)
                random.Random(f"{seed}/bins/{lo}").shuffle(bins)  # so that step order does not follow length
                self.rows += [[lo + i for i in b] for b in bins]
        else:
            self.rows = [[i] for i in range(len(sequences))]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> list[int]:
        return [sum(len(self.sequences[i][0]) for i in r) for r in self.rows]

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        ids, labels, weights, pos = [], [], [], []
        for i in self.rows[idx]:
            s_ids, s_lab, s_w = self.sequences[i]
            s_lab, s_w = s_lab.copy(), s_w.copy()
            s_lab[0], s_w[0] = IGNORE, 0.0  # nothing before a sequence's first token belongs to it
            ids.append(s_ids)
            labels.append(s_lab)
            weights.append(s_w)
            pos.append(np.arange(len(s_ids)))
        return {"input_ids": torch.from_numpy(np.concatenate(ids)).long(),
                "labels": torch.from_numpy(np.concatenate(labels)).long(),
                "loss_weights": torch.from_numpy(np.concatenate(weights)).float(),
                "position_ids": torch.from_numpy(np.concatenate(pos)).long()}

    def real_tokens(self) -> int:
        return sum(len(s[0]) for s in self.sequences)


class Collator:
    """Pads a list of rows into a batch. ``pack``/``pad_max``: to ``max_length``; ``group``: to the longest row.

    Packed batches carry restarting ``position_ids`` and no ``attention_mask`` (document-masked attention);
    padded batches carry an ``attention_mask``. Every batch carries ``num_tokens`` (real, non-pad tokens) for
    the tokens/s log; the trainer removes it before the forward pass.
    """

    def __init__(self, pad_id: int, max_length: int, packing: str):
        self.pad_id, self.max_length, self.packing = pad_id, max_length, packing

    def __call__(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = self.max_length if self.packing in ("pack", "pad_max") else max(len(r["input_ids"]) for r in rows)
        n = len(rows)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        weights = torch.zeros((n, width), dtype=torch.float32)
        mask = torch.zeros((n, width), dtype=torch.long)
        # padding continues as its own "document" starting at position 0 so real tokens never see it
        pos = torch.zeros((n, width), dtype=torch.long)
        for b, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[b, :k], labels[b, :k], weights[b, :k], mask[b, :k] = r["input_ids"], r["labels"], r["loss_weights"], 1
            pos[b, :k] = r["position_ids"]
            pos[b, k:] = torch.arange(width - k)
        batch = {"input_ids": ids, "labels": labels, "loss_weights": weights, "num_tokens": mask.sum()}
        if self.packing == "pack":
            batch["position_ids"] = pos
        else:
            batch["attention_mask"] = mask
        return batch


def build_dataset(rows: datasets.Dataset, builder: SequenceBuilder, tasks: Sequence[str], max_length: int,
                  packing: str, pad_id: int, seed: int, rounds: int = 1, min_rows: int = 0,
                  where: str = "the split") -> SequenceDataset:
    """Sequences of ``rounds`` passes over ``rows``, or as many passes as give ``min_rows`` training rows.
    ``where`` names the rows' source (the split's folder) in errors."""
    if len(rows) == 0:
        raise ProgEmuError(f"{where}: no rows")
    first = build_round(rows, builder, tasks, seed, 0, max_length)
    if not first:
        raise ProgEmuError(f"{where}: no row can serve the tasks {list(tasks)}")
    per_round = len(SequenceDataset(first, max_length, packing, pad_id, seed))
    total = max(rounds, 1, -(-min_rows // per_round))
    seqs, bounds = list(first), [0, len(first)]
    for rnd in range(1, total):
        seqs += build_round(rows, builder, tasks, seed, rnd, max_length)
        bounds.append(len(seqs))
    return SequenceDataset(seqs, max_length, packing, pad_id, seed, bounds)


def processor_builder(processor: Any, mask_mode: str = "target", cfg_dropout: float = 0.0,
                      prompt_augment: float = 0.0, changed_code_weight: float = 1.0,
                      prompt_dropout: float = 0.0) -> SequenceBuilder:
    """The `SequenceBuilder` of a `ProgEmuProcessor` with this run's loss mask and random augmentations."""

    def build(row: dict[str, Any], task: str, rng: random.Random) -> dict[str, Any] | None:
        return processor.build_from_row(row, task, rng=rng, mask_mode=mask_mode, cfg_dropout=cfg_dropout,
                                        prompt_augment=prompt_augment, changed_code_weight=changed_code_weight,
                                        prompt_dropout=prompt_dropout)

    return build
