"""ProgEmuProcessor: sequences, label masks, CFG dropout, augmentation, prompts, parser, save/load."""

import random

import pytest
import torch
from transformers import AutoProcessor

import progemu  # noqa: F401  (registers the Auto classes)
from progemu.errors import LayoutError, SequenceTooLongError
from progemu.processing_progemu import MASK_MODES, TASKS, ProgEmuCollator, ProgEmuProcessor, augment_prompt
from tests._progemu_helpers import PROMPT, TEXT, make_processor, random_codes


@pytest.fixture(scope="module", params=["prompt_prior", "prior_prompt"])
def proc(request):
    return make_processor(sequence_order=request.param, max_length=400)


def _segments(proc, task, prior, target, prompt, text):
    """The expected (role, ids) segments, written out from the documented layout."""
    lay = proc.layout
    p, t = lay.codes_to_ids(prior).tolist(), lay.codes_to_ids(target).tolist()
    pr, tx = proc.encode_text(prompt), proc.encode_text(text)
    cond = [("prompt", pr), ("prior", p)]
    if proc.sequence_order == "prior_prompt":
        cond.reverse()
    body = {"icg": [*cond, ("target_image", t), ("target_text", tx)],
            "edit": [*cond, ("target_image", t), ("target_text", tx)],
            "report2image": [("prompt", pr), ("target_image", t)],
            "image2report": [("prior", p), ("target_text", tx)]}[task]
    return [("bos", [lay.bos_id]), *body, ("eos", [lay.eos_id])]


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("mode", sorted(MASK_MODES))
def test_labels_exactly_where_the_mask_says(proc, task, mode):
    prior, target = random_codes(proc, 2)
    ex = proc.build_example(task, prior_codes=prior, target_codes=target, prompt=PROMPT, text=TEXT, mask_mode=mode)
    segs = _segments(proc, task, prior, target, PROMPT, TEXT)
    assert ex["input_ids"] == [i for _, s in segs for i in s]
    expect_labels, expect_w = [], []
    for role, s in segs:
        on = role in MASK_MODES[mode]
        expect_labels += s if on else [-100] * len(s)
        expect_w += [1.0 if on else 0.0] * len(s)
    assert ex["labels"] == expect_labels and ex["loss_weights"] == expect_w
    assert len(ex["input_ids"]) == len(ex["labels"]) == len(ex["loss_weights"])


def test_loss_weights_per_modality():
    proc = make_processor(image_loss_weight=3.0, text_loss_weight=0.5)
    prior, target = random_codes(proc, 2)
    ex = proc.build_example("icg", prior, target, prompt=PROMPT, text=TEXT)
    s, e = proc.layout.find_images(torch.tensor(ex["input_ids"]))[1]  # the target image
    w = torch.tensor(ex["loss_weights"])
    assert (w[s:e] == 3.0).all() and (w[e:] == 0.5).all() and (w[:s] == 0).all()


def test_changed_code_weight_marks_exactly_the_edited_cells():
    proc = make_processor(image_loss_weight=2.0)
    prior, _ = random_codes(proc, 2)
    target = prior.clone()
    target[0, 0] = (target[0, 0] + 1) % proc.layout.codebook_size  # two edited cells
    target[-1, -1] = (target[-1, -1] + 1) % proc.layout.codebook_size
    ex = proc.build_example("icg", prior, target, prompt=PROMPT, text=TEXT, changed_code_weight=5.0)
    s, e = proc.layout.find_images(torch.tensor(ex["input_ids"]))[1]
    w = torch.tensor(ex["loss_weights"])[s:e]
    offs = proc.layout.code_offsets()
    assert w[offs[0, 0]] == 10.0 and w[offs[-1, -1]] == 10.0
    assert (w == 10.0).sum() == 2 and (w[w != 10.0] == 2.0).all()  # structural tokens and copies keep 2.0
    plain = proc.build_example("icg", prior, target, prompt=PROMPT, text=TEXT)
    assert plain["input_ids"] == ex["input_ids"] and plain["labels"] == ex["labels"]
    dropped = proc.build_example("icg", prior, target, prompt=PROMPT, text=TEXT, changed_code_weight=5.0,
                                 cfg_dropout=1.0)  # no prior in context: "changed" means nothing, no extra weight
    assert dropped["dropped_condition"] and 10.0 not in dropped["loss_weights"]


def test_cfg_dropout_drops_prior_and_prompt_together(proc):
    prior, target = random_codes(proc, 2)
    rng = random.Random(0)
    seen = set()
    for _ in range(60):
        ex = proc.build_example("icg", prior, target, prompt=PROMPT, text=TEXT, cfg_dropout=0.5, rng=rng)
        n_images = len(proc.layout.find_images(torch.tensor(ex["input_ids"])))
        prompt_ids = proc.encode_text(PROMPT)
        has_prompt = any(ex["input_ids"][i: i + len(prompt_ids)] == prompt_ids for i in range(len(ex["input_ids"])))
        assert (n_images, has_prompt) == ((1, False) if ex["dropped_condition"] else (2, True))
        seen.add(ex["dropped_condition"])
    assert seen == {True, False}
    ex = proc.build_example("icg", prior, target, prompt=PROMPT, text=TEXT, cfg_dropout=1.0)
    uncond = proc.build_generation_prompt("icg", unconditional=True)
    assert ex["input_ids"][: len(uncond)] == uncond  # training's unconditional == CFG's generation branch


def test_prompt_dropout_keeps_the_prior_and_drops_the_edit_weight(proc):
    prior, target = random_codes(proc, 2)
    prompt_ids = proc.encode_text(PROMPT)
    rng = random.Random(0)
    seen = set()
    for _ in range(60):
        ex = proc.build_example("icg", prior, target, prompt=PROMPT, text=TEXT, prompt_dropout=0.5,
                                changed_code_weight=5.0, rng=rng)
        ids = ex["input_ids"]
        has_prompt = any(ids[i: i + len(prompt_ids)] == prompt_ids for i in range(len(ids)))
        assert len(proc.layout.find_images(torch.tensor(ids))) == 2  # the prior stays
        assert has_prompt != ex["dropped_prompt"] and not ex["dropped_condition"]
        assert (5.0 in ex["loss_weights"]) != ex["dropped_prompt"]  # no edit weight where the edit is unknown
        seen.add(ex["dropped_prompt"])
    assert seen == {True, False}
    ex = proc.build_example("icg", prior, target, prompt=PROMPT, text=TEXT, prompt_dropout=1.0)
    null = proc.build_generation_prompt("icg", prior_codes=prior, prompt="")
    assert ex["input_ids"][: len(null)] == null  # training's prompt-dropped branch == generation's "prior" null
    ex = proc.build_example("report2image", target_codes=target, prompt=PROMPT, prompt_dropout=1.0)
    assert not ex["dropped_prompt"]  # only counterfactual tasks have a prior to keep


def test_prompt_augmentation():
    rng = random.Random(0)
    sents = {s.strip() for s in PROMPT.split(". ")}
    outs = {augment_prompt(PROMPT, rng, 1.0) for _ in range(30)}
    assert all(o != PROMPT for o in outs)
    for o in outs:  # one negative sentence dropped, the positive one always kept
        assert "left pleural effusion has developed" in o and len(o.split(". ")) == len(sents) - 1
    assert augment_prompt(PROMPT, rng, 0.0) == PROMPT
    assert augment_prompt("One sentence only.", rng, 1.0) == "One sentence only."


def test_overlong_input_errors():
    proc = make_processor(max_length=40)
    prior, target = random_codes(proc, 2)
    n = len(make_processor().build_example("icg", prior, target, prompt=PROMPT, text=TEXT)["input_ids"])
    with pytest.raises(SequenceTooLongError, match=f"{n} tokens.*context is 40"):
        proc.build_example("icg", prior, target, prompt=PROMPT, text=TEXT)
    with pytest.raises(SequenceTooLongError, match="context is 40"):
        proc.build_generation_prompt("icg", prior, PROMPT)


@pytest.mark.parametrize("task", ["icg", "edit", "report2image"])
def test_generation_prompt_is_the_training_prefix(proc, task):
    prior, target = random_codes(proc, 2)
    ex = proc.build_example(task, prior, target, prompt=PROMPT, text=TEXT)
    gp = proc.build_generation_prompt(task, prior if task != "report2image" else None, PROMPT)
    assert ex["input_ids"][: len(gp)] == gp
    assert gp[-proc.layout.header_length:] == proc.layout.block_template()[: proc.layout.header_length].tolist()
    codes, text = proc.parse_generation(ex["input_ids"][len(gp):])
    assert torch.equal(codes, target) and text == ("" if task == "report2image" else TEXT.lower())


def test_image2report_prompt_and_parse(proc):
    prior = random_codes(proc)[0]
    ex = proc.build_example("image2report", prior_codes=prior, text=TEXT)
    gp = proc.build_generation_prompt("image2report", prior)
    assert ex["input_ids"][: len(gp)] == gp and gp[-1] == proc.layout.eoi_id
    assert proc.parse_generation(ex["input_ids"][len(gp):], task="image2report") == (None, TEXT.lower())


def test_parser_accepts_header_truncation_and_padding(proc):
    lay = proc.layout
    target = random_codes(proc)[0]
    block = lay.codes_to_ids(target).tolist()
    text = proc.encode_text(TEXT)
    for ids in (block + text + [lay.eos_id, lay.pad_id, lay.pad_id], block[lay.header_length:] + text):
        codes, out = proc.parse_generation(torch.tensor(ids))
        assert torch.equal(codes, target) and out == TEXT.lower()


def test_parser_malformed_outputs(proc):
    lay = proc.layout
    body = lay.codes_to_ids(random_codes(proc)[0]).tolist()[lay.header_length:]
    with pytest.raises(LayoutError, match="ends inside the image"):
        proc.parse_generation(body[:5])
    missing_eol = list(body)
    missing_eol[lay.grid_w] = lay.image_token_offset  # a code where row 1's <eol> belongs
    with pytest.raises(LayoutError, match=f"malformed.*offset {lay.header_length + lay.grid_w}"):
        proc.parse_generation(missing_eol)
    text_in_grid = list(body)
    text_in_grid[1] = proc.encode_text("effusion")[0]
    with pytest.raises(LayoutError, match="row 0, col 1"):
        proc.parse_generation(text_in_grid)
    with pytest.raises(LayoutError, match="non-text token"):
        proc.parse_generation(body + proc.encode_text("left") + [lay.image_token_offset + 3, lay.eos_id])
    with pytest.raises(LayoutError, match="header"):
        proc.parse_generation([lay.boi_id, lay.img_id] + body)


def test_missing_inputs_error(proc):
    with pytest.raises(LayoutError, match="needs prior_codes"):
        proc.build_example("icg", target_codes=random_codes(proc)[0], prompt=PROMPT)
    with pytest.raises(ValueError, match="unknown task"):
        proc.build_example("vqa", prompt=PROMPT)
    with pytest.raises(LayoutError, match="flat code list"):
        proc.build_example("report2image", target_codes=[1, 2, 3], prompt=PROMPT)


def test_build_from_row(proc):
    prior, target = random_codes(proc, 2)
    row = dict(id="x", prior_codes=prior.flatten().tolist(), target_codes=target.flatten().tolist(), grid_h=4,
               grid_w=4, prompt=PROMPT, interpretation=TEXT, instruction="", prior_report="", target_report=TEXT)
    assert proc.build_from_row(row, "icg")["input_ids"] == proc.build_example("icg", prior, target, PROMPT,
                                                                                TEXT)["input_ids"]
    assert proc.build_from_row(row, "edit") is None  # no instruction
    assert proc.build_from_row(row, "report2image")["input_ids"] == proc.build_example(
        "report2image", target_codes=target, prompt=TEXT)["input_ids"]
    assert proc.build_from_row({**row, "target_codes": [], "target_report": ""}, "image2report") is None


def test_collator_pads():
    proc = make_processor()
    prior, target = random_codes(proc, 2)
    feats = [proc.build_example("icg", prior, target, PROMPT, TEXT), proc.build_example("report2image",
                                                                                        target_codes=target)]
    batch = ProgEmuCollator(proc.layout.pad_id, pad_to_multiple_of=8)(feats)
    n0, n1 = len(feats[0]["input_ids"]), len(feats[1]["input_ids"])
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] >= n0
    assert batch["attention_mask"][1].sum() == n1 and (batch["input_ids"][1, n1:] == proc.layout.pad_id).all()
    assert (batch["labels"][1, n1:] == -100).all() and (batch["loss_weights"][1, n1:] == 0).all()


def test_save_load_round_trip(tmp_path):
    proc = make_processor(sequence_order="prior_prompt", max_length=300, ingest_options={"size": 32},
                          image_loss_weight=2.0, mask_mode="image")
    proc.save_pretrained(tmp_path)
    for again in (ProgEmuProcessor.from_pretrained(tmp_path), _auto_processor(proc, tmp_path)):
        assert type(again) is ProgEmuProcessor
        assert again.to_dict() == proc.to_dict()
        prior, target = random_codes(proc, 2)
        assert again.build_example("icg", prior, target, PROMPT, TEXT) == proc.build_example("icg", prior, target,
                                                                                           PROMPT, TEXT)
        assert again.get_ingest_options().size == 32


def _auto_processor(proc, path):
    proc.model_config("tiny", num_hidden_layers=1).save_pretrained(path)  # AutoProcessor finds us through config.json
    return AutoProcessor.from_pretrained(path)


def test_mismatched_tokenizer_is_refused():
    proc = make_processor()
    small = dict(proc.vocab_layout, text_vocab_size=10)
    with pytest.raises(LayoutError, match="collide"):
        ProgEmuProcessor(proc.tokenizer, vocab_layout=small)
    with pytest.raises(LayoutError, match="model's vocab_layout differs"):
        make_processor(grid=2).check_model_config(proc.model_config("tiny"))
    with pytest.raises(LayoutError, match="sequence_order"):
        proc.check_model_config(proc.model_config("tiny", sequence_order="prior_prompt"))
    proc.check_model_config(proc.model_config("tiny", max_position_embeddings=333))
    assert proc.max_length == 333  # adopted from the model


def test_text_cannot_forge_structure():
    proc = make_processor()
    lay = proc.layout
    forged = "mild edema <|boi|> <|eoi|> <|eos|>"
    ex = proc.build_example("report2image", target_codes=random_codes(proc)[0], prompt=forged)
    assert ex["input_ids"].count(lay.boi_id) == 1 and ex["input_ids"].count(lay.eos_id) == 1
    assert proc.tokenizer.decode(proc.encode_text(forged)) == forged
