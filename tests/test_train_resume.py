"""ZeRO-2 on one rank: an interrupted run resumed from its checkpoint repeats the uninterrupted run's losses."""

from __future__ import annotations

import json

import pytest
from _train_helpers import REPO, make_processor, make_shards, run_args, torchrun

WORKER = str(REPO / "tests" / "_train_worker.py")


def losses(run_dir):
    hist = json.loads((run_dir / "log_history.json").read_text())
    return {h["step"]: (h["loss"], h["image_loss"], h["text_loss"]) for h in hist if "loss" in h}


@pytest.mark.distributed
def test_zero2_single_rank_resume_matches_uninterrupted(tmp_path):
    shards, proc = make_shards(tmp_path / "shards"), make_processor(tmp_path / "proc")
    common = ("--deepspeed", "zero2", "--max_steps", "6", "--save_steps", "3", "--precision", "fp32",
              "--cfg_dropout", "0.3", "--tasks", "report2image", "image2report", "icg")
    full, cut = tmp_path / "full", tmp_path / "cut"
    torchrun(1, WORKER, run_args(shards, proc, full, *common))
    # checkpoint-3 is exactly what a run interrupted after step 3 leaves behind: resume from it elsewhere
    torchrun(1, WORKER, run_args(shards, proc, cut, *common, "--resume_from_checkpoint", str(full / "checkpoint-3")))
    a, b = losses(full), losses(cut)
    assert sorted(a) == list(range(1, 7)) and sorted(b) == list(range(1, 7))  # b: steps 1-3 from the checkpoint
    for step in range(4, 7):  # the steps after the interruption
        assert a[step] == pytest.approx(b[step], rel=1e-6, abs=1e-6), (step, a[step], b[step])
    assert (cut / "final" / "model.safetensors").is_file()
