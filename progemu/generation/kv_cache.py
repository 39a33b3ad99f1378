"""A preallocated KV cache whose attention sees only the filled part.

Why not transformers' ``StaticCache``: it is built for ``torch.compile`` and so always attends over its full
``max_cache_len`` (the mask hides the empty slots, the kernel still reads them). Generating a 16x16 grid after a
300-token prompt, the first code would attend over ~650 slots instead of ~315; on a CPU the attention was half of
all decoding time. ``DynamicCache`` attends over the filled part but copies the whole cache on every step
(``torch.cat``). ``FilledCache`` writes in place into preallocated tensors (no copy) and hands the layers views
of the filled prefix (no empty slots), with the mask sized to match.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, StaticLayer


class FilledLayer(StaticLayer):
    """``StaticLayer`` storage; ``update`` returns ``keys[:, :, :filled]`` views and the mask is sized to them."""

    is_compileable = False  # the returned length changes every step

    def __init__(self, max_cache_len: int, **kwargs):
        super().__init__(max_cache_len=max_cache_len)
        self.filled = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.filled + key_states.shape[-2]
        if end > self.max_cache_len:
            raise ValueError(f"KV cache full: {end} tokens > max_cache_len {self.max_cache_len}")
        self.keys[:, :, self.filled:end].copy_(key_states)
        self.values[:, :, self.filled:end].copy_(value_states)
        self.filled = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def batch_select_indices(self, index: torch.Tensor) -> None:
        """Keep only the batch rows in ``index`` (``Cache.batch_select_indices`` calls this on every layer)."""
        if self.is_initialized:  # one copy of the kept rows, so later steps compute only those
            self.keys, self.values = self.keys.index_select(0, index), self.values.index_select(0, index)
            self.batch_size = int(index.numel())

    def write_block(self, rows: int, start: int, end: int, first: int, part: FilledLayer) -> None:
        """Copy ``part``'s filled slots into batch rows [start, end), slots from ``first`` on (a block of rows
        prefilled on its own, without the left padding it shares); the layer holds ``rows`` rows in all."""
        if not self.is_initialized:  # zeros elsewhere: slots the block's rows never attend to (masked)
            self.lazy_initialization(part.keys.new_empty((rows, part.keys.shape[1], 0, part.keys.shape[-1])),
                                     part.values.new_empty((rows, part.values.shape[1], 0, part.values.shape[-1])))
        end_slot = first + part.filled
        if end_slot > self.max_cache_len:
            raise ValueError(f"KV cache full: {end_slot} tokens > max_cache_len {self.max_cache_len}")
        self.keys[start:end, :, first:end_slot].copy_(part.keys[:, :, : part.filled])
        self.values[start:end, :, first:end_slot].copy_(part.values[:, :, : part.filled])
        self.filled = max(self.filled, end_slot)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.filled + query_length, 0  # called before `update`: the cache plus the incoming tokens

    def get_seq_length(self) -> int:
        return self.filled

    def reset(self) -> None:
        self.filled = 0

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last ``-tokens_to_remove`` tokens (transformers 5: a non-positive count; 0 is a no-op)."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a non-positive number of tokens to remove")
        self.filled = max(0, self.filled + tokens_to_remove)


class FilledCache(Cache):
    """One ``FilledLayer`` per decoder layer of ``config`` (full-attention models such as Llama)."""

    def __init__(self, config, max_cache_len: int):
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        layer_types = getattr(text, "layer_types", None) or ["full_attention"] * text.num_hidden_layers
        if any(t != "full_attention" for t in layer_types):
            raise ValueError(f"FilledCache serves full-attention layers only, not {sorted(set(layer_types))}")
        super().__init__(layers=[FilledLayer(max_cache_len) for _ in layer_types])
        self.max_cache_len = max_cache_len

    def write_block(self, rows: int, start: int, end: int, first: int, part: FilledCache) -> None:
        """`FilledLayer.write_block` on every layer."""
        for layer, src in zip(self.layers, part.layers, strict=True):
            layer.write_block(rows, start, end, first, src)
