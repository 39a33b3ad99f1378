"""Edit masks and guidance maps: resizing, dilation, errors that name the file, map shape and range."""

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from progemu.errors import IngestError
from progemu.generation.guidance import auto_edit_mask, overlay, relevance_grid, upsample
from progemu.generation.region import (
    asks_no_change,
    dilate,
    load_user_mask,
    nih_prior,
    parse_finding,
    parse_findings,
    paste_prior,
    read_nih_boxes,
    to_grid,
)
from tests._gen_helpers import prompt_for, tiny_layout, tiny_model


def test_user_mask_any_size_to_grid(tmp_path):
    arr = np.zeros((90, 130), np.uint8)
    arr[:, :40] = 255  # left ~31% of the width
    Image.fromarray(arr).save(tmp_path / "m.png")
    grid = to_grid(load_user_mask(tmp_path / "m.png"), 4, 4)
    assert grid.shape == (4, 4) and grid.dtype == torch.bool
    assert grid[:, :2].all() and not grid[:, 2:].any()  # a cell touched at all is editable


@pytest.mark.parametrize("kind", ["colour", "empty", "garbage"])
def test_bad_masks_name_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "colour":
        rgb = np.zeros((8, 8, 3), np.uint8)
        rgb[..., 0] = 200
        Image.fromarray(rgb).save(path)
    elif kind == "empty":
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    else:
        path.write_bytes(b"not an image")
    with pytest.raises(IngestError) as err:
        load_user_mask(path)
    assert str(path) in str(err.value)


def test_dilate_grows_by_whole_cells():
    m = torch.zeros(2, 5, 5, dtype=torch.bool)
    m[0, 2, 2] = True
    d = dilate(m, 1)
    assert int(d[0].sum()) == 9 and not d[1].any() and d[0, 1:4, 1:4].all()
    assert torch.equal(dilate(m, 0), m)


def test_parse_finding_and_side():
    assert parse_finding("Moderate left pleural effusion has developed.") == ("pleural_effusion", "left")
    assert parse_finding("Add the finding of cardiomegaly") == ("cardiomegaly", None)
    assert parse_finding("Bilateral pleural effusions, right and left.")[1] is None
    assert parse_finding("no change") is None


def test_parse_findings_keeps_every_changed_finding_with_its_own_side():
    prompt = ("Moderate pleural effusion has developed in the left lower lung. Stable severe mass in the right "
              "middle lung. The pneumothorax at the right apex has resolved. No pulmonary edema. The heart size is "
              "normal.")
    # stable and denied findings do not count; each side is read from the finding's own sentence
    assert parse_findings(prompt) == [("pleural_effusion", "left"), ("pneumothorax", "right")]
    assert parse_finding(prompt) == ("pleural_effusion", None)  # the first finding alone, sides of the whole text
    assert parse_findings("Add the finding of mild edema. Remove the finding of cardiomegaly.") == [
        ("edema", None), ("cardiomegaly", None)]
    assert parse_findings("There is new moderate cardiomegaly. The cardiomegaly has increased.") == [
        ("cardiomegaly", None)]  # once, in order of mention
    assert parse_findings("Stable moderate cardiomegaly.") == [("cardiomegaly", None)]  # nothing changes: the first
    assert parse_findings("No change.") == [] and parse_findings("") == []


def test_asks_no_change_only_when_nothing_changes():
    for text in ("No significant change compared with the prior study. Severe cardiomegaly is unchanged.",
                 "The appearance is unchanged from the prior study.", "No significant interval change. No pneumothorax.",
                 "Stable moderate cardiomegaly. The heart size is normal.", "The heart size is normal."):
        assert asks_no_change(text), text
    for text in ("No significant change. Moderate cardiomegaly has appeared.", "Add the finding of edema.",
                 "No pneumothorax.", "Increased opacity.", ""):
        assert not asks_no_change(text), text


def test_synthcxr_prompts_and_instructions_name_exactly_the_pairs_changes():
    """On SynthCXR, where the truth is known: a prompt or edit instruction changes nothing exactly when the pair
    does not change, else parse_findings gives the pair's changed findings with their sides, in order."""
    from progemu.findings import FINDINGS
    from progemu.synth import SynthCXR

    gen = SynthCXR(size=64, seed=7)
    for i in range(48):
        p = gen.pair(i)
        changes = [c for c in p.changes if c.kind != "unchanged"]
        want = [(c.key, c.state.side if FINDINGS[c.key].lateral else None) for c in changes]
        for text in (p.prompt, p.instruction):
            assert asks_no_change(text) == (not changes), text
            if changes:
                assert parse_findings(text) == want, text


def test_nih_boxes_union_and_side(tmp_path):
    path = tmp_path / "BBox_List_2017.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
        fh.write("a.png,Effusion,100,600,200,300\n")  # image left = patient's right
        fh.write("b.png,Effusion,700,600,200,300\n")
        fh.write("c.png,Cardiomegaly,300,400,400,300\n")
    boxes = read_nih_boxes(path)
    both = nih_prior("pleural_effusion", 64, None, boxes)
    left = nih_prior("pleural_effusion", 64, "left", boxes)
    assert both.shape == (64, 64) and both.max() == 1.0
    assert left[:, 32:].any() and not left[:, :32].any()
    assert nih_prior("pneumothorax", 64, None, boxes) is None


@pytest.mark.parametrize("method", ["kl", "nll"])
def test_guidance_shape_and_range(method):
    layout = tiny_layout()
    model = tiny_model(layout)
    codes = torch.randint(0, layout.codebook_size, (2, layout.grid_h, layout.grid_w))
    prompts = [prompt_for(layout, codes[i], [30, 31, 32][: i + 2]) for i in range(2)]
    refs = [prompt_for(layout, codes[i], []) for i in range(2)]
    rel = relevance_grid(model, layout, prompts, codes, refs, method=method)
    assert rel.shape == (2, layout.grid_h, layout.grid_w)
    assert float(rel.min()) >= 0 and torch.allclose(rel.flatten(1).amax(1), torch.ones(2))
    if method == "kl":  # the reference prompt against itself: no relevance anywhere
        same = relevance_grid(model, layout, refs, codes, refs, method="kl")
        assert float(same.max()) < 1e-2  # not amplified noise
    big = upsample(rel[0], (37, 53))
    assert big.shape == (37, 53) and big.dtype == np.float32 and 0 <= big.min() and big.max() <= 1
    rgb = overlay(np.full((37, 53), 0.5, np.float32), big)
    assert rgb.shape == (37, 53, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] >= rgb[..., 1]).all()  # red overlay
    assert auto_edit_mask(rel[0], 0.0).all()  # tau = 0: unrestricted
    m = auto_edit_mask(rel[0], 0.5, anatomy_grid=torch.zeros(layout.grid_h, layout.grid_w))
    assert not m.any()
    assert auto_edit_mask(rel[0], 1.0).sum() >= 1  # the peak itself passes


def test_paste_prior_blends_only_inside_the_mask():
    rng = np.random.default_rng(0)
    edited, prior = rng.random((64, 64)).astype(np.float32), rng.random((64, 64)).astype(np.float32)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[1:7, 1:4] = True
    mask[1:4, 4:7] = True  # an L shape: its inner corner must not leak the edit outside
    out = paste_prior(edited, prior, mask)
    hard = np.kron(mask.numpy(), np.ones((8, 8))).astype(bool)
    assert np.array_equal(out[~hard], prior[~hard])
    core = np.kron(dilate(~mask, 1).logical_not().numpy(), np.ones((8, 8))).astype(bool)  # >= 1 cell inside
    assert core.any() and np.allclose(out[core], edited[core])
    w = (out - prior) / (edited - prior)
    assert (w[hard] >= -1e-5).all() and (w[hard] <= 1 + 1e-5).all()  # a convex blend in between
    assert np.array_equal(paste_prior(edited, prior, torch.ones(8, 8, dtype=torch.bool), feather=0), edited)
    one = torch.zeros(8, 8, dtype=torch.bool)
    one[5, 5] = True  # a single cell: the edit still reaches full weight at its centre
    assert np.allclose(paste_prior(edited, prior, one)[43:45, 43:45], edited[43:45, 43:45])
    with pytest.raises(ValueError, match="differ in size"):
        paste_prior(edited[:32], prior, mask)


def test_relevance_pass_reads_a_training_example_with_the_prior_as_target(tmp_path):
    """The guidance pass appends the prior's block to a generation prompt that already ends with the target's header
    ``<boi> h*w <img>``: it must read the tokens (and so give the logits) of a training example of that task whose
    target image is the prior, not ``... <boi> h*w <img> <boi> h*w <img> codes ...``."""
    from progemu.generation.guidance import _code_logits, teacher_forced_row
    from progemu.modeling_progemu import ProgEmuForCausalLM
    from progemu.processing_progemu import ProgEmuProcessor
    from tests._gen_helpers import make_model_dir
    from train.examples import build_example

    folder = make_model_dir(tmp_path / "m")
    proc, model = ProgEmuProcessor.from_pretrained(folder), ProgEmuForCausalLM.from_pretrained(folder).eval()
    lay = proc.layout
    codes = torch.randint(0, lay.codebook_size, (lay.grid_h, lay.grid_w), generator=torch.Generator().manual_seed(3))
    text = "moderate left pleural effusion has developed."
    for task in ("icg", "edit"):
        row = teacher_forced_row(lay, proc.build_generation_prompt(task, prior_codes=codes, prompt=text), codes)
        example = build_example(proc, task, codes, codes, prompt=text, text="the right lung is clear.")["input_ids"]
        target_end = len(example) - len(proc.encode_text("the right lung is clear.")) - 1  # text and <eos> follow
        assert row == example[:target_end]
        with torch.no_grad():
            full = model(torch.tensor([example])).logits[0]  # (T, V)
        offs = lay.code_offsets().flatten()
        start = target_end - lay.image_length  # the target block's first position
        want = full[start - 1 + offs, lay.image_token_offset: lay.image_token_offset + lay.codebook_size]
        torch.testing.assert_close(_code_logits(model, lay, [row])[0], want, atol=1e-5, rtol=1e-5)
