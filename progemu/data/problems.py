"""What the loaders do with a malformed record: fail (default) or skip it and log why (``skip_invalid``)."""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from progemu.errors import IngestError, RecordError

log = logging.getLogger(__name__)


@dataclass
class Problem:
    """One skipped item: the file at fault and the reason."""

    path: str
    reason: str
    item: str = ""


class Problems:
    """Collects malformed records. ``skip=False`` raises ``RecordError`` at the first one.

    ``log_path`` (``.jsonl`` or ``.csv``) receives the list of skipped items when ``write()`` is called;
    it is written atomically, and written even when empty so a clean run is visible.
    """

    def __init__(self, skip: bool = False, log_path: str | Path | None = None):
        self.skip = skip
        self.log_path = Path(log_path) if log_path is not None else None
        self.items: list[Problem] = []

    def fail(self, path: str | Path, reason: str, item: str = "") -> None:
        """Record (or raise, when not skipping) one malformed record."""
        if not self.skip:
            raise RecordError(path, reason)
        self.items.append(Problem(str(path), reason, item))

    def from_error(self, err: RecordError | IngestError, item: str = "") -> None:
        if not self.skip:
            raise err
        self.items.append(Problem(err.path, err.reason, item))

    def write(self) -> None:
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.log_path.with_name(self.log_path.name + ".tmp")
        if self.log_path.suffix.lower() == ".csv":
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=["item", "path", "reason"])
                writer.writeheader()
                for p in self.items:
                    writer.writerow(asdict(p))
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for p in self.items:
                    f.write(json.dumps(asdict(p)) + "\n")
        os.replace(tmp, self.log_path)
        if self.items:
            log.warning("skipped %d invalid records; list written to %s", len(self.items), self.log_path)


def make_problems(fmt: str, skip_invalid: bool, skipped_log: str | Path | None) -> Problems:
    """The loaders' policy: with ``skip_invalid`` and no ``skipped_log``, log to ``./skipped-<fmt>.jsonl``."""
    if skip_invalid and skipped_log is None:
        skipped_log = Path.cwd() / f"skipped-{fmt}.jsonl"
    return Problems(skip=skip_invalid, log_path=skipped_log if skip_invalid else None)


def check_image_file(path: Path, problems: Problems, item: str, verify: bool = False) -> bool:
    """True when the image exists, is non-empty and (with ``verify``) opens with ``load_image``."""
    if not path.is_file():
        problems.fail(path, "image file not found", item)
        return False
    if path.stat().st_size == 0:
        problems.fail(path, "image file is empty (0 bytes)", item)
        return False
    if verify:
        from progemu.data.ingest import IngestOptions, load_image

        try:
            load_image(path, IngestOptions(size=None))
        except IngestError as err:
            problems.fail(err.path, f"unreadable image: {err.reason}", item)
            return False
    return True
