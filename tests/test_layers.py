"""Layers import downward only: ``progemu/`` imports none of the outer folders, and ``tokenizer/``, ``train/`` and
``eval/`` import ``progemu/`` and not each other (the benchmark scripts ``eval/bench_*`` excepted: they time the
other layers' code)."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OUTER = ("tokenizer", "train", "eval")


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every absolute import in a file, function-level imports included."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add((node.module.split(".")[0], node.lineno))
    return out


def files(folder: str) -> list[Path]:
    return sorted(p for p in (REPO / folder).rglob("*.py") if not p.name.startswith("bench_"))


@pytest.mark.parametrize("folder", ["progemu", *OUTER])
def test_layers_import_downward_only(folder):
    allowed = {folder} if folder in OUTER else set()
    bad = [f"{p.relative_to(REPO)}:{line} imports {pkg}" for p in files(folder)
           for pkg, line in sorted(imported_packages(p)) if pkg in OUTER and pkg not in allowed]
    assert not bad, "\n".join(bad)


def test_the_check_sees_function_level_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import os\n\ndef f():\n    from eval.data import x\n    import train.run\n")
    assert imported_packages(path) == {("os", 1), ("eval", 4), ("train", 5)}
