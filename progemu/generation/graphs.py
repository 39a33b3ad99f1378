"""One-token decoding steps with static shapes, captured once in a CUDA graph and replayed (``--cache graph``).

Why: on a GPU a decoding step of a model this size is bound by kernel launches, not arithmetic (an H100 was busy
17 ms of the host's 99 ms over 16 steps). A CUDA graph launches the whole step's kernels at once. A graph replays
fixed shapes and addresses, so the step reads everything from buffers that stay in place: the token ids and
position ids of the new column, transformers' ``StaticCache`` (every slot preallocated; it counts its own
position on the device) and a 4-D additive attention mask over all its slots, kept here and opened one slot per
step. The first step runs eagerly (it warms the kernels up, as capturing requires) and the graph is captured
right after; multi-token feeds (a run of forced codes) run eagerly through the same buffers. On a CPU the same
static step runs eagerly (no graphs there), which is how its results are tested against the other caches.
"""

from __future__ import annotations

import torch
from transformers import StaticCache

from progemu.modeling_progemu import no_cudnn_attention


class StaticStep:
    """Runs ``decoder`` one column at a time over a ``StaticCache`` of ``max_length`` slots, ``mask`` (R, L) being
    the prompt's attention mask (0 on left padding) already in the cache."""

    def __init__(self, decoder: torch.nn.Module, cache: StaticCache, mask: torch.Tensor, max_length: int,
                 dtype: torch.dtype):
        rows, filled = mask.shape
        device = mask.device
        self.decoder, self.cache = decoder, cache
        self.capture = device.type == "cuda"
        self.min = torch.finfo(dtype).min
        # (R, 1, 1, max_length): 0 where a slot holds a real token, the dtype's minimum elsewhere (padding, empty)
        self.mask = torch.full((rows, 1, 1, max_length), self.min, dtype=dtype, device=device)
        self.mask[:, 0, 0, :filled].masked_fill_(mask.bool(), 0.0)
        self.filled = filled
        self.ids = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None
        self.replays = 0

    def opened(self, k: int) -> None:
        """``k`` more slots hold real tokens (every fed token is real: padding only ever leads the prompt)."""
        if self.filled + k > self.mask.shape[-1]:
            raise ValueError(f"KV cache full: {self.filled + k} tokens > {self.mask.shape[-1]} slots")
        self.mask[..., self.filled: self.filled + k] = 0.0
        self.filled += k

    def _forward(self) -> torch.Tensor:
        kwargs = {"input_ids": self.ids, "attention_mask": self.mask, "position_ids": self.pos, "use_cache": True,
                  "cache": self.cache}
        with no_cudnn_attention():
            return self.decoder(**kwargs).last_hidden_state[:, -1]  # (R, D)

    @torch.inference_mode()
    def __call__(self, cols: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(R, 1) ids at (R, 1) positions -> (R, D) last hidden states."""
        self.ids.copy_(cols)
        self.pos.copy_(positions)
        self.opened(1)
        if self.graph is not None:
            self.graph.replay()
            self.replays += 1
            return self.out.clone()  # the next replay overwrites the buffer
        if not self.capture:
            return self._forward()
        side = torch.cuda.Stream()  # warm-up off the capturing stream, as torch.cuda.graph asks
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            state = self._forward()  # the real first step: it writes its key and value into the cache
        torch.cuda.current_stream().wait_stream(side)
        # the capture records the step's kernels without running them; every replay then reads the buffers above
        # (the cache advances its own device-side position, so a replay writes the next slot)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._forward()
        return state
