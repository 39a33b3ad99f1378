"""tokenizer/encode_dataset.py: the code-shard schema of docs/architecture.md, codes match encode(), resume."""

from __future__ import annotations

import json

import datasets
import pytest
import torch

from progemu.configuration_vq import ProgEmuVQConfig
from progemu.modeling_vq import ProgEmuVQModel
from tokenizer.encode_dataset import encode_dataset

COLUMNS = {"id", "task_source", "prior_codes", "target_codes", "grid_h", "grid_w", "prompt", "interpretation",
           "instruction", "prior_report", "target_report"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from progemu.synth import write_dataset

    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, pairs=8, size=64, seed=0)
    return root


@pytest.fixture(scope="module")
def vq_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ProgEmuVQConfig(patch_size=2, base_channels=8, channel_multipliers=[1, 2], embed_dim=8, codebook_size=64,
                          codebook_dim=4, vq_kmeans_init=False, image_size=64)
    path = tmp_path_factory.mktemp("vq")
    ProgEmuVQModel(cfg).eval().save_pretrained(path)
    return path


def test_schema_codes_and_resume(synth, vq_dir, tmp_path):
    out = tmp_path / "shards"
    counts = encode_dataset(vq_dir, synth / "icg-cxr", "icg-cxr", out, chunk=3, batch=4, progress=False)
    assert sum(counts.values()) == 8
    model = ProgEmuVQModel.from_pretrained(vq_dir).eval()
    from progemu.data.ingest import IngestOptions, load_image, to_pixel_values
    from progemu.data.loaders import load_records

    by_id = {r.id: r for r in load_records(synth / "icg-cxr", "icg-cxr")}
    for split, n in counts.items():
        ds = datasets.load_from_disk(str(out / split))
        assert set(ds.column_names) == COLUMNS and len(ds) == n
        row = ds[0]
        assert row["grid_h"] == row["grid_w"] == 16
        assert len(row["prior_codes"]) == len(row["target_codes"]) == 16 * 16
        assert all(0 <= c < 64 for c in row["prior_codes"] + row["target_codes"])
        assert row["prompt"] and row["interpretation"] and row["task_source"]
        rec = by_id[row["id"]]
        expect = model.encode(to_pixel_values(load_image(rec.prior_image, IngestOptions(size=64))))
        assert row["prior_codes"] == expect.flatten().tolist()  # row-major h*w
    # resume: a finished chunk is reused as is, a removed one is rebuilt identically
    first = sorted((out / ".chunks").glob("*/chunk-00000"))[0]
    stamp = (first / "state.json").stat().st_mtime_ns
    split = first.parent.name
    before = datasets.load_from_disk(str(out / split)).to_dict()
    last = sorted(first.parent.glob("chunk-*"))[-1]
    import shutil

    shutil.rmtree(last)
    encode_dataset(vq_dir, synth / "icg-cxr", "icg-cxr", out, chunk=3, batch=4, progress=False)
    assert (first / "state.json").stat().st_mtime_ns == stamp
    assert datasets.load_from_disk(str(out / split)).to_dict() == before
    assert json.loads((out / "encode_info.json").read_text())["rows"] == counts


def test_unreadable_image_is_logged_and_skipped(synth, vq_dir, tmp_path):
    import shutil

    data = tmp_path / "icg"
    shutil.copytree(synth / "icg-cxr", data)
    victim = sorted(data.rglob("*-ref-reg.png"))[0]
    victim.write_bytes(b"not a png")
    out = tmp_path / "shards"
    counts = encode_dataset(vq_dir, data, "icg-cxr", out, chunk=4, progress=False)
    assert sum(counts.values()) == 7
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and victim.name in errors[0]["file"] + errors[0]["reason"]


def _splits(out) -> dict:
    info = json.loads((out / "encode_info.json").read_text())
    return {s: datasets.load_from_disk(str(out / s)).to_dict() for s in info["rows"]}


@pytest.mark.distributed
def test_two_ranks_give_the_one_process_shards_and_resume_with_another_world_size(synth, vq_dir, tmp_path):
    """torchrun with 2 CPU ranks: disjoint chunks, the same rows in the same order as one process; a run cut off
    after one chunk per rank is finished by a rerun with one process, with the same result."""
    from _train_helpers import torchrun

    one = tmp_path / "one"
    encode_dataset(vq_dir, synth / "icg-cxr", "icg-cxr", one, chunk=2, batch=4, progress=False)
    expect = _splits(one)
    n_chunks = len(list((one / ".chunks").glob("*/chunk-*")))
    assert n_chunks >= 4

    def args(out):
        return ["--model", str(vq_dir), "--data", str(synth / "icg-cxr"), "--out", str(out), "--chunk", "2",
                "--batch", "4"]

    two = tmp_path / "two"
    torchrun(2, "tokenizer.encode_dataset", args(two))
    assert _splits(two) == expect

    cut = tmp_path / "cut"
    torchrun(2, "tokenizer.encode_dataset", [*args(cut), "--max-chunks", "1"])
    done = sorted((cut / ".chunks").glob("*/chunk-*"))
    assert len(done) == 2 and not (cut / "encode_info.json").exists()  # one chunk each, not the same one
    stamps = {p: (p / "state.json").stat().st_mtime_ns for p in done}
    (done[0].parent / f"{done[0].name}.tmp-99999").mkdir()  # what a rank killed while writing leaves
    counts = encode_dataset(vq_dir, synth / "icg-cxr", "icg-cxr", cut, chunk=2, batch=4, progress=False)
    assert _splits(cut) == expect and sum(counts.values()) == 8
    assert {p: (p / "state.json").stat().st_mtime_ns for p in done} == stamps  # finished chunks kept as they were
