"""Benchmark the SynthCXR generator: pairs per second, in memory and written to disk.

Run: ``PYTHONPATH=. .venv/bin/python -m eval.bench_synth --pairs 1000 --sizes 128 256 --workers 1 2``
(the project's target: 1,000 pairs at 256 px written in under 60 s on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from progemu.synth import SynthCXR, write_dataset


def bench_memory(pairs: int, size: int) -> float:
    """Seconds to generate ``pairs`` pairs in memory, one process."""
    gen = SynthCXR(size=size, seed=0)
    t0 = time.perf_counter()
    for i in range(pairs):
        gen.pair(i)
    return time.perf_counter() - t0


def bench_write(pairs: int, size: int, workers: int, root: str) -> float:
    """Seconds for ``write_dataset`` (both layouts, PNGs, csv, manifest) into a fresh folder."""
    out = os.path.join(root, f"synth-{size}-{workers}")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    manifest = write_dataset(out, pairs, size=size, seed=0, workers=workers)
    took = time.perf_counter() - t0
    if manifest["failures"]:
        raise SystemExit(f"{len(manifest['failures'])} pairs failed: {manifest['failures'][:3]}")
    shutil.rmtree(out, ignore_errors=True)
    return took


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--memory-pairs", type=int, default=200, help="pairs for the in-memory (1 process) row")
    ap.add_argument("--tmp", default=None, help="scratch folder (default: a temporary folder)")
    args = ap.parse_args(argv)
    root = args.tmp or tempfile.mkdtemp(prefix="bench-synth-")
    print(f"{'mode':<16}{'size':>6}{'workers':>9}{'pairs':>8}{'seconds':>10}{'pairs/s':>10}")
    try:
        for size in args.sizes:
            took = bench_memory(args.memory_pairs, size)
            print(f"{'in memory':<16}{size:>6}{1:>9}{args.memory_pairs:>8}{took:>10.2f}{args.memory_pairs / took:>10.1f}")
            for w in args.workers:
                took = bench_write(args.pairs, size, w, root)
                print(f"{'write_dataset':<16}{size:>6}{w:>9}{args.pairs:>8}{took:>10.2f}{args.pairs / took:>10.1f}")
    finally:
        if args.tmp is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
