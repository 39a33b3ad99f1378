"""FilledCache: the logits of a cached prefill + steps equal one uncached forward; the layers see only the filled
part; crop / reset / row selection behave as transformers' Cache API says; overflow is a clear error."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from progemu.generation.kv_cache import FilledCache


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _step_logits(model, cache, ids):
    return model(input_ids=ids, cache=cache, use_cache=True).logits[:, -1]


@torch.no_grad()
def test_cached_steps_equal_one_uncached_forward(model):
    ids = torch.randint(0, 50, (3, 12))
    full = model(input_ids=ids).logits  # (3, 12, V)
    cache = FilledCache(model.config, max_cache_len=20)
    got = [_step_logits(model, cache, ids[:, :6])]
    for t in range(6, 12, 2):  # chunks of 2 and a last one
        got.append(_step_logits(model, cache, ids[:, t:t + 2]))
    assert cache.get_seq_length() == 12
    assert all(layer.keys.shape[2] == 20 for layer in cache.layers)  # preallocated once
    want = torch.stack([full[:, 5], full[:, 7], full[:, 9], full[:, 11]])
    torch.testing.assert_close(torch.stack(got), want, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_crop_reset_and_overflow(model):
    ids = torch.randint(0, 50, (2, 8))
    cache = FilledCache(model.config, max_cache_len=8)
    first = _step_logits(model, cache, ids)
    cache.crop(0)  # transformers calls crop(0) as a no-op
    assert cache.get_seq_length() == 8
    cache.crop(-3)  # forget the last 3 tokens, feed them again: same logits
    assert cache.get_seq_length() == 5
    torch.testing.assert_close(_step_logits(model, cache, ids[:, 5:]), first, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="non-positive"):
        cache.crop(2)
    with pytest.raises(ValueError, match="cache full"):
        _step_logits(model, cache, ids[:, :1])
    cache.reset()
    torch.testing.assert_close(_step_logits(model, cache, ids), first, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_selected_rows_continue_like_a_batch_of_their_own(model):
    ids = torch.randint(0, 50, (4, 7))
    both = FilledCache(model.config, max_cache_len=10)
    _step_logits(model, both, ids[:, :6])
    both.batch_select_indices(torch.tensor([2, 0]))  # the Cache API entry point
    alone = FilledCache(model.config, max_cache_len=10)
    _step_logits(model, alone, ids[[2, 0], :6])
    torch.testing.assert_close(_step_logits(model, both, ids[[2, 0], 6:]), _step_logits(model, alone, ids[[2, 0], 6:]),
                               atol=1e-5, rtol=1e-5)
