"""The `progemu` command line. Each subcommand lives in its own module that defines ``add_parser``.

Run: ``progemu --help``
"""

from __future__ import annotations

import argparse
import importlib
import sys

from progemu.errors import ProgEmuError

# Modules that each register one or more subcommands through ``add_parser(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "progemu.data.check",
    "progemu.synth.cli",
    "progemu.generation.cli",
    "progemu.convert.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="progemu", description="Interpretable counterfactual chest X-ray generation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):  # that part of the package is not built yet
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ProgEmuError as err:
        print(f"progemu {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
