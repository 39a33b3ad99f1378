"""Training examples (train/examples.py): sequences, label masks, loss weights, CFG / prompt dropout, augmentation,
the collator; and that a training sequence starts with the generation prompt the processor builds."""

import random

import pytest
import torch

from progemu.errors import LayoutError, SequenceTooLongError
from progemu.processing_progemu import TASKS
from tests._progemu_helpers import PROMPT, TEXT, make_processor, random_codes
from train.examples import MASK_MODES, Collator, augment_prompt, build_example, build_from_row


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
    ex = build_example(proc, task, prior_codes=prior, target_codes=target, prompt=PROMPT, text=TEXT, mask_mode=mode)
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
    proc = make_processor()
    prior, target = random_codes(proc, 2)
    ex = build_example(proc, "icg", prior, target, prompt=PROMPT, text=TEXT, image_loss_weight=3.0, text_loss_weight=0.5)
    s, e = proc.layout.find_images(torch.tensor(ex["input_ids"]))[1]  # the target image
    w = torch.tensor(ex["loss_weights"])
    assert (w[s:e] == 3.0).all() and (w[e:] == 0.5).all() and (w[:s] == 0).all()


def test_changed_code_weight_marks_exactly_the_edited_cells():
    proc = make_processor()
    prior, _ = random_codes(proc, 2)
    target = prior.clone()
    target[0, 0] = (target[0, 0] + 1) % proc.layout.codebook_size  # two edited cells
    target[-1, -1] = (target[-1, -1] + 1) % proc.layout.codebook_size
    ex = build_example(proc, "icg", prior, target, prompt=PROMPT, text=TEXT, changed_code_weight=5.0,
                       image_loss_weight=2.0)
    s, e = proc.layout.find_images(torch.tensor(ex["input_ids"]))[1]
    w = torch.tensor(ex["loss_weights"])[s:e]
    offs = proc.layout.code_offsets()
    assert w[offs[0, 0]] == 10.0 and w[offs[-1, -1]] == 10.0
    assert (w == 10.0).sum() == 2 and (w[w != 10.0] == 2.0).all()  # structural tokens and copies keep 2.0
    plain = build_example(proc, "icg", prior, target, prompt=PROMPT, text=TEXT, image_loss_weight=2.0)
    assert plain["input_ids"] == ex["input_ids"] and plain["labels"] == ex["labels"]
    dropped = build_example(proc, "icg", prior, target, prompt=PROMPT, text=TEXT, changed_code_weight=5.0,
                                 cfg_dropout=1.0)  # no prior in context: "changed" means nothing, no extra weight
    assert dropped["dropped_condition"] and 10.0 not in dropped["loss_weights"]


def test_cfg_dropout_drops_prior_and_prompt_together(proc):
    prior, target = random_codes(proc, 2)
    rng = random.Random(0)
    seen = set()
    for _ in range(60):
        ex = build_example(proc, "icg", prior, target, prompt=PROMPT, text=TEXT, cfg_dropout=0.5, rng=rng)
        n_images = len(proc.layout.find_images(torch.tensor(ex["input_ids"])))
        prompt_ids = proc.encode_text(PROMPT)
        has_prompt = any(ex["input_ids"][i: i + len(prompt_ids)] == prompt_ids for i in range(len(ex["input_ids"])))
        assert (n_images, has_prompt) == ((1, False) if ex["dropped_condition"] else (2, True))
        seen.add(ex["dropped_condition"])
    assert seen == {True, False}
    ex = build_example(proc, "icg", prior, target, prompt=PROMPT, text=TEXT, cfg_dropout=1.0)
    uncond = proc.build_generation_prompt("icg", unconditional=True)
    assert ex["input_ids"][: len(uncond)] == uncond  # training's unconditional == CFG's generation branch


def test_prompt_dropout_keeps_the_prior_and_drops_the_edit_weight(proc):
    prior, target = random_codes(proc, 2)
    prompt_ids = proc.encode_text(PROMPT)
    rng = random.Random(0)
    seen = set()
    for _ in range(60):
        ex = build_example(proc, "icg", prior, target, prompt=PROMPT, text=TEXT, prompt_dropout=0.5,
                                changed_code_weight=5.0, rng=rng)
        ids = ex["input_ids"]
        has_prompt = any(ids[i: i + len(prompt_ids)] == prompt_ids for i in range(len(ids)))
        assert len(proc.layout.find_images(torch.tensor(ids))) == 2  # the prior stays
        assert has_prompt != ex["dropped_prompt"] and not ex["dropped_condition"]
        assert (5.0 in ex["loss_weights"]) != ex["dropped_prompt"]  # no edit weight where the edit is unknown
        seen.add(ex["dropped_prompt"])
    assert seen == {True, False}
    ex = build_example(proc, "icg", prior, target, prompt=PROMPT, text=TEXT, prompt_dropout=1.0)
    null = proc.build_generation_prompt("icg", prior_codes=prior, prompt="")
    assert ex["input_ids"][: len(null)] == null  # training's prompt-dropped branch == generation's "prior" null
    ex = build_example(proc, "report2image", target_codes=target, prompt=PROMPT, prompt_dropout=1.0)
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
    n = len(build_example(make_processor(), "icg", prior, target, prompt=PROMPT, text=TEXT)["input_ids"])
    with pytest.raises(SequenceTooLongError, match=f"{n} tokens.*context is 40"):
        build_example(proc, "icg", prior, target, prompt=PROMPT, text=TEXT)
    with pytest.raises(SequenceTooLongError, match="context is 40"):
        proc.build_generation_prompt("icg", prior, PROMPT)


@pytest.mark.parametrize("task", ["icg", "edit", "report2image"])
def test_generation_prompt_is_the_training_prefix(proc, task):
    prior, target = random_codes(proc, 2)
    ex = build_example(proc, task, prior, target, prompt=PROMPT, text=TEXT)
    gp = proc.build_generation_prompt(task, prior if task != "report2image" else None, PROMPT)
    assert ex["input_ids"][: len(gp)] == gp
    assert gp[-proc.layout.header_length:] == proc.layout.block_template()[: proc.layout.header_length].tolist()
    codes, text = proc.parse_generation(ex["input_ids"][len(gp):])
    assert torch.equal(codes, target) and text == ("" if task == "report2image" else TEXT.lower())


def test_image2report_prompt_and_parse(proc):
    prior = random_codes(proc)[0]
    ex = build_example(proc, "image2report", prior_codes=prior, text=TEXT)
    gp = proc.build_generation_prompt("image2report", prior)
    assert ex["input_ids"][: len(gp)] == gp and gp[-1] == proc.layout.eoi_id
    assert proc.parse_generation(ex["input_ids"][len(gp):], task="image2report") == (None, TEXT.lower())


def test_missing_inputs_error(proc):
    with pytest.raises(LayoutError, match="needs prior_codes"):
        build_example(proc, "icg", target_codes=random_codes(proc)[0], prompt=PROMPT)
    with pytest.raises(ValueError, match="unknown task"):
        build_example(proc, "vqa", prompt=PROMPT)
    with pytest.raises(LayoutError, match="flat code list"):
        build_example(proc, "report2image", target_codes=[1, 2, 3], prompt=PROMPT)


def test_build_from_row(proc):
    prior, target = random_codes(proc, 2)
    row = dict(id="x", prior_codes=prior.flatten().tolist(), target_codes=target.flatten().tolist(), grid_h=4,
               grid_w=4, prompt=PROMPT, interpretation=TEXT, instruction="", prior_report="", target_report=TEXT)
    assert build_from_row(proc, row, "icg")["input_ids"] == build_example(proc, "icg", prior, target, PROMPT,
                                                                                TEXT)["input_ids"]
    assert build_from_row(proc, row, "edit") is None  # no instruction
    assert build_from_row(proc, row, "report2image")["input_ids"] == build_example(proc,
        "report2image", target_codes=target, prompt=TEXT)["input_ids"]
    assert build_from_row(proc, {**row, "target_codes": [], "target_report": ""}, "image2report") is None


def test_collator_pads():
    proc = make_processor()
    prior, target = random_codes(proc, 2)
    feats = [build_example(proc, "icg", prior, target, PROMPT, TEXT), build_example(proc, "report2image",
                                                                                        target_codes=target)]
    batch = Collator(proc.layout.pad_id, pad_to_multiple_of=8)(feats)
    n0, n1 = len(feats[0]["input_ids"]), len(feats[1]["input_ids"])
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] >= n0
    assert batch["attention_mask"][1].sum() == n1 and (batch["input_ids"][1, n1:] == proc.layout.pad_id).all()
    assert (batch["labels"][1, n1:] == -100).all() and (batch["loss_weights"][1, n1:] == 0).all()


def test_text_cannot_forge_structure():
    proc = make_processor()
    lay = proc.layout
    forged = "mild edema <|boi|> <|eoi|> <|eos|>"
    ex = build_example(proc, "report2image", target_codes=random_codes(proc)[0], prompt=forged)
    assert ex["input_ids"].count(lay.boi_id) == 1 and ex["input_ids"].count(lay.eos_id) == 1
    assert proc.tokenizer.decode(proc.encode_text(forged)) == forged
