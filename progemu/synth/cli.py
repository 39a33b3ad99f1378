"""``progemu synth``: write the SynthCXR data set.

Run: ``progemu synth --out data/synthcxr-128 --pairs 2000 --size 128 --seed 0 --preview --workers 2``
"""

from __future__ import annotations

import argparse
import json
import time

from progemu.errors import ProgEmuError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synth", help="write the synthetic longitudinal chest X-ray data set (SynthCXR)",
                              description="Write SynthCXR pairs in the ICG-CXR and MIMIC-EDIT-INSTRUCTION layouts.")
    p.add_argument("--out", required=True, help="output folder (re-running resumes)")
    p.add_argument("--pairs", type=int, default=1000, help="number of longitudinal pairs")
    p.add_argument("--size", type=int, default=128, help="image size in pixels (64 to 512)")
    p.add_argument("--seed", type=int, default=0, help="seed; the same seed gives the same data set")
    p.add_argument("--preview", action="store_true", help="also write OUT/preview.png (a contact sheet)")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from progemu.synth.writer import write_dataset

    if not 64 <= args.size <= 512:
        raise ProgEmuError(f"--size must be between 64 and 512, got {args.size}")
    if args.pairs < 1:
        raise ProgEmuError(f"--pairs must be at least 1, got {args.pairs}")
    t0 = time.perf_counter()
    manifest = write_dataset(args.out, args.pairs, size=args.size, seed=args.seed, preview=args.preview,
                             workers=max(1, args.workers))
    took = time.perf_counter() - t0
    print(json.dumps({k: manifest[k] for k in ("pairs", "counts", "patients", "changed_pairs", "unchanged_pairs")}))
    print(f"wrote {manifest['pairs']} pairs to {args.out} in {took:.1f} s ({manifest['pairs'] / took:.1f} pairs/s)")
    for fail in manifest["failures"]:
        print(f"failed pair {fail['index']}: {fail['error']}")
    return 1 if manifest["failures"] else 0
