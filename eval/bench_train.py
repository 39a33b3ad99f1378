"""Training throughput of this pipeline against a ProgEmu-style baseline, and ZeRO-0/2/3 step time and memory.

    python -m eval.bench_train [--steps 12] [--batch 4] [--preset tiny] [--shards data/shards-128 --processor DIR]
                               [--zero-ranks 2] [--out runs/bench_train.json]

Side by side in one run, same model (preset), same data, same machine:
- *baseline* as ProgEmu trains: every sample padded to the maximum length, fp32, no packing;
- *pipeline* as `make pretrain` trains: packed rows (document-masked attention), bf16, SDPA/FlashAttention.
Tokens/s counts real (non-pad) tokens. Then the same model under DeepSpeed ZeRO-0, 2 and 3 (``--zero-ranks``
ranks via torchrun: gloo on CPU, nccl on GPUs): median step time and peak memory per rank. Without shards it
makes SynthCXR-sized ones (16x16 codes, report-length texts) and a BPE tokenizer, so it runs anywhere.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (synchronised on GPUs)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)


def make_inputs(work: Path, grid: int = 16, rows: int = 256) -> tuple[Path, Path]:
    """SynthCXR-sized shards (random codes, SynthCXR-style texts) and a processor folder."""
    import datasets

    from progemu.processing_progemu import ProgEmuProcessor
    from progemu.tokenization import train_bpe_tokenizer
    from tokenizer.train_text_tokenizer import synth_texts

    texts = list(synth_texts(4000, seed=0))
    rng = random.Random(0)
    data = []
    for i in range(rows):
        report = " ".join(rng.sample(texts, 3))
        data.append({"id": f"b{i}", "task_source": "bench", "grid_h": grid, "grid_w": grid,
                     "prior_codes": [rng.randrange(512) for _ in range(grid * grid)],
                     "target_codes": [rng.randrange(512) for _ in range(grid * grid)],
                     "prompt": rng.choice(texts), "interpretation": rng.choice(texts), "instruction": rng.choice(texts),
                     "prior_report": report, "target_report": " ".join(rng.sample(texts, 3))})
    datasets.Dataset.from_list(data).save_to_disk(str(work / "shards" / "train"))
    proc = ProgEmuProcessor(train_bpe_tokenizer(texts, vocab_size=1024), codebook_size=512, grid_h=grid, grid_w=grid)
    proc.save_pretrained(str(work / "proc"))
    return work / "shards", work / "proc"


def common_flags(a: argparse.Namespace, shards: Path, proc: Path, out: Path) -> list[str]:
    return ["--config", "tiny-pretrain", "--model_preset", a.preset, "--shards", str(shards), "--processor", str(proc),
            "--output_dir", str(out), "--max_length", str(a.max_length), "--max_steps", str(a.steps),
            "--per_device_train_batch_size", str(a.batch), "--logging_steps", "1", "--report_to", "none",
            "--save_strategy", "no", "--disable_tqdm", "true", "--tasks", "report2image", "image2report", "icg",
            "--gradient_checkpointing", "false", "--dataloader_num_workers", "0"]


def train_once(flags: list[str], fresh_process: bool = False) -> dict[str, float]:
    """One in-process run; median tokens/s and step time after the warm-up steps."""
    from accelerate.state import AcceleratorState

    from train.config import parse_config
    from train.data import load_sources
    from train.engine import make_trainer
    from train.examples import Collator
    from train.run import build_model, load_processor, train_stream

    AcceleratorState._reset_state(reset_partial_state=True)  # each run sets its own precision
    m, d, args = parse_config(flags)
    sources = load_sources(d.shards, d.train_split)
    proc, vq = load_processor(m, d, sources[0])
    proc.max_length = d.max_length
    ds = train_stream(d, args, proc, sources)
    sample = list(itertools.islice(train_stream(d, args, proc, sources), 200))  # the rows' real-token share
    torch.manual_seed(0)
    model = build_model(m, proc, d.max_length, d.image_loss_weight, d.text_loss_weight, vq)
    timer = StepTimer()
    trainer = make_trainer(model, args, ds, Collator(proc.layout.pad_id, d.max_length, d.packing))
    trainer.add_callback(timer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "tokens_per_second" in h]
    warm = max(1, len(logs) // 4)
    tps = statistics.median(h["tokens_per_second"] for h in logs[warm:])
    real = sum(len(r["input_ids"]) for r in sample) / (len(sample) * d.max_length)
    return {"tokens_per_second": tps, "step_s": statistics.median(timer.times[warm:]), "real_token_share": real,
            "final_loss": logs[-1]["loss"], "peak_mem_gib": peak_mem_gib(fresh_process),
            "precision": str(trainer.accelerator.mixed_precision), "attention": model.config._attn_implementation}


def peak_mem_gib(fresh_process: bool) -> float | None:
    """GPU: peak allocated by this run. CPU: the process's peak RSS, meaningful only in a process of its own."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 if fresh_process else None  # KiB -> GiB


def zero_worker(argv: list[str]) -> None:
    """Runs under torchrun: ``--zero-worker STAGE OUT_JSON FLAGS...``."""
    stage, out, flags = argv[0], argv[1], argv[2:]
    res = train_once([*flags, "--deepspeed", f"zero{stage}"], fresh_process=True)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(out).write_text(json.dumps(res))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--zero-worker"]:
        return zero_worker(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4, help="rows (packed) or samples (padded) per rank and step")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--max_length", type=int, default=1024)
    ap.add_argument("--shards")
    ap.add_argument("--processor")
    ap.add_argument("--zero-ranks", type=int, default=None, help="ranks for the ZeRO table (default: GPUs or 2)")
    ap.add_argument("--skip-zero", action="store_true")
    ap.add_argument("--out", default="runs/bench_train.json")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    shards, proc = (Path(a.shards), Path(a.processor)) if a.shards else make_inputs(work)
    base = common_flags(a, shards, proc, work / "run")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    results: dict[str, object] = {"device": device, "preset": a.preset, "max_length": a.max_length,
                                  "batch": a.batch, "steps": a.steps}
    # same model, data and machine; the baseline first so that the pipeline gets no warmer caches than it
    results["baseline"] = train_once([*base, "--packing", "pad_max", "--precision", "fp32", "--deepspeed", "none"])
    results["pipeline"] = train_once([*base, "--packing", "pack", "--precision", "bf16", "--deepspeed", "none"])
    results["speedup"] = results["pipeline"]["tokens_per_second"] / results["baseline"]["tokens_per_second"]
    print(json.dumps(results), flush=True)
    if not a.skip_zero:
        ranks = a.zero_ranks or (torch.cuda.device_count() or 2)
        zero = {}
        for stage in (0, 2, 3):
            out = work / f"zero{stage}.json"
            env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // ranks))}
            env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                   str(Path(__file__).resolve()), "--zero-worker", str(stage), str(out),
                   *common_flags(a, shards, proc, work / f"z{stage}"), "--packing", "pack", "--precision", "bf16"]
            proc_ = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            if proc_.returncode != 0 or not out.is_file():
                print(f"ZeRO-{stage} run failed:\n{proc_.stderr[-3000:]}", file=sys.stderr)
                continue
            zero[f"zero{stage}"] = json.loads(out.read_text())
        results["zero"] = {"ranks": ranks, **zero}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    print_table(results)


def print_table(r: dict) -> None:
    print(f"\ndevice: {r['device']}; preset {r['preset']}, {r['batch']} rows x {r['max_length']} tokens per step")
    print("| run | real tokens/s | step (s) | real-token share | peak memory (GiB) |\n| --- | --- | --- | --- | --- |")
    for k in ("baseline", "pipeline"):
        v = r[k]
        mem = "n/a (CPU, shared process)" if v["peak_mem_gib"] is None else f"{v['peak_mem_gib']:.2f}"
        print(f"| {k} | {v['tokens_per_second']:.0f} | {v['step_s']:.3f} | {v['real_token_share']:.2f} | {mem} |")
    print(f"speed-up (real tokens/s): {r['speedup']:.2f}x")
    if "zero" in r:
        print(f"\n| ZeRO stage ({r['zero']['ranks']} ranks) | step (s) | tokens/s | peak memory per rank (GiB) |")
        print("| --- | --- | --- | --- |")
        for k, v in r["zero"].items():
            if k != "ranks":
                print(f"| {k} | {v['step_s']:.3f} | {v['tokens_per_second']:.0f} | {v['peak_mem_gib']:.2f} |")


if __name__ == "__main__":
    main()
