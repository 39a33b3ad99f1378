"""Trimmed SDPA and block prefill (generation/attention.py, stream.py): skipping a block's shared left padding
changes no result."""

from __future__ import annotations

import pytest
import torch

import progemu.generation.attention as attention
from progemu.generation.attention import plan_blocks
from progemu.generation.decoder import CounterfactualGenerator, DecodeOptions
from progemu.generation.sampling import SamplingOptions
from progemu.generation.stream import TokenStream
from tests._gen_helpers import prompt_for, tiny_layout, tiny_model


def test_plan_splits_conditional_from_padded_unconditional_rows():
    assert plan_blocks([0, 2, 1, 300, 301, 300], 310) == ((0, 3, 0), (3, 6, 300))
    assert plan_blocks([40, 42, 40], 50) == ((0, 3, 40),)  # one block, all rows share 40 padding slots
    assert plan_blocks([0, 1, 0, 2], 300) is None  # nothing worth skipping: one plain call
    assert plan_blocks([], 10) is None


@pytest.fixture(scope="module")
def layout():
    return tiny_layout()


@pytest.fixture(scope="module")
def model(layout):
    return tiny_model(layout, seed=3)


def _rows(layout):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, layout.codebook_size, (3, layout.grid_h, layout.grid_w), generator=g)
    cond = [prompt_for(layout, codes[i], [30 + i, 31, 32][: 1 + i]) for i in range(3)]
    return cond + [[layout.bos_id], [layout.bos_id, 33], [layout.bos_id]], codes


def test_trimmed_steps_equal_plain_sdpa_and_are_used(model, layout, monkeypatch):
    rows, _ = _rows(layout)
    calls = []
    real = attention.sdpa_attention_forward

    def counting(module, query, key, value, mask, **kw):
        calls.append(key.shape[2])
        return real(module, query, key, value, mask, **kw)

    plain = TokenStream(model, rows, layout.pad_id, cache="filled", max_length=64, trim_padding=False)
    trimmed = TokenStream(model, rows, layout.pad_id, cache="filled", max_length=64)
    assert trimmed._blocks is not None and len(trimmed._blocks) == 2
    # the prompt pass runs per block without the shared padding: fewer tokens, the same last states
    assert trimmed.tokens_fed < plain.tokens_fed and trimmed.forwards == plain.forwards == 1
    torch.testing.assert_close(trimmed.state, plain.state, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(attention, "sdpa_attention_forward", counting)
    g = torch.Generator().manual_seed(1)
    for k in (1, 1, 3, 1):  # single steps and a chunk of forced tokens
        cols = torch.randint(layout.image_token_offset, layout.vocab_size, (len(rows), k), generator=g)
        plain.feed(cols)
        trimmed.feed(cols)
        torch.testing.assert_close(trimmed.state, plain.state, rtol=1e-5, atol=1e-5)
    assert calls and min(calls) < max(calls)  # the unconditional block attended over fewer slots
    assert model.config._attn_implementation == "sdpa"  # restored after every step
    trimmed.select_rows(torch.tensor([0, 1, 2]))  # the conditional rows alone: nothing left to trim
    assert trimmed._blocks is None


def test_cfg_generation_is_unchanged_by_trimming(model, layout):
    rows, codes = _rows(layout)
    gen = CounterfactualGenerator(model, layout)
    outs = []
    for trim in (False, True):
        opts = DecodeOptions(image=SamplingOptions(top_k=8), cfg_image=3.0, cfg_text=2.0, max_text_tokens=6,
                             trim_padding=trim)
        outs.append(gen.generate(rows[:3], null_prompts=rows[3:], seeds=[5, 6, 7], options=opts))
    assert torch.equal(outs[0].codes, outs[1].codes)
    assert outs[0].text_ids == outs[1].text_ids
