"""``results.jsonl`` of a batch job written by any number of processes, one line per manifest item.

Each rank appends the lines of its finished batches to its own file, ``OUT/.results/rank-NNNNN.jsonl`` (one
writer per file, so no two processes ever write the same file; a line is written whole and flushed to disk
after every batch). When every rank is done, rank 0 rebuilds ``OUT/results.jsonl`` in manifest order, atomically:
an item's line is its ``record.json`` result where that record is finished with the job's inputs, options and
weights, else the newest line any rank logged for it (an error), else ``"pending"`` (never attempted). Reruns
therefore never duplicate a line, whatever the number of ranks before and now.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from progemu.io import write_text_atomic

PARTS = ".results"


class ResultLog:
    """This rank's append-only log of finished items."""

    def __init__(self, out: Path, rank: int):
        self.path = Path(out) / PARTS / f"rank-{rank:05d}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self._torn = False
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                self._torn = fh.read(1) != b"\n"

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        stamp = time.time()  # the newest line of an item wins at the merge (nodes' clocks are assumed in step)
        text = "".join(json.dumps({**r, "_rank": self.rank, "_time": stamp}, sort_keys=True) + "\n" for r in rows)
        if self._torn:  # a killed earlier run's half line: end it, so this run's first line stays whole
            text, self._torn = "\n" + text, False
        with open(self.path, "a", encoding="utf-8") as fh:  # one write: a crash leaves whole lines or a torn last one
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def logged(out: Path) -> dict[str, dict[str, Any]]:
    """The newest logged line of every item over all ranks' logs (a torn last line of a killed rank is ignored)."""
    newest: dict[str, dict[str, Any]] = {}
    for part in sorted((Path(out) / PARTS).glob("rank-*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict) or "id" not in row:
                continue
            if row.get("_time", 0) >= newest.get(str(row["id"]), {}).get("_time", 0):
                newest[str(row["id"])] = row
    return newest


def merge_results(out: Path, entries: Sequence[Any], finished: Callable[[Any], dict | None]) -> list[str]:
    """Write ``OUT/results.jsonl``: one line per manifest entry, in manifest order. ``entries`` are manifest items
    or error dicts (lines that could not be read); ``finished(item)`` is the item's recorded result or None.
    Returns each line's status."""
    newest = logged(out)
    lines, statuses = [], []
    for e in entries:
        if isinstance(e, dict):
            row = e
        elif (done := finished(e)) is not None:
            row = done
        elif e.id in newest and newest[e.id].get("status") != "ok":
            row = {k: v for k, v in newest[e.id].items() if not k.startswith("_")}
        else:  # no record and no logged error: a rank died before this item, or it was never reached
            row = {"id": e.id, "status": "pending", "error": "not generated yet: run the same command again"}
        statuses.append(row["status"])
        lines.append(json.dumps(row, sort_keys=True) + "\n")
    write_text_atomic(Path(out) / "results.jsonl", "".join(lines))
    return statuses
