"""Can the training data path feed a GPU? Tokens/s, time to the first batch and peak memory of one rank's stream.

    python -m eval.bench_data [--rows 150000] [--seconds 30] [--workers 0 2] [--old-timeout 60]
                              [--work runs/bench_data] [--out runs/bench_data/results.json]

Makes (once, cached in ``--work``) a code-shard split of ``--rows`` rows at the ``base`` grid (32x32 codes of a
1,024-code book, random codes; template prompts and reports) in the real shard schema, and a processor. Then,
each in a fresh process, the ``base-pretrain`` run config's data path for one rank (``train.run.train_stream``
through the trainer's data loader) with 0 and 2 data-loader workers: time to the first batch, real tokens/s
delivered over ``--seconds``, peak resident memory of the main process and of its workers. The named baseline
is what the ``base`` model consumes on one H100 (~107k tokens/s, its measured train-step throughput). Finally the
path before streaming (every sequence of the schedule built before step 1, as lists) against a ``--old-timeout``
budget: how far it got, and the time and memory its first batch would need at 1,000 steps and at the
``base-pretrain`` schedule on 8 GPUs, projected from its measured rate.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GPU_TOKENS_PER_S = 107_000  # `base` training on one H100 (measured train-step throughput, bf16)
GRID, CODEBOOK = 32, 1024


def make_inputs(work: Path, rows: int) -> tuple[Path, Path]:
    """The shard split (written in parts of 10,000 rows, then saved as one split) and a processor folder."""
    import datasets
    import pyarrow as pa

    from progemu.processing_progemu import ProgEmuProcessor
    from progemu.tokenization import train_bpe_tokenizer
    from tokenizer.encode_dataset import FEATURES
    from tokenizer.train_text_tokenizer import synth_texts

    shards, proc_dir = work / "shards", work / "proc"
    done = shards / "train" / "dataset_info.json"
    if done.is_file() and (proc_dir / "processor_config.json").is_file() and \
            len(datasets.load_from_disk(str(shards / "train"))) == rows:
        return shards, proc_dir
    texts = list(synth_texts(4000, seed=0))
    tok = train_bpe_tokenizer(texts, vocab_size=1024)
    ProgEmuProcessor(tok, codebook_size=CODEBOOK, grid_h=GRID, grid_w=GRID).save_pretrained(str(proc_dir))
    rng, gen = random.Random(0), np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        parts = []
        for start in range(0, rows, 10_000):
            n = min(10_000, rows - start)
            offsets = pa.array(np.arange(n + 1, dtype=np.int32) * GRID * GRID)
            cols = {"id": [f"bench-{start + i}" for i in range(n)], "task_source": ["bench"] * n,
                    "prior_codes": pa.ListArray.from_arrays(offsets, gen.integers(0, CODEBOOK, n * GRID * GRID,
                                                                                   dtype=np.int32)),
                    "target_codes": pa.ListArray.from_arrays(offsets, gen.integers(0, CODEBOOK, n * GRID * GRID,
                                                                                    dtype=np.int32)),
                    "grid_h": pa.array(np.full(n, GRID, np.int32)), "grid_w": pa.array(np.full(n, GRID, np.int32)),
                    "prompt": [rng.choice(texts) for _ in range(n)],
                    "interpretation": [rng.choice(texts) for _ in range(n)],
                    "instruction": [rng.choice(texts) for _ in range(n)],
                    # MIMIC-CXR reports run to a few sentences: three template sentences each
                    "prior_report": [" ".join(rng.sample(texts, 3)) for _ in range(n)],
                    "target_report": [" ".join(rng.sample(texts, 3)) for _ in range(n)]}
            table = pa.table(cols).cast(FEATURES.arrow_schema)
            part = Path(tmp) / f"part{start}"
            datasets.Dataset(table).save_to_disk(str(part))
            parts.append(datasets.load_from_disk(str(part)))
        datasets.concatenate_datasets(parts).save_to_disk(str(shards / "train"))
    return shards, proc_dir


class PeakRSS:
    """Samples the resident memory of this process and, summed, of its child processes (the data-loader workers):
    all of it, and the private part (without file-backed pages such as the memory-mapped shards, which the
    kernel can drop and every process shares)."""

    def __init__(self, every: float = 0.05):
        import psutil

        self.proc, self.every, self.main, self.children = psutil.Process(), every, 0, 0
        self.main_private, self.children_private = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(self.every):
            try:
                mine = self.proc.memory_info()
                self.main = max(self.main, mine.rss)
                self.main_private = max(self.main_private, mine.rss - mine.shared)
                kids = [c.memory_info() for c in self.proc.children(recursive=True)]
                self.children = max(self.children, sum(k.rss for k in kids))
                self.children_private = max(self.children_private, sum(k.rss - k.shared for k in kids))
            except psutil.Error:
                pass

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"peak_rss_main_gib": self.main / 2**30, "peak_rss_workers_gib": self.children / 2**30,
                "peak_private_main_gib": self.main_private / 2**30,
                "peak_private_workers_gib": self.children_private / 2**30}


def config_flags(shards: Path, proc: Path, workers: int, max_steps: int) -> list[str]:
    return ["--config", "base-pretrain", "--shards", str(shards), "--processor", str(proc), "--deepspeed", "none",
            "--output_dir", str(Path(tempfile.gettempdir()) / "bench_data_run"), "--report_to", "none",
            "--dataloader_num_workers", str(workers), "--max_steps", str(max_steps)]


def stream_worker(shards: Path, proc_dir: Path, workers: int, seconds: float) -> dict:
    """One rank's stream (``base-pretrain``) through the trainer's data loader; run in a fresh process."""
    from progemu.processing_progemu import ProgEmuProcessor
    from train.config import parse_config
    from train.data import load_sources
    from train.engine import stream_loader
    from train.examples import Collator
    from train.run import train_stream

    peak = PeakRSS()
    _, d, args = parse_config(config_flags(shards, proc_dir, workers, 100_000))
    proc = ProgEmuProcessor.from_pretrained(str(proc_dir))
    proc.max_length = d.max_length
    t0 = time.perf_counter()
    sources = load_sources(d.shards, d.train_split)
    loader = stream_loader(train_stream(d, args, proc, sources), args,
                           Collator(proc.layout.pad_id, d.max_length, d.packing))
    it = iter(loader)
    batch = next(it)
    first = time.perf_counter() - t0
    tokens, rows, t1 = 0, 0, time.perf_counter()
    while time.perf_counter() - t1 < seconds:
        batch = next(it)
        tokens += int(batch["num_tokens"])
        rows += batch["input_ids"].shape[0]
    elapsed = time.perf_counter() - t1
    return {"path": "stream", "workers": workers, "first_batch_s": first, "tokens_per_s": tokens / elapsed,
            "real_token_share": tokens / (rows * d.max_length), "rows": rows, **peak.stop(),
            "shard_rows": sum(len(s) for s in sources)}


def old_worker(shards: Path, proc_dir: Path, timeout: float) -> dict:
    """The path before streaming: every (row, task) sequence built as arrays, round after round, before the
    first batch. Run against ``timeout``; its rate gives the projections."""
    from progemu.processing_progemu import ProgEmuProcessor
    from train.config import parse_config
    from train.data import load_sources, row_rng, to_seq
    from train.run import example_builder

    peak = PeakRSS()
    _, d, args = parse_config(config_flags(shards, proc_dir, 0, 1000))
    proc = ProgEmuProcessor.from_pretrained(str(proc_dir))
    proc.max_length = d.max_length
    rows = load_sources(d.shards, d.train_split)[0]
    build = example_builder(proc, d)
    t0, seqs, tokens = time.perf_counter(), [], 0
    for i in range(len(rows)):
        row = rows[i]
        for task in d.tasks:
            built = build(row, task, row_rng(args.seed, 0, i, task))
            if built is not None:
                seqs.append(to_seq(built, d.max_length, task))
                tokens += len(seqs[-1][0])
        if time.perf_counter() - t0 > timeout:
            break
    elapsed = time.perf_counter() - t0
    mem = peak.stop()
    per_round = len(rows) * len(d.tasks)
    return {"path": "eager (before streaming)", "workers": 0, "timeout_s": timeout, "sequences": len(seqs),
            "sequences_per_round": per_round, "seq_per_s": len(seqs) / elapsed, "tokens_per_seq": tokens / len(seqs),
            "bytes_per_seq": 12 * tokens / len(seqs), **mem, "max_length": d.max_length,
            "batch": args.per_device_train_batch_size, "accum": args.gradient_accumulation_steps}


def project(old: dict, share: float, max_steps: int, world: int) -> tuple[float, float]:
    """Hours and GiB the eager path needs before step 1: enough whole rounds for ``max_steps`` packed rows."""
    need_rows = max_steps * old["batch"] * old["accum"] * world
    rows_per_round = old["sequences_per_round"] * old["tokens_per_seq"] / (share * old["max_length"])
    seqs = -(-need_rows // rows_per_round) * old["sequences_per_round"]
    return seqs / old["seq_per_s"] / 3600, seqs * old["bytes_per_seq"] / 2**30


def in_fresh_process(*argv: str, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "eval.bench_data", *argv], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"eval.bench_data {' '.join(argv)} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--stream-worker"]:
        print(json.dumps(stream_worker(Path(argv[1]), Path(argv[2]), int(argv[3]), float(argv[4]))))
        return
    if argv[:1] == ["--old-worker"]:
        print(json.dumps(old_worker(Path(argv[1]), Path(argv[2]), float(argv[3]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=150_000)
    ap.add_argument("--seconds", type=float, default=30.0, help="how long each configuration streams")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--old-timeout", type=float, default=60.0, help="budget of the eager path (0: skip it)")
    ap.add_argument("--work", default="runs/bench_data")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    shards, proc = make_inputs(work, a.rows)
    print(f"shard split: {a.rows:,} rows at {GRID}x{GRID} codes ({time.perf_counter() - t:.0f} s to make or find)")
    results = [in_fresh_process("--stream-worker", str(shards), str(proc), str(w), str(a.seconds),
                                timeout=a.seconds + 600) for w in a.workers]
    old = in_fresh_process("--old-worker", str(shards), str(proc), str(a.old_timeout),
                           timeout=a.old_timeout + 600) if a.old_timeout > 0 else None
    print(f"\nbaseline: the `base` model consumes {GPU_TOKENS_PER_S:,} tokens/s on one H100; packed rows hold "
          f"{results[0]['real_token_share']:.1%} real tokens\n")
    print("| data path (one rank, base-pretrain) | workers | first batch (s) | real tokens/s | x H100 need "
          "| peak RSS main / workers (GiB) | of it private (GiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| streamed, packed on the fly | {r['workers']} | {r['first_batch_s']:.1f} | {r['tokens_per_s']:,.0f} "
              f"| {r['tokens_per_s'] / GPU_TOKENS_PER_S:.2f} | {r['peak_rss_main_gib']:.2f} / "
              f"{r['peak_rss_workers_gib']:.2f} | {r['peak_private_main_gib']:.2f} / "
              f"{r['peak_private_workers_gib']:.2f} |")
    if old:
        share = results[0]["real_token_share"]
        h1, g1 = project(old, share, 1000, 1)
        h2, g2 = project(old, share, 100_000, 8)
        old.update(projected_first_batch_h_1000_steps=h1, projected_gib_1000_steps=g1,
                   projected_first_batch_h_base_8gpu=h2, projected_gib_base_8gpu=g2)
        print(f"| eager, before streaming | 0 | > {old['timeout_s']:.0f}: {old['sequences']:,} of "
              f"{old['sequences_per_round']:,} sequences of round 1 | - | - | {old['peak_rss_main_gib']:.2f} / - "
              f"| {old['peak_private_main_gib']:.2f} / - |")
        print(f"\neager path, projected from {old['seq_per_s']:.0f} sequences/s and {old['bytes_per_seq'] / 1024:.0f} "
              f"KiB per sequence: first batch after {h1:.2f} h and {g1:.1f} GiB at 1,000 steps; after {h2:,.0f} h "
              f"and {g2:,.0f} GiB per rank at base-pretrain's 100,000 steps on 8 GPUs")
    if a.out:
        Path(a.out).write_text(json.dumps({"streams": results, "eager": old}, indent=2))


if __name__ == "__main__":
    main()
