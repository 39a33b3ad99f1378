"""Fixtures for the training tests: a tiny processor folder and code shards in the exact shard schema."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import datasets

REPO = Path(__file__).resolve().parents[1]
GRID = 4  # 4x4 codes: image blocks of 4*5+3+len("4*4") tokens keep sequences short
CODEBOOK = 32
TINY_MODEL = '{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, ' \
             '"num_key_value_heads": 2, "max_position_embeddings": 256}'
FINDINGS = ["pleural effusion", "cardiomegaly", "pneumothorax", "edema", "consolidation"]


def texts(rng: random.Random) -> dict[str, str]:
    f = rng.choice(FINDINGS)
    side = rng.choice(["left", "right"])
    return {"prompt": f"New {side} {f} has developed. No pneumothorax.",
            "interpretation": f"The follow-up shows a {side} {f}.",
            "instruction": f"Add the finding of {f}.",
            "prior_report": "FINDINGS: Lungs are clear. IMPRESSION: No acute process.",
            "target_report": f"FINDINGS: There is a {side} {f}. IMPRESSION: {f.capitalize()}."}


def make_shards(root: Path, n: int = 24, seed: int = 0) -> Path:
    """``root/train`` and ``root/validate`` Arrow folders with the columns of docs/architecture.md."""
    rng = random.Random(seed)
    for split, count in (("train", n), ("validate", max(4, n // 4))):
        rows = []
        for i in range(count):
            t = texts(rng)
            rows.append({"id": f"{split}-{i}", "task_source": "synthcxr",
                         "prior_codes": [rng.randrange(CODEBOOK) for _ in range(GRID * GRID)],
                         "target_codes": [rng.randrange(CODEBOOK) for _ in range(GRID * GRID)],
                         "grid_h": GRID, "grid_w": GRID, **t})
        datasets.Dataset.from_list(rows).save_to_disk(str(root / split))
    return root


def make_processor(out: Path) -> Path:
    """A saved `ProgEmuProcessor` (BPE tokenizer trained on the fixture texts, 4x4 grid, no VQ)."""
    from progemu.processing_progemu import ProgEmuProcessor
    from progemu.tokenization import train_bpe_tokenizer

    rng = random.Random(1)
    corpus = [v for _ in range(200) for v in texts(rng).values()]
    tok = train_bpe_tokenizer(corpus, vocab_size=320)
    proc = ProgEmuProcessor(tok, codebook_size=CODEBOOK, grid_h=GRID, grid_w=GRID)
    proc.save_pretrained(str(out))
    return out


def torchrun(nproc: int, module: str, args: list[str], cwd: Path = REPO, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run ``python -m torch.distributed.run --standalone ...`` (loopback, a free port) with one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions")),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    target = [module] if module.endswith(".py") else ["-m", module]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *target, *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def run_args(shards: Path, processor: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", "tiny-pretrain", "--shards", str(shards), "--processor", str(processor),
            "--output_dir", str(out), "--model_overrides", TINY_MODEL, "--max_length", "256",
            "--per_device_train_batch_size", "2", "--logging_steps", "1", "--report_to", "none",
            "--disable_tqdm", "true", "--dataloader_num_workers", "0", *extra]


TAG_TASKS = ("icg", "edit", "report2image", "image2report")


def tagged_builder(row: dict, task: str, rng: random.Random) -> dict:
    """A stand-in for the example builder whose sequence names its source: the first token encodes the row's
    id (``"{folder}-{number}"``, folder ``a``..``z`` or a split name) and the task; random length 3-12."""
    folder, number = row["id"].rsplit("-", 1)
    tag = 1000 + (int(number) * 32 + (ord(folder[0]) - ord("a"))) * 4 + TAG_TASKS.index(task)
    n = rng.randrange(3, 13)
    return {"input_ids": [tag] + [7] * (n - 1), "labels": [tag] + [7] * (n - 1), "loss_weights": None}


def untag(tag: int) -> tuple[str, int, str]:
    """(folder letter, row number, task) of a `tagged_builder` sequence's first token."""
    rest, task = divmod(int(tag) - 1000, 4)
    number, folder = divmod(rest, 32)
    return chr(ord("a") + folder), number, TAG_TASKS[task]
