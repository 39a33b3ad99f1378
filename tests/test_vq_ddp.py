"""tokenizer.train_vq at scale: the folder source keeps no decoded images (bounded memory in every DataLoader
worker), and DDP on 2 gloo ranks leaves both ranks with the same weights and codebook, saved as a loadable model."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from progemu.modeling_vq import ProgEmuVQModel


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    root.mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(root / f"img-{i:02d}.png")
    return root


def test_folder_source_reads_every_time_and_holds_no_images(folder):
    from progemu.data.ingest import IngestOptions, load_image
    from tokenizer.vq_data import FolderSource

    src = FolderSource(folder, 32, fmt="images", split=None)
    size = len(pickle.dumps(src))  # what each DataLoader worker holds a copy of
    for _ in range(2):
        for i in range(len(src)):
            assert np.array_equal(src[i], load_image(src.paths[i], IngestOptions(size=32)))
    assert len(pickle.dumps(src)) == size


@pytest.mark.distributed
def test_ddp_two_gloo_ranks_end_with_identical_weights_and_a_loadable_model(folder, tmp_path):
    from _train_helpers import REPO, torchrun

    out = tmp_path / "vq"
    torchrun(2, str(REPO / "tests" / "_vq_ddp_worker.py"), [str(folder), str(out)])
    r0, r1 = (load_file(str(out / f"rank-{r}.safetensors")) for r in (0, 1))
    assert r0.keys() == r1.keys()
    for key in r0:  # parameters (DDP) and the EMA codebook buffers (synced by the quantizer itself)
        assert torch.equal(r0[key], r1[key]), key
    steps = [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    saved = ProgEmuVQModel.from_pretrained(out).state_dict()
    assert saved.keys() == r0.keys() and all(torch.equal(saved[k], r0[k]) for k in saved)
