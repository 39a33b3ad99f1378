"""Benchmark the SynthCXR generator: pairs per second, in memory and written to disk.

Run: ``PYTHONPATH=. .venv/bin/python -m eval.bench_synth --pairs 1000 --sizes 128 256 --workers 1 2``
(the project's target: 1,000 pairs at 256 px written in under 60 s on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time

from progemu.synth import SynthCXR, write_dataset


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children: on a shared machine it shows what
    the work costs when the cores are free (wall time there is about CPU time / workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bench_memory(pairs: int, size: int) -> tuple[float, float]:
    """(wall, CPU) seconds to generate ``pairs`` pairs in memory, one process."""
    gen = SynthCXR(size=size, seed=0)
    t0, c0 = time.perf_counter(), cpu_seconds()
    for i in range(pairs):
        gen.pair(i)
    return time.perf_counter() - t0, cpu_seconds() - c0


def bench_write(pairs: int, size: int, workers: int, root: str) -> tuple[float, float]:
    """(wall, CPU) seconds for ``write_dataset`` (both layouts, PNGs, csv, manifest) into a fresh folder."""
    out = os.path.join(root, f"synth-{size}-{workers}")
    shutil.rmtree(out, ignore_errors=True)
    t0, c0 = time.perf_counter(), cpu_seconds()
    manifest = write_dataset(out, pairs, size=size, seed=0, workers=workers)
    took = time.perf_counter() - t0, cpu_seconds() - c0
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
    print(f"load average at the start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'mode':<16}{'size':>6}{'workers':>9}{'pairs':>8}{'wall s':>9}{'pairs/s':>9}{'CPU s':>9}{'ms CPU/pair':>13}")

    def row(mode: str, size: int, w: int, n: int, wall: float, cpu: float) -> None:
        print(f"{mode:<16}{size:>6}{w:>9}{n:>8}{wall:>9.2f}{n / wall:>9.1f}{cpu:>9.2f}{1e3 * cpu / n:>13.1f}")

    try:
        for size in args.sizes:
            row("in memory", size, 1, args.memory_pairs, *bench_memory(args.memory_pairs, size))
            for w in args.workers:
                row("write_dataset", size, w, args.pairs, *bench_write(args.pairs, size, w, root))
    finally:
        if args.tmp is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
