"""Invariants of the batched constrained decoder on a random tiny Llama (no training)."""

import pytest
import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import UnbatchedClassifierFreeGuidanceLogitsProcessor

from progemu.errors import SequenceTooLongError
from progemu.generation import decoder
from progemu.generation.decoder import CounterfactualGenerator, DecodeOptions
from progemu.generation.sampling import SamplingOptions, select_tokens
from tests._gen_helpers import prompt_for, tiny_layout, tiny_model

GREEDY = SamplingOptions(greedy=True)
HOT = SamplingOptions(temperature=1.5)


@pytest.fixture(scope="module")
def setup():
    layout = tiny_layout()
    model = tiny_model(layout)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, layout.codebook_size, (3, layout.grid_h, layout.grid_w), generator=g)
    # prompts of different lengths, so rows are left-padded
    prompts = [prompt_for(layout, codes[i], list(range(30, 31 + 2 * i))) for i in range(3)]
    nulls = [[layout.bos_id]] * 3
    return layout, model, codes, prompts, nulls


def run(setup, **kw):
    layout, model, codes, prompts, nulls = setup
    opts = kw.pop("options")
    return CounterfactualGenerator(model, layout).generate(kw.pop("prompts", prompts), options=opts, **kw)


def test_cached_and_uncached_greedy_agree(setup):
    outs = [run(setup, options=DecodeOptions(image=GREEDY, text=GREEDY, max_text_tokens=8, use_cache=c, cache=k))
            for c, k in [(True, "dynamic"), (False, "dynamic"), (True, "static"), (True, "filled"), (True, "graph")]]
    for out in outs[1:]:
        assert torch.equal(out.codes, outs[0].codes)
        assert out.text_ids == outs[0].text_ids


def test_cfg_scale_one_equals_no_cfg(setup):
    nulls = setup[4]
    plain = run(setup, options=DecodeOptions(image=GREEDY, max_text_tokens=4))
    # image scale 1 while the text scale keeps the unconditional rows in the batch during the image
    guided = run(setup, null_prompts=nulls, options=DecodeOptions(image=GREEDY, cfg_image=1.0, cfg_text=2.0,
                                                                  max_text_tokens=4))
    assert torch.equal(plain.codes, guided.codes)
    both_one = run(setup, null_prompts=nulls, options=DecodeOptions(image=GREEDY, max_text_tokens=4))
    assert torch.equal(plain.codes, both_one.codes) and plain.text_ids == both_one.text_ids


def test_cfg_is_one_forward_per_step_and_matches_reference(setup):
    layout, model, codes, prompts, nulls = setup
    plain = run(setup, options=DecodeOptions(image=GREEDY, max_text_tokens=0))
    guided = run(setup, null_prompts=nulls, options=DecodeOptions(image=GREEDY, cfg_image=3.0, max_text_tokens=0))
    assert guided.forwards == plain.forwards  # the unconditional branch rides in the same forward
    # transformers' reference CFG (separate unconditional forward), greedy, one item: same tokens
    tmpl = layout.block_template().tolist()
    ids = torch.tensor([prompts[0]])
    proc = UnbatchedClassifierFreeGuidanceLogitsProcessor(3.0, model, torch.tensor([nulls[0]]))

    def allowed(_b, seq):
        t = seq.shape[0] - ids.shape[1]
        return [tmpl[t]] if tmpl[t] >= 0 else list(range(layout.image_token_offset, layout.vocab_size))

    ref = model.generate(ids, attention_mask=torch.ones_like(ids), logits_processor=LogitsProcessorList([proc]),
                         prefix_allowed_tokens_fn=allowed, do_sample=False, max_new_tokens=layout.image_length,
                         pad_token_id=layout.pad_id, eos_token_id=None)
    assert torch.equal(layout.ids_to_codes(ref[0, ids.shape[1]:]), guided.codes[0])


def test_three_branch_guidance_reduces_to_either_null_and_matches_its_formula(setup, monkeypatch):
    """u + s_p (p - u) + s (c - p): s_p = s is CFG against the unconditional rows, s_p = 1 CFG against the prior
    rows; one forward per step either way, and the first code is the argmax of the formula over plain forwards."""
    layout, model, codes, prompts, nulls = setup
    priors = [prompt_for(layout, codes[i], [31]) for i in range(3)]  # the prior with another (empty) prompt

    def guided(null, prior_null, max_text=4, **kw):
        return run(setup, null_prompts=null, prior_null_prompts=prior_null,
                   options=DecodeOptions(image=GREEDY, cfg_text=2.0, max_text_tokens=max_text, **kw))

    uncond = guided(nulls, None, cfg_image=3.0)
    assert uncond.text_ids != guided(None, None, cfg_image=3.0).text_ids  # the text's CFG shows in this setup
    for cache in ("filled", "static", "graph", "dynamic"):  # a static cache keeps all three row blocks for the text
        three = guided(nulls, priors, cfg_image=3.0, cfg_prior=3.0, cache=cache)
        assert torch.equal(three.codes, uncond.codes) and three.text_ids == uncond.text_ids  # text: against u
        assert three.forwards == uncond.forwards
    assert torch.equal(guided(nulls, priors, cfg_image=3.0).codes, guided(priors, None, cfg_image=3.0).codes)
    seen = []
    monkeypatch.setattr(decoder, "select_tokens", lambda scores, *a: seen.append(scores) or select_tokens(scores, *a))
    guided(nulls, priors, cfg_image=4.0, cfg_prior=2.0, max_text=0)
    header = layout.block_template()[: layout.header_length].tolist()
    lo, hi = layout.image_token_offset, layout.vocab_size
    with torch.no_grad():  # the first code's scores from three plain forwards
        lc, lp, lu = (torch.stack([torch.log_softmax(model(torch.tensor([r[i] + header])).logits[0, -1, lo:hi], -1)
                                   for i in range(3)]) for r in (prompts, priors, nulls))
    torch.testing.assert_close(seen[0], lu + 2.0 * (lp - lu) + 4.0 * (lc - lp), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="null_prompts as well"):
        guided(None, priors, cfg_image=3.0)


def test_grid_always_well_formed(setup):
    layout = setup[0]
    out = run(setup, null_prompts=setup[4], seeds=[5, 6, 7],
              options=DecodeOptions(image=HOT, text=HOT, cfg_image=2.0, cfg_text=2.0, max_text_tokens=12))
    template = layout.block_template()
    fixed = template >= 0
    assert torch.equal(out.image_ids[:, fixed], template[fixed].expand(3, -1))
    assert bool(layout.is_image_code(out.image_ids[:, ~fixed]).all())
    assert torch.equal(layout.ids_to_codes(out.image_ids), out.codes)
    for text in out.text_ids:  # text holds only text tokens: no codes, no structural tokens
        t = torch.tensor(text, dtype=torch.long)
        assert bool(layout.is_text(t).all()) and layout.eos_id not in text and len(text) <= 12


def test_region_outside_mask_copies_prior(setup):
    layout, _, codes, _, nulls = setup
    mask = torch.zeros(3, layout.grid_h, layout.grid_w, dtype=torch.bool)
    mask[0, :2, :2] = True
    mask[1, 1:3, 1:4] = True  # item 2: nothing editable
    full = run(setup, options=DecodeOptions(image=HOT, max_text_tokens=0))
    out = run(setup, prior_codes=codes, edit_mask=mask, null_prompts=nulls, seeds=[1, 2, 3],
              options=DecodeOptions(image=HOT, cfg_image=2.0, max_text_tokens=0))
    assert torch.equal(out.codes[~mask], codes[~mask])
    assert torch.equal(out.codes[2], codes[2])
    assert out.forwards < full.forwards  # forced runs are fed in chunks
    # one forward per sampled position of the union mask, plus the prefill
    assert out.forwards == 1 + int(mask.any(0).sum())


def test_seeds_reproduce_and_ignore_batch_neighbours(setup):
    _, _, codes, prompts, nulls = setup
    opts = DecodeOptions(image=HOT, text=HOT, cfg_image=2.0, max_text_tokens=6)
    a = run(setup, null_prompts=nulls, seeds=[11, 12, 13], options=opts)
    b = run(setup, null_prompts=nulls, seeds=[11, 12, 13], options=opts)
    assert torch.equal(a.codes, b.codes) and a.text_ids == b.text_ids
    alone = run(setup, prompts=prompts[1:2], null_prompts=nulls[1:2], seeds=[12], options=opts)
    assert torch.equal(alone.codes[0], a.codes[1]) and alone.text_ids[0] == a.text_ids[1]
    other = run(setup, null_prompts=nulls, seeds=[21, 22, 23], options=opts)
    assert not torch.equal(other.codes, a.codes)


def test_report_to_image_and_image_to_report(setup):
    layout, model, codes, prompts, _ = setup
    gen = CounterfactualGenerator(model, layout)
    img = gen.generate([[layout.bos_id, 30, 31]], options=DecodeOptions(image=HOT, max_text_tokens=0))
    assert img.codes.shape == (1, layout.grid_h, layout.grid_w) and img.text_ids == [[]]
    txt = gen.generate([prompts[0]], generate_image=False, options=DecodeOptions(max_text_tokens=5))
    assert txt.codes is None and len(txt.text_ids[0]) <= 5


def test_too_long_is_a_clear_error(setup):
    layout, model, _, prompts, _ = setup
    with pytest.raises(SequenceTooLongError, match="512"):
        CounterfactualGenerator(model, layout).generate(prompts, options=DecodeOptions(max_text_tokens=480))


def test_prompts_may_hold_the_image_header(setup):
    layout, _, _, prompts, nulls = setup
    n = layout.header_length
    header = layout.block_template()[:n].tolist()
    opts = DecodeOptions(image=GREEDY, cfg_image=2.0, max_text_tokens=3)
    plain = run(setup, null_prompts=nulls, options=opts)
    with_header = run(setup, prompts=[p + header for p in prompts], null_prompts=[q + header for q in nulls],
                      options=opts)
    assert torch.equal(plain.image_ids, with_header.image_ids) and plain.text_ids == with_header.text_ids
    with pytest.raises(ValueError, match="header"):
        run(setup, prompts=[p + header for p in prompts], null_prompts=nulls, options=opts)


def test_sliced_head_equals_full_logits(setup):
    from progemu.generation.stream import TokenStream, left_pad

    layout, model, _, prompts, _ = setup
    stream = TokenStream(model, prompts, layout.pad_id)
    ids, mask = left_pad(prompts, layout.pad_id, "cpu")
    full = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
    lo, hi = layout.image_token_offset, layout.vocab_size
    assert stream.head is not None  # the Llama split is used
    assert torch.allclose(stream.logits(lo, hi), full[:, lo:hi], atol=1e-4)
    assert torch.allclose(stream.logits(0, 10, torch.tensor([2, 0])), full[[2, 0], :10], atol=1e-4)


def test_cache_kinds_agree_with_cfg_rows_dropped_for_text(setup):
    """CFG on the image only: after the grid the unconditional rows are dropped (filled / dynamic) or kept
    running (static); every cache kind must still give the uncached tokens."""
    nulls = setup[4]
    outs = [run(setup, null_prompts=nulls, options=DecodeOptions(image=GREEDY, text=GREEDY, cfg_image=2.5,
                                                                 max_text_tokens=6, use_cache=c, cache=k))
            for c, k in [(False, "dynamic"), (True, "filled"), (True, "dynamic"), (True, "static"), (True, "graph")]]
    for out in outs[1:]:
        assert torch.equal(out.codes, outs[0].codes)
        assert out.text_ids == outs[0].text_ids


def test_graph_step_agrees_with_forced_runs_in_the_region(setup):
    """The static one-token step (``--cache graph``; eager on the CPU) between multi-token feeds of forced codes:
    its mask must open the forced slots too, or the codes after a forced run would differ."""
    codes, nulls = setup[2], setup[4]
    mask = torch.zeros(codes.shape, dtype=torch.bool)
    mask[:, 1:3, 1:] = True
    outs = [run(setup, null_prompts=nulls, prior_codes=codes, edit_mask=mask,
                options=DecodeOptions(image=GREEDY, cfg_image=2.0, cfg_text=1.5, max_text_tokens=6, use_cache=c,
                                      cache=k))
            for c, k in [(False, "dynamic"), (True, "graph")]]
    assert torch.equal(outs[1].codes, outs[0].codes) and outs[1].text_ids == outs[0].text_ids
    assert torch.equal(outs[1].codes[~mask], codes[~mask]) and not torch.equal(outs[1].codes, codes)
