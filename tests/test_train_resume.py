"""ZeRO-2 on one rank: an interrupted run resumed from its checkpoint repeats the uninterrupted run's losses (the data
stream continues where the checkpoint left it, with 0 or 2 data-loader workers), and a run told to stop at a step of
the same schedule ends as the full run stood at that step."""

from __future__ import annotations

import json

import pytest
import torch
from _train_helpers import REPO, make_processor, make_shards, run_args, torchrun

WORKER = str(REPO / "tests" / "_train_worker.py")


def losses(run_dir, key=None):
    hist = json.loads((run_dir / "log_history.json").read_text())
    return {h["step"]: h[key] if key else (h["loss"], h["image_loss"], h["text_loss"]) for h in hist if "loss" in h}


@pytest.mark.distributed
@pytest.mark.parametrize("workers", [0, 2])
def test_zero2_single_rank_resume_matches_uninterrupted(tmp_path, workers):
    shards, proc = make_shards(tmp_path / "shards"), make_processor(tmp_path / "proc")
    # a small packing buffer: the 6 steps span several chunks and two epochs of the 24 rows
    common = ("--deepspeed", "zero2", "--max_steps", "6", "--save_steps", "3", "--precision", "fp32",
              "--cfg_dropout", "0.3", "--tasks", "report2image", "image2report", "icg", "--pack_buffer", "8",
              "--dataloader_num_workers", str(workers))
    full, cut = tmp_path / "full", tmp_path / "cut"
    torchrun(1, WORKER, run_args(shards, proc, full, *common))
    # checkpoint-3 is exactly what a run interrupted after step 3 leaves behind: resume from it elsewhere
    torchrun(1, WORKER, run_args(shards, proc, cut, *common, "--resume_from_checkpoint", str(full / "checkpoint-3")))
    a, b = losses(full), losses(cut)
    assert sorted(a) == list(range(1, 7)) and sorted(b) == list(range(1, 7))  # b: steps 1-3 from the checkpoint
    for step in range(4, 7):  # the steps after the interruption
        assert a[step] == pytest.approx(b[step], rel=1e-6, abs=1e-6), (step, a[step], b[step])
    assert (cut / "final" / "model.safetensors").is_file()
    saved = json.loads((full / "checkpoint-3" / "data_state" / "rank0.json").read_text())
    assert saved["batches"] == 3 and len(saved["states"]) == max(workers, 1)
    if workers:
        return  # stop_at_step does not depend on the data loader: checked once
    # stop_at_step 3 of the 6-step schedule: steps 1-3 as the full run, learning rate not annealed, final/ holds
    # exactly the full run's step-3 weights
    stop = tmp_path / "stop"
    torchrun(1, WORKER, run_args(shards, proc, stop, *common, "--stop_at_step", "3"))
    c, lr_stop, lr_full = losses(stop), losses(stop, "learning_rate"), losses(full, "learning_rate")
    assert sorted(c) == [1, 2, 3]
    for step in (1, 2, 3):
        assert c[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step
    assert lr_stop == {s: lr_full[s] for s in (1, 2, 3)} and lr_stop[3] > 0
    from train.consolidate import load_weights

    got, want = load_weights(stop / "final"), load_weights(full / "checkpoint-3")
    assert got.keys() == want.keys() and all(torch.allclose(got[k], want[k], rtol=1e-6, atol=1e-7) for k in want)
