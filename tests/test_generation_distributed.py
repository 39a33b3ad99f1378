"""`progemu generate` over several processes: each item done once, the same bytes as one process, one
results line per item, resume across world sizes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from progemu.cli import main
from progemu.errors import ProgEmuError
from progemu.generation.distributed import Ranks
from progemu.generation.results import PARTS, ResultLog, merge_results
from tests._gen_helpers import make_model_dir

OUTPUTS = ("counterfactual.png", "interpretation.txt", "guidance.npy")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    model = make_model_dir(root / "model")
    prompts = ["moderate left pleural effusion has developed.", "the right lung is clear.",
               "new consolidation in the right lower lung.", "cardiomegaly is unchanged."]
    lines = []
    for i in range(9):
        img = (np.random.default_rng(i).random((36, 36)) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"p{i}.png")
        lines.append({"id": f"item{i}", "image": f"p{i}.png", "prompt": prompts[i % 4]})
    lines.insert(4, {"id": "broken", "image": "missing.png", "prompt": "the right lung is clear."})
    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root, model, [x["id"] for x in lines]


def _args(root, model, out, *extra):
    return ["generate", "--model", str(model), "--input", str(root / "manifest.jsonl"), "--out", str(out),
            "--no-progress", "--device", "cpu", "--dtype", "float32", "--cfg-image", "2.0", "--max-text-tokens", "6",
            "--region", "auto", "--tau", "0.3", *extra]


def _torchrun(args, n=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "progemu",
           *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _summary(stderr):
    """The job's JSON summary line (rank 0 prints it; torchrun and loaders print other lines around it)."""
    return json.loads(next(line for line in reversed(stderr.splitlines()) if line.startswith('{"out"')))


def _results(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.distributed
def test_two_processes_share_the_items_and_write_the_same_bytes(job, tmp_path):
    root, model, ids = job
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_args(root, model, one, "--batch-size", "4")) == 1  # 'broken' fails
    done = _torchrun(_args(root, model, two, "--batch-size", "2"))
    assert done.returncode == 1, done.stderr[-3000:]
    summary = _summary(done.stderr)
    assert summary["ok"] == 9 and summary["error"] == 1 and len(summary["ranks"]) == 2

    for out in (one, two):  # exactly one line per manifest item, in manifest order
        rows = _results(out)
        assert [r["id"] for r in rows] == ids
        assert {r["id"] for r in rows if r["status"] != "ok"} == {"broken"}
    by_rank = [[json.loads(x)["id"] for x in (two / PARTS / f"rank-{r:05d}.jsonl").read_text().splitlines()]
               for r in range(2)]
    assert by_rank[0] and by_rank[1], "both ranks must have worked"
    assert not set(by_rank[0]) & set(by_rank[1]) and sorted(by_rank[0] + by_rank[1]) == sorted(ids)
    for item in ids:
        if item == "broken":
            continue
        for name in OUTPUTS:  # batch of 4 in one process vs batches of 2 on two ranks: the same bytes
            assert (one / item / name).read_bytes() == (two / item / name).read_bytes(), (item, name)


@pytest.mark.distributed
def test_resume_with_another_number_of_ranks_finishes_only_what_is_missing(job, tmp_path):
    root, model, ids = job
    out = tmp_path / "out"
    assert main(_args(root, model, out, "--batch-size", "3")) == 1
    lost = ["item2", "item7"]
    before = {i: (out / i / "counterfactual.png").read_bytes() for i in lost}
    for item in lost:  # as if the rank that had them died: no record, an image half written
        (out / item / "record.json").unlink()
        (out / item / "counterfactual.png").write_bytes(before[item][:40])
    stamps = {i: (out / i / "record.json").stat().st_mtime_ns for i in ids if i not in lost + ["broken"]}

    done = _torchrun(_args(root, model, out, "--batch-size", "3"))
    assert done.returncode == 1, done.stderr[-3000:]
    assert _summary(done.stderr)["skipped"] == 9 - len(lost)
    assert all((out / i / "record.json").stat().st_mtime_ns == s for i, s in stamps.items())  # not redone
    assert all((out / i / "counterfactual.png").read_bytes() == before[i] for i in lost)  # redone, same bytes
    rows = _results(out)
    assert [r["id"] for r in rows] == ids and sum(r["status"] == "ok" for r in rows) == 9

    assert main(_args(root, model, out, "--batch-size", "3")) == 1  # again, alone: nothing to do, no new line
    assert [r["id"] for r in _results(out)] == ids


def test_merge_takes_records_then_newest_errors_and_ignores_torn_lines(tmp_path):
    from progemu.generation.pipeline import GenerationItem

    entries = [GenerationItem("a"), GenerationItem("b"), {"id": "line-3", "status": "error", "error": "not JSON"},
               GenerationItem("c")]
    ResultLog(tmp_path, 0).append([{"id": "b", "status": "error", "error": "old"}])
    ResultLog(tmp_path, 1).append([{"id": "b", "status": "error", "error": "new"}, {"id": "a", "status": "ok"}])
    with open(tmp_path / PARTS / "rank-00001.jsonl", "a") as fh:
        fh.write('{"id": "c", "status": "err')  # a rank killed mid-line
    statuses = merge_results(tmp_path, entries, lambda e: {"id": "a", "status": "ok", "x": 1} if e.id == "a" else None)
    rows = _results(tmp_path)
    assert [r["id"] for r in rows] == ["a", "b", "line-3", "c"]
    assert rows[0] == {"id": "a", "status": "ok", "x": 1} and rows[1] == {"id": "b", "status": "error", "error": "new"}
    assert statuses == ["ok", "error", "error", "pending"]
    ResultLog(tmp_path, 1).append([{"id": "c", "status": "error", "error": "late"}])  # the next run of rank 1
    merge_results(tmp_path, entries, lambda e: None)
    assert _results(tmp_path)[3] == {"id": "c", "status": "error", "error": "late"}  # not glued to the torn line


def test_ranks_from_the_launchers_variables():
    assert Ranks.from_env({}) == Ranks(0, 1, 0)
    assert Ranks.from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == Ranks(5, 8, 1)
    for bad in ({"RANK": "8", "WORLD_SIZE": "8"}, {"RANK": "x", "WORLD_SIZE": "2"}):
        with pytest.raises(ProgEmuError):
            Ranks.from_env(bad)
    assert Ranks(1, 2, 1).device("cpu") == "cpu"
