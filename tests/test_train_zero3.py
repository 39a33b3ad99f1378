"""ZeRO-3 on 2 CPU ranks (gloo, loopback), then the consolidated folder reloads with identical logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _train_helpers import REPO, make_processor, make_shards, run_args, torchrun

RELOAD = """
import sys, torch
import progemu
from transformers import AutoModelForCausalLM, AutoProcessor
sys.path.insert(0, {tests!r})
from _train_worker import PROBE_IDS
model = AutoModelForCausalLM.from_pretrained({final!r}).eval()
proc = AutoProcessor.from_pretrained({final!r})
assert type(model).__name__ == "ProgEmuForCausalLM", type(model)
assert type(proc).__name__ == "ProgEmuProcessor", type(proc)
with torch.no_grad():
    logits = model(input_ids=PROBE_IDS).logits.float()
ref = torch.load({probe!r}, weights_only=True)
print("maxdiff", (logits - ref).abs().max().item())
assert torch.equal(logits, ref), (logits - ref).abs().max()
"""


@pytest.mark.distributed
def test_zero3_two_ranks_then_consolidated_reload(tmp_path):
    shards, proc = make_shards(tmp_path / "shards"), make_processor(tmp_path / "proc")
    out, probe = tmp_path / "run", tmp_path / "probe.pt"
    torchrun(2, str(REPO / "tests" / "_train_worker.py"),
             ["--probe", str(probe), *run_args(shards, proc, out, "--deepspeed", "zero3", "--max_steps", "4",
                                               "--save_steps", "4", "--precision", "fp32")])
    final = out / "final"
    assert (final / "model.safetensors").is_file() and (final / "README.md").is_file()
    assert (out / "loss_curve.png").stat().st_size > 0
    for rank in (0, 1):  # each rank saved its own data-stream position: 4 batches taken
        assert json.loads((out / "checkpoint-4" / "data_state" / f"rank{rank}.json").read_text())["batches"] == 4
    logs = [h for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert len(logs) == 4 and all({"image_loss", "text_loss", "learning_rate"} <= set(h) for h in logs)
    assert all("tokens_per_second" in h for h in logs[1:])
    # a fresh process, one thread as the ranks had: the reloaded model gives the trained model's logits
    code = RELOAD.format(tests=str(REPO / "tests"), final=str(final), probe=str(probe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
