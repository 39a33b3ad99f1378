"""Atomic file writes: a reader (or a resumed job) never sees half a file."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # per process: two writers never share a temp file
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when ``write`` failed
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``text`` (UTF-8) written atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """``json.dumps(obj)`` written atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent))


def file_stamp(path: str | Path | None) -> str | None:
    """``resolved path:size:mtime_ns`` of a file (its path alone when it cannot be read; None for none): what a
    resumable job compares to tell whether an input or a weight file changed since a result was made."""
    if path is None:
        return None
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        return str(p)
    return f"{p}:{st.st_size}:{st.st_mtime_ns}"
