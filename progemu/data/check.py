"""``progemu data check DIR --format icg-cxr|mimic-edit|mimic-cxr``: validate a data set.

Reads every record, opens every image with ``load_image``, prints the counts per split and every problem
found, and exits non-zero when there is any problem.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from progemu.data.loaders import FORMATS, scanner
from progemu.data.problems import Problems
from progemu.data.records import SPLITS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="data-set tools")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = sub.add_parser("check", help="validate a data set: counts per split and every problem found")
    p.add_argument("root", type=Path, metavar="DIR", help="the data set's root folder")
    p.add_argument("--format", dest="fmt", required=True, choices=FORMATS, help="the data set's layout")
    p.add_argument("--views", default="PA,AP", help="mimic-cxr: view positions kept (comma-separated)")
    p.add_argument("--no-images", action="store_true", help="check files exist but do not decode the images")
    p.add_argument("--skipped-log", type=Path, default=None, help="also write the problems to this .jsonl/.csv")
    p.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    problems = Problems(skip=True, log_path=args.skipped_log)
    kwargs = {"verify_images": not args.no_images}
    if args.fmt == "mimic-cxr":
        kwargs["views"] = tuple(v.strip() for v in args.views.split(",") if v.strip())
    records = scanner(args.fmt)(args.root, problems, **kwargs)
    if not records and not problems.items:
        problems.fail(args.root, f"no {args.fmt} records found")
    problems.write()
    counts = Counter(r.split for r in records)
    print(f"{args.root} ({args.fmt}): {len(records)} valid records")
    for split in SPLITS:
        print(f"  {split}: {counts.get(split, 0)}")
    print(f"{len(problems.items)} problem(s)")
    for p in problems.items:
        print(f"  {p.path}: {p.reason}" + (f" [{p.item}]" if p.item else ""), file=sys.stdout)
    return 1 if problems.items else 0
