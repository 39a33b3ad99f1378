"""Read a ``progemu generate`` output folder (``OUT/<id>/counterfactual.png``, ``interpretation.txt``,
``guidance.npy``, ``record.json``; ``OUT/results.jsonl``), and run generation when no folder is given.

Works on its own: any folder in that layout can be evaluated, whoever wrote it.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.data import EvalItem
from progemu.errors import ProgEmuError
from progemu.io import write_text_atomic


@dataclass
class Generated:
    """One item's outputs, or why there are none."""

    id: str
    image: Path | None = None
    text: str = ""
    guidance: Path | None = None
    error: str | None = None


def _errors(folder: Path) -> dict[str, str]:
    """Errors recorded per item in ``results.jsonl`` (unparseable lines are reported, not fatal)."""
    path, out = folder / "results.jsonl", {}
    if not path.is_file():
        return out
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            out[f"<line {n}>"] = f"{path}:{n}: unparseable line"
            continue
        if isinstance(row, dict) and row.get("error") and row.get("id") is not None:
            out[str(row["id"])] = str(row["error"])
    return out


def read_generated(folder: str | Path, ids: Sequence[str]) -> dict[str, Generated]:
    """The outputs of ``ids`` in ``folder``; a missing or failed item carries its reason in ``error``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ProgEmuError(f"{folder}: generation output folder not found")
    errors, out = _errors(folder), {}
    for item_id in ids:
        d = folder / item_id
        g = Generated(item_id)
        if item_id in errors:
            g.error = errors[item_id]
        elif not (d / "counterfactual.png").is_file():
            g.error = f"{d / 'counterfactual.png'}: not generated"
        elif not (d / "record.json").is_file():  # the generator writes it last: without it the item is unfinished
            g.error = f"{d / 'record.json'}: missing (unfinished item)"
        else:
            g.image = d / "counterfactual.png"
            txt = d / "interpretation.txt"
            g.text = txt.read_text(encoding="utf-8").strip() if txt.is_file() else ""
            g.guidance = d / "guidance.npy" if (d / "guidance.npy").is_file() else None
        out[item_id] = g
    return out


def load_guidance(path: Path | None) -> np.ndarray | None:
    """A guidance map (H, W) float32 in [0, 1] (``np.load`` without pickles), or None."""
    if path is None:
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ProgEmuError(f"{path}: unreadable guidance map ({err})") from err
    if arr.ndim != 2:
        raise ProgEmuError(f"{path}: guidance map must be 2-D, got shape {arr.shape}")
    return np.clip(arr.astype(np.float32), 0, 1)


def write_manifest(items: Sequence[EvalItem], path: Path) -> Path:
    """The ``progemu generate`` manifest of ``items`` (one JSON object a line: id, image, prompt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": it.id, "image": str(it.prior_path), "prompt": it.prompt}) for it in items]
    return write_text_atomic(path, "\n".join(lines) + "\n")  # a rerun never reads half a manifest


def run_generation(model: str | Path, items: Sequence[EvalItem], out: Path, extra_args: str = "",
                   task: str = "icg") -> Path:
    """Generate the items' counterfactuals with ``progemu generate`` into ``out`` (resumes; returns ``out``).

    ``task``: ``icg`` (progression prompts) or ``edit`` (MIMIC-EDIT instructions), unless ``extra_args`` sets it."""
    from progemu.cli import main as progemu_main

    manifest = write_manifest(items, out.parent / "manifest.jsonl")
    extra = shlex.split(extra_args)
    if not any(a == "--task" or a.startswith("--task=") for a in extra):
        extra = ["--task", task, *extra]
    argv = ["generate", "--model", str(model), "--input", str(manifest), "--out", str(out), *extra]
    try:
        code = progemu_main(argv)
    except SystemExit as err:  # argparse: an unknown subcommand or option
        raise ProgEmuError(f"progemu {' '.join(argv)} could not run (exit {err.code}); "
                           "evaluate an existing folder with --generated") from err
    if code not in (0, None) and not (out / "results.jsonl").is_file():
        raise ProgEmuError(f"progemu {' '.join(argv)} failed with exit code {code}")
    return out
