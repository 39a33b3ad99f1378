"""One entry point for every data format: ``load_records(root, "icg-cxr" | "mimic-edit" | "mimic-cxr")``.

Usage: ``records = load_records("data/synthcxr-128/icg-cxr", "icg-cxr", skip_invalid=True, skipped_log="skipped.csv")``
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from progemu.data.problems import Problems, make_problems
from progemu.data.records import CXRRecord

FORMATS: tuple[str, ...] = ("icg-cxr", "mimic-edit", "mimic-cxr")


def scanner(fmt: str) -> Callable[..., list[CXRRecord]]:
    """The ``scan_*(root, problems, **kwargs)`` function of a format."""
    if fmt == "icg-cxr":
        from progemu.data.icg_cxr import scan_icg_cxr as scan
    elif fmt == "mimic-edit":
        from progemu.data.mimic_edit import scan_mimic_edit as scan
    elif fmt == "mimic-cxr":
        from progemu.data.mimic_cxr import scan_mimic_cxr as scan
    else:
        raise ValueError(f"unknown data format {fmt!r} (expected one of {', '.join(FORMATS)})")
    return scan


def load_records(
    root: str | Path,
    fmt: str,
    skip_invalid: bool = False,
    skipped_log: str | Path | None = None,
    **kwargs: Any,
) -> list[CXRRecord]:
    """Records of ``root`` in format ``fmt``; ``kwargs`` go to the format's loader (e.g. ``views=("PA",)``).

    A malformed record raises ``RecordError`` naming the file and the reason; with ``skip_invalid`` it is
    skipped and listed with its reason in ``skipped_log`` (``.jsonl`` or ``.csv``; default
    ``./skipped-<fmt>.jsonl``).
    """
    scan = scanner(fmt)
    problems = make_problems(fmt, skip_invalid, skipped_log)
    records = scan(root, problems, **kwargs)
    problems.write()
    return records


__all__ = ["FORMATS", "Problems", "load_records", "scanner"]
