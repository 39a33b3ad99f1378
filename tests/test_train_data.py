"""Training data: label masks in the batches as configured, packing without cross-contamination, the run config."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from _train_helpers import TINY_MODEL, make_processor, make_shards

from progemu.errors import ProgEmuError
from train.data import IGNORE, Collator, SequenceDataset, build_dataset, load_split, pack_lengths, processor_builder


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    from progemu.processing_progemu import ProgEmuProcessor

    root = tmp_path_factory.mktemp("traindata")
    shards = make_shards(root / "shards", n=8)
    proc = ProgEmuProcessor.from_pretrained(str(make_processor(root / "proc")))
    return load_split(shards, "train"), proc


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
    proc.image_loss_weight, proc.text_loss_weight = 2.0, 0.5
    ds = build_dataset(rows, processor_builder(proc, mode), ["icg", "report2image"], 256, "pack", lay.pad_id, 0)
    batch = Collator(lay.pad_id, 256, "pack")([ds[i] for i in range(len(ds))])
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
    lay = proc.layout
    ds = build_dataset(rows, processor_builder(proc), ["image2report", "report2image"], 256, "pack", lay.pad_id, 0)
    cfg = proc.model_config("tiny", **json.loads(TINY_MODEL))
    from progemu.modeling_progemu import ProgEmuForCausalLM

    model = ProgEmuForCausalLM._from_config(cfg, attn_implementation="sdpa").eval()
    row = next(r for r in (ds[i] for i in range(len(ds))) if len(documents(r["position_ids"])) >= 2)
    with torch.no_grad():
        packed = model(input_ids=row["input_ids"][None], position_ids=row["position_ids"][None], use_cache=False).logits[0]
        for s, e in documents(row["position_ids"]):
            alone = model(input_ids=row["input_ids"][None, s:e]).logits[0]
            assert torch.allclose(packed[s:e], alone, atol=1e-5), (s, e)


def test_padding_modes(fixture):
    rows, proc = fixture
    lay = proc.layout
    build = processor_builder(proc)
    for packing in ("group", "pad_max"):
        ds = build_dataset(rows, build, ["icg"], 256, packing, lay.pad_id, 0)
        items = [ds[i] for i in range(4)]
        batch = Collator(lay.pad_id, 256, packing)(items)
        width = 256 if packing == "pad_max" else max(len(x["input_ids"]) for x in items)
        assert batch["input_ids"].shape == (4, width) and "position_ids" not in batch
        assert int(batch["num_tokens"]) == int(batch["attention_mask"].sum()) == sum(len(x["input_ids"]) for x in items)
        assert torch.all(batch["labels"][batch["attention_mask"] == 0] == IGNORE)


def test_rounds_are_deterministic_and_differ(fixture):
    rows, proc = fixture
    build = processor_builder(proc, cfg_dropout=0.5)
    a = build_dataset(rows, build, ["icg"], 256, "pack", proc.layout.pad_id, 3, rounds=2)
    b = build_dataset(rows, build, ["icg"], 256, "pack", proc.layout.pad_id, 3, rounds=2)
    assert a.rows == b.rows and all(np.array_equal(x[0], y[0]) for x, y in zip(a.sequences, b.sequences))
    n = len(a.sequences) // 2
    assert any(len(a.sequences[i][0]) != len(a.sequences[n + i][0]) for i in range(n))  # fresh dropout draws


def test_too_long_and_missing_shards_are_clear_errors(fixture, tmp_path):
    from progemu.errors import SequenceTooLongError

    rows, proc = fixture
    with pytest.raises(SequenceTooLongError, match="tokens"):
        build_dataset(rows, processor_builder(proc), ["icg"], 16, "pack", proc.layout.pad_id, 0)
    with pytest.raises(ProgEmuError, match="no code shards"):
        load_split(tmp_path, "train")


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


def test_launch_builds_missing_inputs_in_dependency_order(tmp_path, monkeypatch):
    """The two-stage tiny VQ: synth data, then stage 1 and the perceptual networks, then stage 2, then shards."""
    from train import launch

    for path, deps in launch.NEEDS.items():
        assert path in launch.BUILDERS and path in launch.DONE and all(d in launch.BUILDERS for d in deps)
    for init, stage in launch.INIT_STAGES.items():
        assert stage[0] in launch.STAGES and init.endswith("/final")
    for init, (inputs, _) in launch.DERIVED.items():
        assert all(src in launch.INIT_STAGES or src in launch.DERIVED for src in inputs), init
    monkeypatch.setattr(launch, "REPO", tmp_path)
    ran: list[str] = []

    def fake_sh(cmd, env=None):  # "build" the folder: its DONE file appears
        out = next(p for p, c in launch.BUILDERS.items() if c == cmd)
        ran.append(out)
        (tmp_path / out).mkdir(parents=True, exist_ok=True)
        (tmp_path / out / launch.DONE[out]).write_text("{}")

    monkeypatch.setattr(launch, "sh", fake_sh)
    # every demo stage's inputs can be built from a fresh clone: its shards and the stage it starts from
    import yaml

    from train.config import CONFIG_DIR

    for cfg in sorted(CONFIG_DIR.glob("tiny-demo*.yaml")):
        c = yaml.safe_load(cfg.read_text())
        assert all(part in launch.BUILDERS for part in c["shards"].split(",")), cfg.name
        init = c.get("init_from")
        assert not init or init in launch.INIT_STAGES or init in launch.DERIVED, cfg.name
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


def test_sequence_dataset_first_token_unlabelled():
    seqs = [(np.arange(1, 6, dtype=np.int32), np.arange(1, 6, dtype=np.int32), np.ones(5, np.float32))] * 3
    ds = SequenceDataset(seqs, 16, "pack", 0)
    row = ds[0]
    assert row["labels"].tolist().count(IGNORE) == 3 and row["position_ids"].tolist() == [0, 1, 2, 3, 4] * 3


def test_processor_built_from_tokenizer_and_vq_reads_images_at_the_shard_size(tmp_path):
    """A run without a processor folder builds one whose image size gives the shards' code grid (what
    `progemu generate` then encodes priors with), not IngestOptions' default size."""
    from progemu.configuration_vq import ProgEmuVQConfig
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
    proc = load_processor(ModelArgs(), DataArgs(text_tokenizer=str(tmp_path / "tok"), vq=str(tmp_path / "vq"),
                                                shards=str(tmp_path / "shards")), rows)
    size = proc.get_ingest_options().size
    assert vq.grid_size(size) == (proc.layout.grid_h, proc.layout.grid_w) == (4, 4)
    codes = proc.encode_images([np.zeros((size, size), np.float32)])
    assert tuple(codes.shape) == (1, 4, 4)
    proc.ingest_options = {}  # a processor saved without a size (older runs) derives it from its VQ
    assert proc.get_ingest_options().size == size


def test_processor_carries_the_vq_that_encoded_the_shards(tmp_path):
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
    proc.vq_model = old
    proc.save_pretrained(str(tmp_path / "stage1"))  # the earlier stage's folder, with the old VQ
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "encode_info.json").write_text(json.dumps({"model": str(tmp_path / "vq-new")}))
    rows = [{"grid_h": 4, "grid_w": 4}]
    got = load_processor(ModelArgs(init_from=str(tmp_path / "stage1")), DataArgs(shards=str(shards)), rows)
    for key, value in new.state_dict().items():
        assert torch.equal(got.vq_model.state_dict()[key], value), key
    with pytest.raises(ProgEmuError, match="encoded"):
        load_processor(ModelArgs(), DataArgs(shards=str(shards), processor=str(tmp_path / "stage1")), rows)
    (shards / "encode_info.json").write_text(json.dumps({"model": str(tmp_path / "stage1" / "vq")}))  # it agrees
    same = load_processor(ModelArgs(), DataArgs(shards=str(shards), processor=str(tmp_path / "stage1")), rows)
    assert torch.equal(same.vq_model.state_dict()["quantizer.q.project_in.weight"],
                       old.state_dict()["quantizer.q.project_in.weight"])


def test_several_shard_folders_are_concatenated(tmp_path):
    a, b = make_shards(tmp_path / "a", n=6, seed=1), make_shards(tmp_path / "b", n=5, seed=2)
    both = load_split(f"{a},{b}", "train")
    assert len(both) == len(load_split(a, "train")) + len(load_split(b, "train"))
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
        made(next(init for init, stage in launch.INIT_STAGES.items() if stage == argv))

    monkeypatch.setattr(launch, "main", fake_main)
    monkeypatch.setattr(launch, "sh", lambda cmd, env=None: made(next(p for p, (_, c) in launch.DERIVED.items()
                                                                       if c == cmd)))
    made("runs/finetune-demo-5/final")  # already there: not run again
    launch.ensure_init("runs/demo-grown-10", None)
    assert done == ["runs/finetune-demo-5/final", "runs/finetune-demo-6/final", "runs/demo-average-5-6",
                    "runs/demo-grown-10"]
    launch.ensure_init("runs/demo-grown-10", None)  # present: nothing runs
    launch.ensure_init(None, None)
    assert len(done) == 4
