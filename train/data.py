"""Code shards -> token sequences, built and packed on the fly into training rows, one disjoint stream per consumer.

No VQ runs here: the shards already hold code grids (``tokenizer/encode_dataset.py``) and stay memory-mapped
Arrow files; nothing is built ahead of training, so start-up time and memory depend neither on ``max_steps`` nor
on the number of shard rows. A *consumer* is one data-loader worker of one rank (``rank * workers + worker``).
Every epoch of a shard folder is one permutation of its rows drawn from ``(seed, folder, epoch)``; consumer
``c`` of ``C`` reads positions ``c, c + C, ...`` of it, so the ranks' and workers' rows are disjoint and together
cover the folder once per epoch. Several folders are interleaved in proportion to ``weights`` (default: their
sizes). Each row gives one sequence per task, with its random draws (CFG / prompt dropout, prompt augmentation)
seeded by ``(seed, epoch, row, task)``: a row gives the same sequence whichever rank or worker builds it.

Sequences are collected into chunks of ``buffer`` sequences (a chunk never spans two epochs of a folder), packed
there (best-fit decreasing, so a row is ~95-99 % real tokens where ProgEmu pads every sample to 9,216) and
emitted in a shuffled order. Position ids restart at 0 for every sequence and no attention mask is passed:
transformers then builds a block-diagonal causal mask from the position ids (SDPA/eager) or uses
variable-length FlashAttention, so packed sequences never attend to each other, and the first token of each
sequence carries no label.

Exact resume: every emitted row carries the stream position after it (the chunk's start: epoch, position and
count per folder; and how many of the chunk's rows were emitted), small enough for a JSON file per rank in every
checkpoint (`StreamState`); a resumed stream rebuilds at most one chunk and goes on from there.
"""

from __future__ import annotations

import bisect
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from progemu.errors import ProgEmuError, SequenceTooLongError
from progemu.io import write_json_atomic

IGNORE = -100
# builder(row, task, rng) -> {"input_ids", "labels", "loss_weights"} (lists), or None where the row cannot serve
# the task; `train.examples.ExampleBuilder` is the real one.
SequenceBuilder = Callable[[dict[str, Any], str, random.Random], "dict[str, Any] | None"]
Seq = tuple[np.ndarray, np.ndarray, np.ndarray]  # input_ids int32, labels int32, loss_weights float32
log = logging.getLogger("progemu.train")


def load_sources(shards: str | Path, split: str, max_samples: int | None = None) -> list[datasets.Dataset]:
    """One memory-mapped Arrow split per shard folder (``shards``: folders separated by commas, e.g. ICG-CXR and
    MIMIC-EDIT encoded separately). ``max_samples`` keeps the first N rows of each."""
    parts = []
    for root in [r.strip() for r in str(shards).split(",") if r.strip()]:
        path = Path(root) / split
        if not path.is_dir():
            raise ProgEmuError(f"{path}: no code shards for split {split!r}; build them with "
                               "`python -m tokenizer.encode_dataset` (or run `make pretrain`, which builds them)")
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:  # datasets raises several types for a broken folder
            raise ProgEmuError(f"{path}: cannot read the code shards ({exc})") from exc
        if len(ds) == 0:
            raise ProgEmuError(f"{path}: no rows")
        parts.append(ds if max_samples is None else ds.select(range(min(max_samples, len(ds)))))
    if not parts:
        raise ProgEmuError(f"{shards!r}: no code shard folder given")
    return parts


def load_split(shards: str | Path, split: str, max_samples: int | None = None) -> datasets.Dataset:
    """The rows of every shard folder of ``split``, concatenated (memory-mapped, nothing copied)."""
    parts = load_sources(shards, split, max_samples)
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def row_rng(seed: int, rnd: int, index: int, task: str) -> random.Random:
    """The random source of one (epoch, row, task): independent of rank, worker, batch and resume point."""
    return random.Random(f"{seed}/{rnd}/{index}/{task}")


def to_seq(built: dict[str, Any], max_length: int, what: str) -> Seq:
    ids, labels = np.asarray(built["input_ids"], np.int32), np.asarray(built["labels"], np.int32)
    weights = built.get("loss_weights")
    weights = (labels != IGNORE).astype(np.float32) if weights is None else np.asarray(weights, np.float32)
    if len(ids) > max_length:
        raise SequenceTooLongError(len(ids), max_length, what)
    return ids, labels, weights


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


def arrange(lengths: Sequence[int], max_length: int, packing: str, batch_size: int,
            rng: random.Random) -> list[list[int]]:
    """A chunk's sequences -> training rows (lists of sequence indices), in a shuffled order so that the step
    order does not follow length. ``pack``: best-fit-decreasing bins; ``group``: one sequence per row, runs of
    ``batch_size`` similar lengths (padded together); ``pad_max``: one sequence per row."""
    if packing == "pack":
        rows = pack_lengths(lengths, max_length)
        rng.shuffle(rows)
        return rows
    if packing == "group":
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        rng.shuffle(groups)
        return [[i] for g in groups for i in g]
    rows = [[i] for i in range(len(lengths))]
    rng.shuffle(rows)
    return rows


def make_row(seqs: Sequence[Seq], idx: Sequence[int]) -> dict[str, np.ndarray]:
    """Sequences concatenated into one row: positions restart at 0 in each, and each one's first token carries no
    label (nothing before it belongs to it)."""
    ids, labels, weights, pos = [], [], [], []
    for i in idx:
        s_ids, s_lab, s_w = seqs[i]
        s_lab, s_w = s_lab.copy(), s_w.copy()
        s_lab[0], s_w[0] = IGNORE, 0.0
        ids.append(s_ids)
        labels.append(s_lab)
        weights.append(s_w)
        pos.append(np.arange(len(s_ids), dtype=np.int32))
    return {"input_ids": np.concatenate(ids), "labels": np.concatenate(labels),
            "loss_weights": np.concatenate(weights), "position_ids": np.concatenate(pos)}


class PackedStream(torch.utils.data.IterableDataset):
    """The endless training stream of one rank: rows of ``max_length`` tokens built from ``sources`` on the fly.

    Each data-loader worker is its own consumer (see the module docstring). Rows carry ``data_state``, the
    stream position after them; `load_state` restarts every consumer there (`StreamState` saves and reads it).
    """

    def __init__(self, sources: Sequence[datasets.Dataset], builder: SequenceBuilder, tasks: Sequence[str],
                 max_length: int, packing: str = "pack", seed: int = 0, weights: Sequence[float] | None = None,
                 rank: int = 0, world: int = 1, batch_size: int = 1, buffer: int = 512, where: str = "the split"):
        if not sources or any(len(s) == 0 for s in sources):
            raise ProgEmuError(f"{where}: no rows")
        weights = [float(len(s)) for s in sources] if weights is None else [float(w) for w in weights]
        if len(weights) != len(sources) or any(w <= 0 for w in weights):
            raise ProgEmuError(f"{where}: need one positive weight per shard folder ({len(sources)}), got {weights}")
        if packing not in ("pack", "group", "pad_max"):
            raise ProgEmuError(f"packing must be pack, group or pad_max, not {packing!r}")
        self.sources, self.builder, self.tasks = list(sources), builder, list(tasks)
        self.max_length, self.packing, self.seed, self.weights = max_length, packing, seed, weights
        self.rank, self.world, self.batch_size, self.buffer, self.where = rank, world, batch_size, buffer, where
        self.offsets = np.cumsum([0] + [len(s) for s in sources[:-1]]).tolist()  # row keys as if concatenated
        self.sequences_built = 0  # in this process (a test counts what the first batches cost)
        self.resume: dict[int, dict[str, Any]] = {}
        self.resume_batches = 0

    def sizes(self) -> list[int]:
        return [len(s) for s in self.sources]

    def load_state(self, states: dict[int, dict[str, Any]], batches: int) -> None:
        """Restart at the saved positions: consumer (worker) ``w`` at ``states[w]``; ``batches`` consumed so far,
        which tells which worker the data loader's round robin continues with."""
        self.resume, self.resume_batches = {int(k): v for k, v in states.items()}, int(batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        workers, wid = (info.num_workers, info.id) if info else (1, 0)
        # batch k comes from worker k % workers: after `resume_batches`, this worker continues that one's stream
        logical = (wid + self.resume_batches) % workers
        consumer, consumers = self.rank * workers + logical, self.world * workers
        if min(self.sizes()) < consumers:
            raise ProgEmuError(f"{self.where}: {min(self.sizes())} rows cannot feed {consumers} ranks x workers")
        fresh = {"worker": logical, "chunk": 0, "epochs": [0] * len(self.sources), "pos": [0] * len(self.sources),
                 "taken": [0] * len(self.sources), "emitted": 0}
        state = self.resume.get(logical, fresh)
        if state.get("worker") != logical or len(state.get("epochs", [])) != len(self.sources):
            raise ProgEmuError(f"{self.where}: saved data state {state} does not fit this stream")
        yield from self._consume(consumer, consumers, state)

    def _consume(self, consumer: int, consumers: int, state: dict[str, Any]) -> Iterator[dict[str, Any]]:
        slices: dict[int, tuple[int, np.ndarray]] = {}
        while True:
            cursor = {k: list(state[k]) for k in ("epochs", "pos", "taken")}
            seqs = self._fill(consumer, consumers, cursor, slices)
            rng = random.Random(f"{self.seed}/chunk/{consumer}/{state['chunk']}")
            rows = arrange([len(s[0]) for s in seqs], self.max_length, self.packing, self.batch_size, rng)
            nxt = {"worker": state["worker"], "chunk": state["chunk"] + 1, **cursor, "emitted": 0}
            for j in range(state["emitted"], len(rows)):
                item: dict[str, Any] = make_row(seqs, rows[j])
                item["data_state"] = nxt if j + 1 == len(rows) else {**state, "emitted": j + 1}
                yield item
            state = nxt

    def _fill(self, consumer: int, consumers: int, cursor: dict[str, list[int]],
              slices: dict[int, tuple[int, np.ndarray]]) -> list[Seq]:
        """Up to ``buffer`` sequences from the cursor on (advanced in place); stops early at an epoch's end."""
        epochs, pos, taken = cursor["epochs"], cursor["pos"], cursor["taken"]
        seqs: list[Seq] = []
        barren = 0  # rows read in a row that gave no sequence
        while len(seqs) < self.buffer:
            s = min(range(len(self.sources)), key=lambda k: ((taken[k] + 1) / self.weights[k], k))
            order = self._slice(s, epochs[s], consumer, consumers, slices)
            if pos[s] >= len(order):
                epochs[s], pos[s] = epochs[s] + 1, 0
                if seqs:  # a chunk never spans two epochs of a folder
                    break
                order = self._slice(s, epochs[s], consumer, consumers, slices)
            i = int(order[pos[s]])
            pos[s] += 1
            taken[s] += 1
            row = self.sources[s][i]
            before = len(seqs)
            for task in self.tasks:
                built = self.builder(row, task, row_rng(self.seed, epochs[s], self.offsets[s] + i, task))
                if built is not None:
                    seqs.append(to_seq(built, self.max_length, f"{task} sequence of row {row.get('id', i)!r}"))
            self.sequences_built += len(seqs) - before
            barren = 0 if len(seqs) > before else barren + 1
            if barren > sum(self.sizes()):
                raise ProgEmuError(f"{self.where}: no row can serve the tasks {self.tasks}")
        return seqs

    def _slice(self, s: int, epoch: int, consumer: int, consumers: int,
               cache: dict[int, tuple[int, np.ndarray]]) -> np.ndarray:
        """This consumer's rows of folder ``s`` in ``epoch``: every ``consumers``-th of the epoch's permutation."""
        if cache.get(s, (None,))[0] != epoch:  # one epoch per folder at a time: memory ~ rows / consumers
            perm = np.random.default_rng([self.seed, s, epoch]).permutation(len(self.sources[s]))
            cache[s] = (epoch, perm[consumer::consumers].copy())
        return cache[s][1]


def build_rows(sources: Sequence[datasets.Dataset], builder: SequenceBuilder, tasks: Sequence[str], max_length: int,
               packing: str = "pack", seed: int = 0, batch_size: int = 1,
               where: str = "the split") -> list[dict[str, np.ndarray]]:
    """Every row of one pass over ``sources`` (the evaluation split: small, built once, no random draws beyond
    the builder's), packed or padded as in training."""
    seqs: list[Seq] = []
    for s, rows in enumerate(sources):
        offset = sum(len(x) for x in sources[:s])
        for i, row in enumerate(rows):
            for task in tasks:
                built = builder(row, task, row_rng(seed, 0, offset + i, task))
                if built is not None:
                    seqs.append(to_seq(built, max_length, f"{task} sequence of row {row.get('id', i)!r}"))
    if not seqs:
        raise ProgEmuError(f"{where}: no row can serve the tasks {list(tasks)}")
    order = arrange([len(s[0]) for s in seqs], max_length, packing, batch_size, random.Random(f"{seed}/eval"))
    return [make_row(seqs, r) for r in order]


class StreamState:
    """The stream positions a rank's training consumed, saved as ``data_state/rank{R}.json`` in each checkpoint.

    The trainer `record`s the ``data_state`` of every batch it takes (batches of all workers arrive in turn);
    `save` writes the latest one per worker; `restore` gives them back to a `PackedStream` before it starts."""

    def __init__(self, rank: int, world: int, workers: int, sizes: Sequence[int], seed: int):
        self.meta = {"rank": rank, "world": world, "workers": max(workers, 1), "sizes": list(sizes), "seed": seed}
        self.states: dict[int, dict[str, Any]] = {}
        self.batches = 0

    def record(self, state: dict[str, Any]) -> None:
        self.states[int(state["worker"])] = state
        self.batches += 1

    def save(self, checkpoint: str | Path) -> None:
        path = Path(checkpoint) / "data_state" / f"rank{self.meta['rank']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {**self.meta, "batches": self.batches, "states": self.states})

    def restore(self, checkpoint: str | Path, stream: PackedStream) -> bool:
        """Load this rank's saved positions into ``stream``; False (and a warning) when the checkpoint has none
        or was written by another layout of ranks, workers, folders or seed (the stream then starts afresh)."""
        import json

        path = Path(checkpoint) / "data_state" / f"rank{self.meta['rank']}.json"
        if not path.is_file():  # a rank the checkpoint's run did not have: any rank's file tells its layout
            path = next(iter(sorted(path.parent.glob("rank*.json"))), path)
        if not path.is_file():
            log.warning("%s: no saved data position; the data stream starts from its beginning", path)
            return False
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ProgEmuError(f"{path}: unreadable data position ({exc})") from exc
        differ = {k: (saved.get(k), v) for k, v in self.meta.items() if saved.get(k) != v and k != "rank"}
        if saved.get("world") == self.meta["world"] and saved.get("rank") != self.meta["rank"]:
            raise ProgEmuError(f"{path.parent}: no data position of rank {self.meta['rank']} in a checkpoint of as many "
                               "ranks (an incomplete checkpoint): resume from an earlier one")
        if differ and set(differ) <= {"world", "workers"}:  # same data and seed, other ranks x workers
            return self._next_epoch(Path(checkpoint) / "data_state", stream, differ)
        if differ:
            log.warning("%s: saved for another run layout %s; the data stream starts from its beginning", path, differ)
            return False
        self.states = {int(k): v for k, v in saved["states"].items()}
        self.batches = int(saved["batches"])
        stream.load_state(self.states, self.batches)
        return True

    def _next_epoch(self, folder: Path, stream: PackedStream, differ: dict[str, Any]) -> bool:
        """Another number of ranks or workers deals the rows out differently, so the exact positions do not carry
        over: every consumer starts each shard folder at the epoch after the furthest one any rank had reached
        (read from every rank's file), so nothing of the interrupted epochs is seen twice; their unseen rest is
        skipped."""
        import json

        start = [0] * len(self.meta["sizes"])
        for path in sorted(folder.glob("rank*.json")):
            for state in json.loads(path.read_text()).get("states", {}).values():
                start = [max(a, int(b) + 1) for a, b in zip(start, state["epochs"], strict=True)]
        n = len(start)
        self.states = {w: {"worker": w, "chunk": 0, "epochs": list(start), "pos": [0] * n, "taken": [0] * n,
                           "emitted": 0} for w in range(self.meta["workers"])}
        self.batches = 0
        stream.load_state(self.states, 0)
        log.warning("%s: saved with %s; continuing at epoch(s) %s of the shard folders (the rest of the interrupted "
                    "epoch is skipped, nothing repeated)", folder, differ, start)
        return True
