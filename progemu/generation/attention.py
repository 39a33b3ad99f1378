"""SDPA attention that skips the left padding shared by a block of batch rows (decoding with CFG).

Why: with classifier-free guidance the unconditional rows (``<bos> <boi> h*w <img>``, a few tokens) are
left-padded to the conditional rows' length (prompt + prior image, ~300 tokens at 16x16), and plain SDPA reads
every padded slot of the KV cache at every decoding step. Decoding a small model is bound by those reads, not
by arithmetic (measured on the CPU: one SDPA call of 16 rows over ~400 slots takes 1.3 ms inside the decoding
loop, 0.4 ms when its K/V stay in cache), so the padding costs as much as the tokens. `plan_blocks` splits the
rows into at most two contiguous blocks (conditional [+ prior without prompt] | unconditional: the three-branch
row order keeps the two long blocks together), each starting at the first slot any of its rows uses;
`trimmed_sdpa` then runs transformers' own SDPA once per block on *views* of the cache (no copy).
Results equal plain SDPA: the skipped slots are masked out for every row of the block. With
``--cfg-null prior`` the null rows hold the prior too (only the prompt is missing), so there is little padding
and `plan_blocks` keeps one block; that branch costs about twice the unconditional one's attention and prompt pass.

Only for steps whose query tokens are all real (decoding, chunk feeds); the prompt pass instead runs once per
block on the trimmed rows (`stream.TokenStream._prefill`), so the padding is never computed either.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "progemu_trimmed_sdpa"
# a split must save at least this share of the key slots, else one call (one kernel launch per layer) is cheaper
MIN_SAVING = 0.1


def trimmed_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, kv_blocks: tuple[tuple[int, int, int], ...] | None = None,
                 **kwargs) -> tuple[torch.Tensor, None]:
    """``sdpa_attention_forward`` per row block ``(start, end, first_slot)``; without blocks, exactly it."""
    if not kv_blocks or attention_mask is None or attention_mask.dim() != 4:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outs = []
    for start, end, first in kv_blocks:  # slicing keeps views: the cache is not copied
        mask = attention_mask[start:end, :, :, first:] if attention_mask.shape[0] > 1 else attention_mask[..., first:]
        out, _ = sdpa_attention_forward(module, query[start:end], key[start:end, :, first:],
                                        value[start:end, :, first:], mask, **kwargs)
        outs.append(out)
    return torch.cat(outs, 0), None


AttentionInterface.register(NAME, trimmed_sdpa)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the same boolean masks as "sdpa"


def plan_blocks(leading_pad: list[int], width: int) -> tuple[tuple[int, int, int], ...] | None:
    """Row blocks ``(start, end, first_slot)`` from each row's count of leading padding slots, or None.

    ``width``: the padded prompt length (the slots every row reads at the first step). The best split into
    at most two contiguous blocks (the generator stacks conditional rows above unconditional ones); None
    when trimming would save less than `MIN_SAVING` of the slots read at the first step.
    """
    n = len(leading_pad)
    if n == 0:
        return None
    total = n * width
    best, plan = n * min(leading_pad), ((0, n, min(leading_pad)),)
    for s in range(1, n):
        a, b = min(leading_pad[:s]), min(leading_pad[s:])
        if s * a + (n - s) * b > best:
            best, plan = s * a + (n - s) * b, ((0, s, a), (s, n, b))
    return plan if best >= MIN_SAVING * total else None


@contextmanager
def trimmed_attention(config):
    """Within the block, layers configured with ``sdpa`` use `trimmed_sdpa` (restored afterwards); None: no-op."""
    old = None if config is None else config._attn_implementation
    if old != "sdpa":  # flash attention unpads by itself; eager / flex keep their own paths
        yield False
        return
    config._attn_implementation_internal = NAME
    try:
        yield True
    finally:
        config._attn_implementation_internal = old
