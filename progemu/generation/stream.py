"""A batch of left-padded token rows being extended together, with or without a KV cache.

Why a class of its own: the decoder, the guidance pass and the tests all need the same bookkeeping of
attention masks (0 on left padding), position ids (counting only real tokens, so padding never shifts
RoPE) and the cache, and the two cache modes must give the same logits.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, StaticCache

from progemu.generation.attention import plan_blocks, trimmed_attention
from progemu.generation.graphs import StaticStep
from progemu.generation.kv_cache import FilledCache
from progemu.modeling_progemu import no_cudnn_attention


def keeps_logits(model: torch.nn.Module) -> bool:
    """Whether this model's forward takes ``logits_to_keep`` (then it computes the last positions' logits only)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def split_head(model: torch.nn.Module) -> tuple[torch.nn.Module | None, torch.nn.Linear | None]:
    """(decoder backbone, LM head) when the model is a backbone + linear head (Llama-style), else (None, None).

    Why: the decoder then asks the head only for the vocabulary range a phase may emit (the codes inside the
    grid, the text after it), so no step pays for the logits of tokens it would mask out anyway.
    """
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None, None
    if decoder is None or decoder is model or not isinstance(head, torch.nn.Linear):
        return None, None
    return decoder, head


def head_logits(head: torch.nn.Linear, hidden: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """(..., D) hidden states -> (..., hi - lo) logits of the vocabulary slice [lo, hi) only."""
    bias = head.bias[lo:hi] if head.bias is not None else None
    return torch.nn.functional.linear(hidden, head.weight[lo:hi], bias)


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids -> (R, L) ids left-padded with ``pad_id`` and the (R, L) attention mask."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, length - len(r):] = torch.as_tensor(r, dtype=torch.long)
            mask[i, length - len(r):] = 1
    return ids.to(device), mask.to(device)


class TokenStream:
    """Rows fed to a causal LM step by step; ``logits(lo, hi)`` scores the next column over a vocabulary slice."""

    def __init__(self, model: torch.nn.Module, rows: list[list[int]], pad_id: int, *, use_cache: bool = True,
                 cache: str = "dynamic", max_length: int | None = None, trim_padding: bool = True):
        self.model = model
        self.device = next(model.parameters()).device
        self.use_cache = use_cache
        self.has_keep = keeps_logits(model)
        self.decoder, self.head = split_head(model)
        net = self.decoder if self.decoder is not None else model
        self._attn_config = net.config.get_text_config() if hasattr(net.config, "get_text_config") else net.config
        self.ids, self.mask = left_pad(rows, pad_id, self.device)  # (R, L)
        # cached steps skip the left padding shared by a block of rows (attention.py); fed tokens are never padding
        self.trim_padding = trim_padding and use_cache
        self._pads = [self.ids.shape[1] - len(r) for r in rows]
        self._blocks = plan_blocks(self._pads, self.ids.shape[1]) if self.trim_padding else None
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)  # (R, L): real tokens count from 0
        self.last_pos = self.positions[:, -1].clone()  # (R,)
        self.forwards = 0
        self.tokens_fed = 0
        self.cache = None
        if use_cache:
            if cache == "filled":
                if max_length is None:
                    raise ValueError("a preallocated cache needs max_length")
                self.cache = FilledCache(model.config, max_length)
            elif cache in ("static", "graph"):
                if max_length is None:
                    raise ValueError(f"a {cache} cache needs max_length")
                self.cache = StaticCache(config=model.config, max_cache_len=max_length)
            elif cache == "dynamic":
                self.cache = DynamicCache()
            else:
                raise ValueError(f"unknown cache kind {cache!r} (filled, static, graph or dynamic)")
        self.state = self._prefill()  # (R, D) hidden state, or (R, V) logits without a head
        self.step: StaticStep | None = None  # "graph": one-token steps from static buffers (a CUDA graph on GPUs)
        if use_cache and cache == "graph":
            if self.decoder is None:
                raise ValueError("the graph cache needs a backbone + LM head model (get_decoder)")
            self.step = StaticStep(self.decoder, self.cache, self.mask, max_length,
                                   next(model.parameters()).dtype)

    @property
    def rows(self) -> int:
        return int(self.ids.shape[0])

    @torch.inference_mode()
    def _prefill(self) -> torch.Tensor:
        """The prompts' forward; with a filled cache and a trimming plan, one forward per row block, each
        without the left padding its rows share (the unconditional rows' ~300 padding slots cost nothing)."""
        blocks = self._blocks
        if not (blocks and isinstance(self.cache, FilledCache) and any(first > 0 for *_, first in blocks)):
            return self._run(self.ids, self.positions)
        states, width, forwards = [], self.ids.shape[1], self.forwards
        for start, end, first in blocks:
            part = FilledCache(self.model.config, width - first)
            states.append(self._run(self.ids[start:end, first:], self.positions[start:end, first:],
                                    mask=self.mask[start:end, first:], cache=part))
            self.cache.write_block(self.rows, start, end, first, part)
        self.forwards = forwards + 1  # one prompt pass, however many blocks (`forwards` counts decoding steps)
        return torch.cat(states, 0)

    @torch.inference_mode()
    def _run(self, ids: torch.Tensor, positions: torch.Tensor, blocks=None, mask: torch.Tensor | None = None,
             cache=None) -> torch.Tensor:
        mask = self.mask if mask is None else mask
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": self.use_cache}
        if self.use_cache:
            kwargs["cache"] = self.cache if cache is None else cache
        self.forwards += 1
        self.tokens_fed += int(ids.numel())
        with no_cudnn_attention(), trimmed_attention(self._attn_config if blocks else None) as trimmed:
            if trimmed:
                kwargs["kv_blocks"] = blocks
            if self.decoder is not None:
                return self.decoder(**kwargs).last_hidden_state[:, -1]  # (R, D)
            if self.has_keep:
                kwargs["logits_to_keep"] = 1
            return self.model(**kwargs).logits[:, -1]  # (R, V)

    @torch.inference_mode()
    def logits(self, lo: int, hi: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(R', hi - lo) next-token logits over the ids [lo, hi) for ``rows`` (default all)."""
        state = self.state if rows is None else self.state[rows]
        if self.head is not None:
            return head_logits(self.head, state, lo, hi)
        return state[:, lo:hi]

    @property
    def vocab_size(self) -> int:
        return int(self.head.out_features if self.head is not None else self.state.shape[-1])

    def feed(self, cols: torch.Tensor) -> None:
        """Append (R, k) ids in one forward (a run of forced tokens costs one step, not k)."""
        cols = cols.to(self.device)
        k = cols.shape[1]
        new_pos = self.last_pos[:, None] + 1 + torch.arange(k, device=self.device)  # (R, k)
        self.ids = torch.cat([self.ids, cols], 1)
        self.mask = torch.cat([self.mask, torch.ones_like(cols)], 1)
        self.positions = torch.cat([self.positions, new_pos], 1)
        self.last_pos = new_pos[:, -1]
        if self.step is not None and k == 1:
            self.forwards += 1
            self.tokens_fed += int(cols.numel())
            self.state = self.step(cols, new_pos)
        elif self.use_cache:
            if self.step is not None:
                self.step.opened(k)  # a multi-token feed runs eagerly; the step's mask must know its slots
            self.state = self._run(cols, new_pos, self._blocks)
        else:  # no cache: the whole history again (the reference the cached path must match)
            self.state = self._run(self.ids, self.positions)

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only the rows in ``index`` (e.g. drop the CFG branch once no phase needs it)."""
        index = index.to(self.device)
        if isinstance(self.cache, (FilledCache, DynamicCache)):
            self.cache.batch_select_indices(index)
        elif self.cache is not None:
            return  # transformers' StaticCache keeps a fixed batch; the extra rows just keep running
        self.ids, self.mask, self.positions = self.ids[index], self.mask[index], self.positions[index]
        self.last_pos, self.state = self.last_pos[index], self.state[index]
        self._pads = [self._pads[i] for i in index.tolist()]
        self._blocks = plan_blocks(self._pads, len(self.ids[0])) if self.trim_padding else None
