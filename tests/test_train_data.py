"""Training data: label masks in the streamed batches as configured, packing without cross-contamination, exact
resume of the stream, shard mixing, memory independent of the schedule, the run config."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
from _train_helpers import TINY_MODEL, make_processor, make_shards, tagged_builder, untag

from progemu.errors import ProgEmuError
from train.data import IGNORE, PackedStream, build_rows, load_sources, load_split, make_row, pack_lengths
from train.examples import Collator, ExampleBuilder


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    from progemu.processing_progemu import ProgEmuProcessor

    root = tmp_path_factory.mktemp("traindata")
    shards = make_shards(root / "shards", n=8)
    proc = ProgEmuProcessor.from_pretrained(str(make_processor(root / "proc")))
    return load_sources(shards, "train"), proc


def stream_rows(sources, builder, tasks, packing="pack", n=None, **kw):
    """The first ``n`` rows of a one-consumer stream (default: its first chunk)."""
    stream = PackedStream(sources, builder, tasks, 256, packing, **kw)
    if n is None:
        rows = []
        for row in stream:
            rows.append(row)
            if row["data_state"]["emitted"] == 0:  # the state after a chunk's last row is the next chunk's start
                return rows
    return list(itertools.islice(stream, n))


def image_mask(ids: torch.Tensor, lay) -> torch.Tensor:
    """(L,) True on <boi> ... <eoi> blocks."""
    opened = (ids == lay.boi_id).long().cumsum(-1)
    closed = (ids == lay.eoi_id).long().cumsum(-1) - (ids == lay.eoi_id).long()
    return opened > closed


def documents(pos: torch.Tensor) -> list[tuple[int, int]]:
    starts = (pos == 0).nonzero().flatten().tolist() + [len(pos)]
    return list(zip(starts[:-1], starts[1:]))


@pytest.mark.parametrize("mode", ["target", "image", "text", "all"])
def test_label_masks_in_packed_batches(fixture, mode):
    rows, proc = fixture
    lay = proc.layout
    build = ExampleBuilder(proc, mode, image_loss_weight=2.0, text_loss_weight=0.5)
    batch = Collator(lay.pad_id, 256, "pack")(stream_rows(rows, build, ["icg", "report2image"]))
    assert "attention_mask" not in batch and batch["input_ids"].shape[1] == 256
    for ids, labels, weights, pos in zip(batch["input_ids"], batch["labels"], batch["loss_weights"],
                                         batch["position_ids"]):
        on = labels != IGNORE
        assert torch.equal(labels[on], ids[on])  # labels are the ids themselves (the model shifts)
        assert torch.all(weights[~on] == 0)
        for s, e in documents(pos):
            doc, lab, w = ids[s:e], labels[s:e], weights[s:e]
            if doc[0] == lay.pad_id:  # the padding tail: never supervised
                assert torch.all(lab == IGNORE)
                continue
            assert doc[0] == lay.bos_id and doc[-1] == lay.eos_id and lab[0] == IGNORE
            img = image_mask(doc, lay)
            starts = (doc == lay.boi_id).nonzero().flatten().tolist()
            target = torch.zeros_like(img)
            target[starts[-1]:] = True  # the last image block and what follows is the target
            target_img, target_txt = target & img, target & ~img
            expect = {"target": target, "image": target_img, "text": target_txt, "all": torch.ones_like(img)}[mode]
            expect = expect.clone()
            expect[0] = False  # <bos> is never a label
            if mode == "image":
                expect[-1] = False
            assert torch.equal(lab != IGNORE, expect), (mode, lab, doc)
            assert torch.allclose(w[(lab != IGNORE) & img], torch.tensor(2.0))
            assert torch.allclose(w[(lab != IGNORE) & ~img], torch.tensor(0.5))


def test_packing_is_complete_and_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randrange(5, 120) for _ in range(300)]
    bins = pack_lengths(lengths, 256)
    assert sorted(i for b in bins for i in b) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 256 for b in bins)
    assert sum(lengths) / (256 * len(bins)) > 0.95  # best-fit decreasing wastes little


def test_packed_rows_do_not_attend_across_sequences(fixture):
    """Logits of a packed row equal those of each of its sequences run alone (document-masked attention)."""
    import json

    rows, proc = fixture
    packed = stream_rows(rows, ExampleBuilder(proc), ["image2report", "report2image"])
    cfg = proc.model_config("tiny", **json.loads(TINY_MODEL))
    from progemu.modeling_progemu import ProgEmuForCausalLM

    model = ProgEmuForCausalLM._from_config(cfg, attn_implementation="sdpa").eval()
    row = {k: torch.as_tensor(v).long() for k, v in next(r for r in packed if len(documents(
        torch.as_tensor(r["position_ids"]))) >= 2).items() if k != "data_state"}
    with torch.no_grad():
        packed = model(input_ids=row["input_ids"][None], position_ids=row["position_ids"][None], use_cache=False).logits[0]
        for s, e in documents(row["position_ids"]):
            alone = model(input_ids=row["input_ids"][None, s:e]).logits[0]
            assert torch.allclose(packed[s:e], alone, atol=1e-5), (s, e)


def test_padding_modes(fixture):
    rows, proc = fixture
    lay = proc.layout
    build = ExampleBuilder(proc)
    for packing in ("group", "pad_max"):
        items = stream_rows(rows, build, ["icg"], packing, n=4)
        batch = Collator(lay.pad_id, 256, packing)(items)
        width = 256 if packing == "pad_max" else max(len(x["input_ids"]) for x in items)
        assert batch["input_ids"].shape == (4, width) and "position_ids" not in batch
        assert int(batch["num_tokens"]) == int(batch["attention_mask"].sum()) == sum(len(x["input_ids"]) for x in items)
        assert torch.all(batch["labels"][batch["attention_mask"] == 0] == IGNORE)


def test_epochs_are_deterministic_and_differ(fixture):
    """The same seed gives the same stream; each epoch reshuffles and draws its dropout afresh."""
    rows, proc = fixture
    build = ExampleBuilder(proc, cfg_dropout=0.5)
    n = 2 * len(rows[0])  # two epochs of one-sequence rows (pad_max: one sequence per row)
    a = stream_rows(rows, build, ["icg"], "pad_max", n=n, seed=3, buffer=4)
    b = stream_rows(rows, build, ["icg"], "pad_max", n=n, seed=3, buffer=4)
    assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    first, second = a[:n // 2], a[n // 2:]
    assert [x["data_state"]["epochs"] for x in a[:n // 2 - 1]] == [[0]] * (n // 2 - 1)
    key = [tuple(x["input_ids"].tolist()) for x in first]
    assert key != [tuple(x["input_ids"].tolist()) for x in second]
    lens = sorted(len(x["input_ids"]) for x in first), sorted(len(x["input_ids"]) for x in second)
    assert lens[0] != lens[1]  # fresh dropout draws: other rows lose their condition
    other = stream_rows(rows, build, ["icg"], "pad_max", n=n, seed=4, buffer=4)
    assert any(not np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, other))


def test_too_long_and_missing_shards_are_clear_errors(fixture, tmp_path):
    from progemu.errors import SequenceTooLongError

    rows, proc = fixture
    with pytest.raises(SequenceTooLongError, match="tokens"):
        next(iter(PackedStream(rows, ExampleBuilder(proc), ["icg"], 16)))
    with pytest.raises(ProgEmuError, match="no code shards"):
        load_split(tmp_path, "train")
    with pytest.raises(ProgEmuError, match="no row can serve the tasks"):
        next(iter(PackedStream(rows, lambda row, task, rng: None, ["icg"], 256)))
    with pytest.raises(ProgEmuError, match="no row can serve the tasks"):
        build_rows(rows, lambda row, task, rng: None, ["icg"], 256)
    with pytest.raises(ProgEmuError, match="one positive weight per shard folder"):
        PackedStream(rows, ExampleBuilder(proc), ["icg"], 256, weights=[1.0, 2.0])


def test_stream_resumes_exactly_without_replaying(tmp_path):
    """A stream restarted from the state of row k gives the uninterrupted stream's rows k+1, ... and builds only
    the chunks those rows come from, whatever k (inside a chunk, at its end, in a later epoch)."""
    import datasets

    rows = [datasets.Dataset.from_list([{"id": f"a-{i}"} for i in range(30)])]
    kw = dict(seed=7, buffer=10)
    full = list(itertools.islice(PackedStream(rows, tagged_builder, ["icg", "edit"], 64, **kw), 60))
    for k in (0, 3, 9, 25, 41):
        again = PackedStream(rows, tagged_builder, ["icg", "edit"], 64, **kw)
        again.load_state({0: full[k]["data_state"]}, k + 1)
        rest = list(itertools.islice(again, 10))
        for x, y in zip(rest, full[k + 1:]):
            assert all(np.array_equal(x[f], y[f]) for f in ("input_ids", "labels", "position_ids")), k
        chunks = full[k + 10]["data_state"]["chunk"] - full[k]["data_state"]["chunk"] + 1  # those rows come from
        assert again.sequences_built <= chunks * (kw["buffer"] + 1), k  # nothing before the chunk of row k+1


def test_stream_state_round_trip_and_other_layouts(tmp_path):
    """What a checkpoint saves gives the stream its position back; one of other ranks x workers continues at the
    epoch after the furthest saved one, with nothing of the saved epoch again; other folders, another seed or no
    checkpoint leave the stream at its start."""
    import datasets

    from train.data import StreamState

    rows = [datasets.Dataset.from_list([{"id": f"a-{i}"} for i in range(30)])]
    stream = PackedStream(rows, tagged_builder, ["icg"], 64, seed=1, buffer=8)
    taken = list(itertools.islice(stream, 5))
    saved = StreamState(0, 1, 0, stream.sizes(), 1)
    for row in taken:
        saved.record(row["data_state"])
    saved.save(tmp_path / "checkpoint-5")
    again = PackedStream(rows, tagged_builder, ["icg"], 64, seed=1, buffer=8)
    assert StreamState(0, 1, 0, again.sizes(), 1).restore(tmp_path / "checkpoint-5", again)
    assert again.resume == {0: taken[-1]["data_state"]} and again.resume_batches == 5
    epoch = max(int(r["data_state"]["epochs"][0]) for r in taken)
    for rank, world, workers in ((0, 2, 0), (1, 2, 0), (0, 1, 2)):  # rank 1 of 2: the checkpoint had no rank 1
        relaid = PackedStream(rows, tagged_builder, ["icg"], 64, seed=1, buffer=8, rank=rank, world=world)
        assert StreamState(rank, world, workers, relaid.sizes(), 1).restore(tmp_path / "checkpoint-5", relaid)
        assert {s["epochs"][0] for s in relaid.resume.values()} == {epoch + 1} and relaid.resume_batches == 0
        after = list(itertools.islice(relaid, 3))
        assert all(r["data_state"]["epochs"][0] >= epoch + 1 for r in after)
    for other in (StreamState(0, 1, 0, [31], 1), StreamState(0, 1, 0, again.sizes(), 2)):
        fresh = PackedStream(rows, tagged_builder, ["icg"], 64, seed=1, buffer=8)
        assert not other.restore(tmp_path / "checkpoint-5", fresh) and fresh.resume == {}
    assert not StreamState(0, 1, 0, again.sizes(), 1).restore(tmp_path / "checkpoint-9", again)


def test_shard_folders_mix_with_their_weights():
    import datasets

    a = datasets.Dataset.from_list([{"id": f"a-{i}"} for i in range(50)])
    b = datasets.Dataset.from_list([{"id": f"b-{i}"} for i in range(7)])
    for weights, expect in ((None, 50 / 57), ([3.0, 1.0], 0.75)):
        # chunks of one sequence: rows come in the order the folders are drawn
        stream = PackedStream([a, b], tagged_builder, ["icg"], 64, "pad_max", weights=weights, buffer=1)
        seqs = [untag(r["input_ids"][0]) for r in itertools.islice(stream, 40)]
        share = sum(folder == "a" for folder, _, _ in seqs) / len(seqs)
        assert abs(share - expect) <= 1 / len(seqs), (weights, share)
    # without weights one epoch of the mix is one pass over both folders: every row once
    stream = PackedStream([a, b], tagged_builder, ["icg"], 64, "pad_max", buffer=1000)
    seqs = [untag(r["input_ids"][0]) for r in itertools.islice(stream, 57)]
    assert sorted(seqs) == sorted([("a", i, "icg") for i in range(50)] + [("b", i, "icg") for i in range(7)])


def test_first_batch_memory_does_not_grow_with_max_steps(fixture, tmp_path):
    """What the run builds before its first batch (sequences, and the peak of traced memory) is the same for a
    10^3- and a 10^7-step schedule."""
    import tracemalloc

    from transformers import TrainingArguments

    from train.config import DataArgs
    from train.run import train_stream

    rows, proc = fixture
    data_args = DataArgs(tasks=["icg", "report2image"], max_length=256, pack_buffer=32)
    got = []
    for steps in (10**3, 10**7):
        args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=2,
                                 report_to="none", use_cpu=True)
        tracemalloc.start()
        stream = train_stream(data_args, args, proc, rows)
        loader = torch.utils.data.DataLoader(stream, batch_size=2, collate_fn=Collator(proc.layout.pad_id, 256))
        next(iter(loader))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        got.append((stream.sequences_built, peak))
    (n_small, peak_small), (n_large, peak_large) = got
    assert n_small == n_large <= data_args.pack_buffer + 2
    assert peak_large < 1.25 * peak_small + 2**20, got


def test_config_presets_and_errors(tmp_path):
    from train.config import parse_config, resolve_path

    for name in ("tiny-pretrain", "tiny-finetune", "base-pretrain", "base-finetune", "tiny-demo", "tiny-demo-2", "tiny-demo-3",
                 "tiny-demo-4", "tiny-demo-5", "tiny-demo-6", "tiny-demo-7"):
        m, d, a = parse_config(["--output_dir", str(tmp_path / name), "--deepspeed", "none"], default_config=name)
        assert d.tasks and a.output_dir == str(tmp_path / name)
    m, d, a = parse_config(["--output_dir", str(tmp_path / "x"), "--deepspeed", "none", "--max_steps", "7",
                            "--tasks", "icg", "edit"], default_config="tiny-pretrain")
    assert a.max_steps == 7 and d.tasks == ["icg", "edit"] and not a.deepspeed
    for ds in ("zero2", "zero3", "zero2_offload", "zero3_offload"):
        assert resolve_path(ds, __import__("train.config").config.DS_CONFIG_DIR, ".json").endswith(f"{ds}.json")
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_stepz: 3\n")
    with pytest.raises(ProgEmuError, match="unknown config keys"):
        parse_config(["--output_dir", str(tmp_path), "--deepspeed", "none"], default_config=str(bad))
    with pytest.raises(ProgEmuError, match="presets"):
        parse_config([], default_config="no-such-preset")
    from train.run import run_stage

    with pytest.raises(ProgEmuError, match="stop_at_step 7 must lie between 0 and max_steps"):  # before any data
        run_stage("pretrain", ["--output_dir", str(tmp_path / "s"), "--deepspeed", "none", "--max_steps", "7",
                               "--stop_at_step", "7", "--shards", str(tmp_path / "none")], "tiny-pretrain")
    with pytest.raises(ProgEmuError, match="max_steps must be set"):  # the stream has no length to count epochs by
        run_stage("pretrain", ["--output_dir", str(tmp_path / "s"), "--deepspeed", "none", "--max_steps", "-1",
                               "--shards", str(tmp_path / "none")], "tiny-pretrain")


def test_launch_builds_missing_inputs_in_dependency_order(tmp_path, monkeypatch):
    """The two-stage tiny VQ: synth data, then stage 1 and the perceptual networks, then stage 2, then shards."""
    from train import launch

    monkeypatch.setattr(launch, "REPO", tmp_path)
    ran: list[str] = []

    def fake_sh(cmd, env=None):  # "build" the folder: its done file appears
        out = next(p for p, s in launch.RECIPE.items() if list(s.run) == cmd)
        ran.append(out)
        (tmp_path / out).mkdir(parents=True, exist_ok=True)
        (tmp_path / out / launch.RECIPE[out].done).write_text("{}")

    monkeypatch.setattr(launch, "sh", fake_sh)
    # every demo stage's inputs can be built from a fresh clone: its shards and the stage it starts from
    import yaml

    from train.config import CONFIG_DIR

    for cfg in sorted(CONFIG_DIR.glob("tiny-demo*.yaml")):
        c = yaml.safe_load(cfg.read_text())
        assert all(part in launch.RECIPE for part in c["shards"].split(",")), cfg.name
        init = c.get("init_from")
        assert not init or init in launch.RECIPE, cfg.name
    launch.ensure("data/shards-128")
    assert ran[0] == "data/synthcxr-128" and ran[-1] == "data/shards-128" and len(ran) == len(set(ran))
    assert ran.index("runs/vq-tiny") > max(ran.index("runs/vq-tiny-base"), ran.index("runs/vq-perceptual"))
    launch.ensure("data/shards-128")  # everything present: nothing runs again
    assert len(ran) == 5
    launch.ensure("data/shards-128-s5, data/shards-128-s6")  # a list builds each part (the VQ is there already)
    assert ran[5:] == ["data/synthcxr-128-s5", "data/shards-128-s5", "data/synthcxr-128-s6", "data/shards-128-s6"]


def test_resume_resolution(tmp_path):
    from transformers import TrainingArguments

    from train.run import resolve_resume

    args = TrainingArguments(output_dir=str(tmp_path), resume_from_checkpoint="auto", report_to="none")
    assert resolve_resume(args) is None
    for step in (5, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert resolve_resume(args).endswith("checkpoint-10")


def test_packed_row_first_token_unlabelled():
    seqs = [(np.arange(1, 6, dtype=np.int32), np.arange(1, 6, dtype=np.int32), np.ones(5, np.float32))] * 3
    row = make_row(seqs, [0, 1, 2])
    assert row["labels"].tolist().count(IGNORE) == 3 and row["position_ids"].tolist() == [0, 1, 2, 3, 4] * 3
    assert row["loss_weights"].tolist().count(0.0) == 3 and seqs[0][1][0] == 1  # the sequences are not changed


def test_processor_built_from_tokenizer_and_vq_reads_images_at_the_shard_size(tmp_path):
    """A run without a processor folder builds one whose image size gives the shards' code grid (what
    `progemu generate` then encodes priors with), not IngestOptions' default size."""
    from progemu.configuration_vq import ProgEmuVQConfig
    from progemu.image_codes import encode_images, ingest_options
    from progemu.modeling_vq import ProgEmuVQModel
    from progemu.processing_progemu import ProgEmuProcessor
    from train.config import DataArgs, ModelArgs
    from train.run import load_processor

    ProgEmuProcessor.from_pretrained(str(make_processor(tmp_path / "proc"))).tokenizer.save_pretrained(
        str(tmp_path / "tok"))
    cfg = ProgEmuVQConfig(patch_size=2, base_channels=8, channel_multipliers=[1, 2], embed_dim=8, codebook_size=32,
                          codebook_dim=4, vq_kmeans_init=False, image_size=64)
    vq = ProgEmuVQModel(cfg).eval()
    vq.save_pretrained(str(tmp_path / "vq"))
    rows = [{"grid_h": 4, "grid_w": 4}]
    proc, got = load_processor(ModelArgs(), DataArgs(text_tokenizer=str(tmp_path / "tok"), vq=str(tmp_path / "vq"),
                                                     shards=str(tmp_path / "shards")), rows)
    assert not hasattr(proc, "vq_model")  # the run's image tokenizer is returned beside it, saved in vq/
    size = proc.get_ingest_options().size
    assert vq.grid_size(size) == (proc.layout.grid_h, proc.layout.grid_w) == (4, 4)
    codes = encode_images(got, proc, [np.zeros((size, size), np.float32)])
    assert tuple(codes.shape) == (1, 4, 4)
    proc.ingest_options = {}  # a processor saved without a size (older runs) derives it from the VQ
    assert ingest_options(got, proc).size == size


def test_run_keeps_the_vq_that_encoded_the_shards(tmp_path):
    """A stage initialised from a run trained on another VQ's codes must save the shards' VQ, not the inherited
    one (else `generate` would encode priors with codes the model never learnt); an explicit processor whose VQ
    disagrees with the shards is an error."""
    import json

    from progemu.configuration_vq import ProgEmuVQConfig
    from progemu.modeling_vq import ProgEmuVQModel
    from progemu.processing_progemu import ProgEmuProcessor
    from train.config import DataArgs, ModelArgs
    from train.run import load_processor

    cfg = ProgEmuVQConfig(patch_size=2, base_channels=8, channel_multipliers=[1, 2], embed_dim=8, codebook_size=32,
                          codebook_dim=4, vq_kmeans_init=False, image_size=64)
    torch.manual_seed(0)
    old, new = ProgEmuVQModel(cfg).eval(), ProgEmuVQModel(cfg).eval()
    new.save_pretrained(str(tmp_path / "vq-new"))
    proc = ProgEmuProcessor.from_pretrained(str(make_processor(tmp_path / "proc")))
    proc.save_pretrained(str(tmp_path / "stage1"))  # the earlier stage's folder, with the old VQ in vq/
    old.save_pretrained(str(tmp_path / "stage1" / "vq"))
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "encode_info.json").write_text(json.dumps({"model": str(tmp_path / "vq-new")}))
    rows = [{"grid_h": 4, "grid_w": 4}]
    _, got = load_processor(ModelArgs(init_from=str(tmp_path / "stage1")), DataArgs(shards=str(shards)), rows)
    for key, value in new.state_dict().items():
        assert torch.equal(got.state_dict()[key], value), key
    with pytest.raises(ProgEmuError, match="encoded"):
        load_processor(ModelArgs(), DataArgs(shards=str(shards), processor=str(tmp_path / "stage1")), rows)
    (shards / "encode_info.json").write_text(json.dumps({"model": str(tmp_path / "stage1" / "vq")}))  # it agrees
    _, same = load_processor(ModelArgs(), DataArgs(shards=str(shards), processor=str(tmp_path / "stage1")), rows)
    assert torch.equal(same.state_dict()["quantizer.q.project_in.weight"],
                       old.state_dict()["quantizer.q.project_in.weight"])


def test_several_shard_folders_are_read(tmp_path):
    a, b = make_shards(tmp_path / "a", n=6, seed=1), make_shards(tmp_path / "b", n=5, seed=2)
    both = load_split(f"{a},{b}", "train")
    assert len(both) == len(load_split(a, "train")) + len(load_split(b, "train"))
    assert [len(x) for x in load_sources(f"{a}, {b}", "train")] == [6, 5]
    with pytest.raises(ProgEmuError, match="no code shards"):
        load_split(f"{a},{tmp_path / 'missing'}", "train")


def test_launch_makes_a_missing_init_folder_from_its_stages_and_tools(tmp_path, monkeypatch):
    """Stage 7 starts from a grown mean of stages 5 and 6: those stages run first, then the average, then grow."""
    from train import launch

    monkeypatch.setattr(launch, "REPO", tmp_path)
    done: list[str] = []

    def made(path):
        (tmp_path / path).mkdir(parents=True, exist_ok=True)
        (tmp_path / path / "config.json").write_text("{}")
        done.append(path)

    def fake_main(argv):  # a stage: its run writes the init folder that names it
        made(next(p for p, s in launch.RECIPE.items() if list(s.stage) == argv))

    monkeypatch.setattr(launch, "main", fake_main)
    monkeypatch.setattr(launch, "sh", lambda cmd, env=None: made(next(p for p, s in launch.RECIPE.items()
                                                                       if list(s.run) == cmd)))
    made("runs/finetune-demo-5/final")  # already there: not run again
    launch.ensure_init("runs/demo-grown-10", None)
    assert done == ["runs/finetune-demo-5/final", "runs/finetune-demo-6/final", "runs/demo-average-5-6",
                    "runs/demo-grown-10"]
    launch.ensure_init("runs/demo-grown-10", None)  # present: nothing runs
    launch.ensure_init(None, None)
    assert len(done) == 4


@pytest.mark.distributed
def test_two_ranks_read_disjoint_rows_that_cover_the_split(tmp_path):
    """torchrun, 2 gloo ranks x 2 data-loader workers: in one epoch the ranks' packed sequences are disjoint and
    together are every (row, task) of the split exactly once."""
    import json

    from _train_helpers import REPO, torchrun

    shards = make_shards(tmp_path / "shards", n=24)
    out = tmp_path / "seen.json"
    torchrun(2, str(REPO / "tests" / "_stream_worker.py"), [str(shards), str(out)])
    ranks = [[tuple(x) for x in r] for r in json.loads(out.read_text())]
    assert len(ranks) == 2 and all(ranks)
    assert not set(ranks[0]) & set(ranks[1])
    both = ranks[0] + ranks[1]
    tasks = ("icg", "report2image", "image2report")
    assert sorted(both) == sorted(("t", i, task) for i in range(24) for task in tasks)  # each exactly once
