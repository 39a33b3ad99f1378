"""Fine-tuning a converted Emu3 checkpoint under ZeRO-3 on 2 CPU ranks (full and LoRA, gradient checkpointing),
consolidated into a plain model folder that reloads with the trained model's logits."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _train_helpers import REPO, make_shards, torchrun

from tests._emu3_helpers import IMAGE, make_emu3, save_transformers_format

RELOAD = """
import sys, torch
import progemu
from transformers import AutoModelForCausalLM, AutoProcessor
sys.path.insert(0, {tests!r})
from _train_worker import PROBE_IDS
model = AutoModelForCausalLM.from_pretrained({final!r}, dtype=torch.float32).eval()
start = AutoModelForCausalLM.from_pretrained({start!r}, dtype=torch.float32).eval()
proc = AutoProcessor.from_pretrained({final!r})
assert type(model).__name__ == "ProgEmuForCausalLM" and type(proc).__name__ == "ProgEmuProcessor"
assert type(model.vqmodel).__name__ == "Emu3GrayVQ" and proc.layout.image_token_start is not None  # VQ-VAE, ids kept
with torch.no_grad():
    logits, before = model(input_ids=PROBE_IDS).logits, start(input_ids=PROBE_IDS).logits
ref = torch.load({probe!r}, weights_only=True)
print("maxdiff", (logits - ref).abs().max().item(), "moved", (logits - before).abs().max().item())
if {exact}:
    assert torch.equal(logits, ref)
else:  # merging W + BA rounds once
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-4)
assert not torch.allclose(logits, before), "training changed nothing"
"""


@pytest.mark.distributed
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_finetune_converted_emu3_zero3_then_reload(tmp_path, lora):
    from progemu.convert.emu3 import convert_emu3

    model, processor = make_emu3()
    start = convert_emu3(save_transformers_format(model, processor, tmp_path / "hf"), tmp_path / "conv",
                         image_size=IMAGE)
    shards, out, probe = make_shards(tmp_path / "shards"), tmp_path / "run", tmp_path / "probe.pt"
    args = ["--probe", str(probe), "--config", "tiny-pretrain", "--init_from", str(start), "--processor", str(start),
            "--shards", str(shards),
            "--tasks", "icg", "--output_dir", str(out), "--max_length", "256", "--per_device_train_batch_size", "2",
            "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true", "--dataloader_num_workers", "0",
            "--deepspeed", "zero3", "--max_steps", "2", "--save_steps", "2", "--precision", "fp32",
            "--gradient_checkpointing", "true", "--learning_rate", "1e-2"]
    if lora:
        args += ["--lora_rank", "4"]
    torchrun(2, str(REPO / "tests" / "_train_worker.py"), args)
    final = out / "final"
    assert (final / "config.json").is_file() and not (final / "adapter_config.json").exists()
    code = RELOAD.format(tests=str(REPO / "tests"), final=str(final), start=str(start), probe=str(probe),
                         exact=not lora)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
