"""Batch generation on 1 process against N processes under torchrun (the same items, settings and checkpoint).

    python -m eval.bench_generate_ranks --items 48 --ranks 2 --repeats 3

Each path runs ``progemu generate`` as a user would (start-up and model loading included) into a fresh output
folder, with ``OMP_NUM_THREADS=threads`` per process; the paths are interleaved in every repeat and medians
reported. The items are the first ``--items`` of the demo data set's validate split (built when missing), the
settings the demo's. Also printed: each rank's share of the items and how much earlier the first rank ran out of
work than the last (the imbalance that claiming batches leaves).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = "--greedy --cfg-image 2.0 --region auto --tau 0.05 --dilate 1 --paste-prior --dtype float32"


def manifest(data: Path, items: int, path: Path) -> Path:
    from eval.data import eval_items, load_records
    from eval.outputs import write_manifest

    if not (data / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "progemu", "synth", "--out", str(data), "--pairs", "2400", "--size",
                        "128", "--seed", "1234", "--workers", "2"], cwd=REPO, check=True)
    return write_manifest(eval_items(load_records(data), "validate", items), path)


def run(ranks: int, threads: int, args: list[str]) -> tuple[float, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    launch = [sys.executable, "-m", "progemu"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m", "progemu"]
    t0 = time.perf_counter()
    done = subprocess.run([*launch, *args], cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    lines = [x for x in done.stderr.splitlines() if x.startswith('{"out"')]
    if done.returncode not in (0, 1) or not lines:
        raise SystemExit(f"generation failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "progemu" / "assets" / "tiny-synthcxr"))
    ap.add_argument("--data", default=str(REPO / "data" / "synthcxr-demo"))
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-ranks-"))
    man = manifest(Path(a.data), a.items, work / "manifest.jsonl")
    paths = {f"1 process, {a.threads} thread(s)": 1,
             f"{a.ranks} processes (torchrun), {a.threads} thread(s) each": a.ranks}
    times: dict[str, list[float]] = {k: [] for k in paths}
    summaries: dict[str, dict] = {}
    for rep in range(a.repeats):
        for name, n in paths.items():
            out = work / f"out-{n}-{rep}"
            args = ["generate", "--model", a.model, "--input", str(man), "--out", str(out), "--no-progress",
                    "--device", "cpu", "--batch-size", str(a.batch_size), *SETTINGS.split()]
            seconds, summaries[name] = run(n, a.threads, args)
            times[name].append(seconds)
            print(f"repeat {rep + 1}: {name}: {seconds:.1f} s", flush=True)
            shutil.rmtree(out)
    base = statistics.median(times[next(iter(paths))])
    print(f"\n{a.items} items, batch {a.batch_size}, {a.repeats} repeats (median wall time, start-up included)\n")
    print("| path | s (median) | s / item | speed-up |\n|---|---|---|---|")
    for name in paths:
        med = statistics.median(times[name])
        print(f"| {name} | {med:.1f} | {med / a.items:.2f} | {base / med:.2f}x |")
    multi = summaries[list(paths)[1]]
    if "ranks" in multi:
        shares = ", ".join(f"rank {r['rank']}: {r['items']} items, {r['busy_s']:.1f} s busy" for r in multi["ranks"])
        print(f"\nlast repeat's shares: {shares}; imbalance (last rank's end - first rank's end) / last rank's end: "
              f"{multi['imbalance']:.3f}")
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
