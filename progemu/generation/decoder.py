"""Batched counterfactual decoding: the image grid by construction, then text, with batched CFG and region forcing.

Example::

    gen = CounterfactualGenerator(model, layout)
    out = gen.generate(prompts, null_prompts=nulls, prior_codes=codes, edit_mask=mask, seeds=[0, 1],
                       options=DecodeOptions(cfg_image=3.0))
    out.codes  # (B, h, w); out.text_ids: list of token-id lists

How: every structural token of the image block (``<boi> h*w <img>``, ``<eol>``, ``<eof> <eoi>``) and every
code outside the edit mask is *appended*, never sampled; a run of such tokens is fed in ONE forward, so
the cost follows the number of sampled codes. Only codes are sampled inside the grid (logits sliced to
the code range), so the block is well formed even for an untrained model. With CFG the unconditional
prompts are extra rows of the same batch (2B rows, one forward per step), not a second serial forward; with
three-branch guidance the prior without the prompt adds B more rows to that forward.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from progemu.errors import SequenceTooLongError
from progemu.generation.sampling import SamplingOptions, cfg_combine, make_generators, select_tokens
from progemu.generation.stream import TokenStream
from progemu.vocab import VocabLayout


@dataclass
class DecodeOptions:
    """Decoding knobs; scales of 1.0 switch CFG off for that phase (and cfg_prior 1.0 too, with three branches)."""

    image: SamplingOptions = field(default_factory=SamplingOptions)
    text: SamplingOptions = field(default_factory=lambda: SamplingOptions(greedy=True))
    cfg_image: float = 1.0
    cfg_text: float = 1.0
    max_text_tokens: int = 128
    use_cache: bool = True
    # "filled" (kv_cache.FilledCache) preallocates and attends over the filled part only; "static" is transformers'
    # StaticCache (attends over all max_length slots); "graph" is that cache with each one-token step replayed from a
    # CUDA graph (generation/graphs.py; eager on CPUs); "dynamic" concatenates the whole cache every step
    cache: str = "filled"
    # skip the left padding the unconditional rows share when attending (generation/attention.py); same results
    trim_padding: bool = True
    # three-branch image guidance only (``prior_null_prompts`` given): the scale of the prior-without-prompt branch
    # over the unconditional one, cfg_image then scaling the prompt over the prior (InstructPix2Pix's image / text
    # scales)
    cfg_prior: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DecodeOutput:
    codes: torch.Tensor | None  # (B, h, w) generated codes, None when no image was asked for
    text_ids: list[list[int]]  # per item, without the final eos
    image_ids: torch.Tensor | None  # (B, image_length) the full image block
    forwards: int = 0
    tokens_fed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


class CounterfactualGenerator:
    """Batched constrained decoding for a causal LM whose vocabulary follows ``layout``."""

    def __init__(self, model: torch.nn.Module, layout: VocabLayout, options: DecodeOptions | None = None):
        self.model = model.eval()
        self.layout = layout
        self.options = options or DecodeOptions()
        lay = layout
        banned = set(lay.structural_ids) | {lay.pad_id, lay.bos_id}
        allowed = torch.zeros(lay.vocab_size, dtype=torch.bool)
        allowed[: lay.text_id_end] = True
        allowed[sorted(banned)] = False
        self._text_allowed = allowed  # (V,) text the interpretation may use (eos included)

    def _context_limit(self) -> int | None:
        cfg = self.model.config
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        return getattr(cfg, "max_position_embeddings", None)

    @staticmethod
    def _scores(stream: TokenStream, lo: int, hi: int, who: torch.Tensor, offsets: tuple[int, ...], scale: float,
                prior_scale: float = 1.0) -> torch.Tensor:
        """(len(who), hi - lo) guided log-probs over ids [lo, hi) for the items ``who``. ``offsets``: where the
        other branches' rows start: () no CFG, (u,) null rows at u + i, (p, u) prior-without-prompt rows at p + i
        and unconditional rows at u + i (three-branch)."""
        rows = stream.logits(lo, hi, torch.cat([who, *(who + k for k in offsets)]))  # one head call for all
        parts = rows.split(who.shape[0])
        if len(offsets) < 2:
            return cfg_combine(parts[0], parts[1] if offsets else None, scale if offsets else 1.0)
        return cfg_combine(parts[0], parts[2], scale, prior=parts[1], prior_scale=prior_scale)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], *, null_prompts: list[list[int]] | None = None,
                 prior_null_prompts: list[list[int]] | None = None, prior_codes: torch.Tensor | None = None,
                 edit_mask: torch.Tensor | None = None, seeds: list[int] | None = None,
                 generate_image: bool = True, options: DecodeOptions | None = None) -> DecodeOutput:
        """Decode one image block (unless ``generate_image`` is False) then text for every prompt.

        ``prompts`` end right before the generated ``<boi>``, or after its header ``<boi> h*w <img>`` (as
        `ProgEmuProcessor.build_generation_prompt` writes them), or before the text when no image is made;
        ``null_prompts`` are the unconditional prompts for CFG; with ``prior_null_prompts`` as well (the prior
        without the prompt) the image codes get three-branch guidance (`cfg_combine`), the text plain CFG;
        ``edit_mask`` (B, h, w) is True where codes are sampled, elsewhere ``prior_codes`` (B, h, w) are copied.
        """
        opts = options or self.options
        lay, b = self.layout, len(prompts)
        seeds = list(range(b)) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != b or any(x is not None and len(x) != b for x in (null_prompts, prior_null_prompts)):
            raise ValueError("prompts, null_prompts, prior_null_prompts and seeds must have one entry per item")
        if prior_null_prompts is not None and null_prompts is None:
            raise ValueError("three-branch guidance needs null_prompts as well as prior_null_prompts")
        others = [*(null_prompts or []), *(prior_null_prompts or [])]
        start = self._header_in_prompts(prompts, others) if generate_image else 0
        img_len = lay.image_length - start if generate_image else 0
        total = max(map(len, prompts)) + img_len + opts.max_text_tokens
        limit = self._context_limit()
        if limit is not None and total > limit:
            raise SequenceTooLongError(total, limit, "prompt + generated image + text")
        scale_img = opts.cfg_image if generate_image else 1.0
        scale_txt = opts.cfg_text if opts.max_text_tokens > 0 else 1.0
        three = prior_null_prompts is not None and generate_image and (scale_img != 1.0 or opts.cfg_prior != 1.0)
        cfg_rows = null_prompts is not None and (scale_img != 1.0 or scale_txt != 1.0 or three)
        # row blocks: conditional | prior without prompt | unconditional (the two long ones first: one trimmed block)
        rows = list(prompts) + (list(prior_null_prompts) if three else []) + (list(null_prompts) if cfg_rows else [])
        t0 = time.perf_counter()
        stream = TokenStream(self.model, rows, lay.pad_id, use_cache=opts.use_cache, cache=opts.cache,
                             max_length=max(map(len, rows)) + img_len + opts.max_text_tokens,
                             trim_padding=opts.trim_padding)
        device = stream.device
        gens = make_generators(seeds, device)
        seconds = {"prefill": time.perf_counter() - t0}
        reps = 3 if three else 2 if cfg_rows else 1
        pending: list[torch.Tensor] = []  # (B,) columns appended but not yet fed
        codes = image_ids = None
        if generate_image:
            t1 = time.perf_counter()
            image_ids = self._image_phase(stream, pending, gens, b, reps, scale_img, prior_codes, edit_mask, opts,
                                          start)
            codes = lay.ids_to_codes(image_ids)
            seconds["image"] = time.perf_counter() - t1
        text_ids: list[list[int]] = [[] for _ in range(b)]
        if opts.max_text_tokens > 0:
            t2 = time.perf_counter()
            if pending:
                stream.feed(torch.stack(pending, 1).repeat(reps, 1))
            if cfg_rows and scale_txt == 1.0:  # the null rows have done their job
                stream.select_rows(torch.arange(b))
            elif three:  # the text is guided against the unconditional rows alone
                stream.select_rows(torch.cat([torch.arange(b), torch.arange(2 * b, 3 * b)]))
            # where the unconditional rows are now (a static cache keeps every row: select_rows is a no-op there)
            null_at = () if not cfg_rows or scale_txt == 1.0 else (stream.rows - b,)
            text_ids = self._text_phase(stream, gens, b, scale_txt, null_at, opts)
            seconds["text"] = time.perf_counter() - t2
        seconds["total"] = time.perf_counter() - t0
        return DecodeOutput(codes=codes, text_ids=text_ids, image_ids=image_ids, forwards=stream.forwards,
                            tokens_fed=stream.tokens_fed, seconds=seconds)

    def _header_in_prompts(self, prompts: list[list[int]], null_prompts: list[list[int]] | None) -> int:
        """How many tokens of the image block the prompts already hold: 0, or the header's length."""
        n = self.layout.header_length
        header = self.layout.block_template()[:n].tolist()
        ends = {list(p[-n:]) == header for p in list(prompts) + list(null_prompts or [])}
        if len(ends) > 1:
            raise ValueError("either every prompt (and null prompt) ends with the image header <boi> h*w <img> "
                             "or none does")
        return n if ends.pop() else 0

    def _plan(self, b: int, prior_codes: torch.Tensor | None, edit_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, image_length) ids to append, -1 where the item samples a code (on the CPU: it drives the loop)."""
        lay = self.layout
        plan = lay.block_template().expand(b, -1).clone()
        if edit_mask is not None:
            if prior_codes is None:
                raise ValueError("an edit mask needs the prior's codes")
            keep = ~torch.as_tensor(edit_mask, dtype=torch.bool).cpu().reshape(b, -1)  # (B, h*w)
            prior_ids = lay.codes_to_ids(torch.as_tensor(prior_codes).cpu())  # (B, image_length), validates codes
            offs = lay.code_offsets().flatten()
            plan[:, offs] = torch.where(keep, prior_ids[:, offs], torch.full_like(prior_ids[:, offs], -1))
        return plan

    def _image_phase(self, stream: TokenStream, pending: list[torch.Tensor], gens: list[torch.Generator], b: int,
                     reps: int, scale: float, prior_codes: torch.Tensor | None, edit_mask: torch.Tensor | None,
                     opts: DecodeOptions, start: int) -> torch.Tensor:
        lay = self.layout
        plan = self._plan(b, prior_codes, edit_mask)  # (B, T) on CPU
        header, plan = plan[:, :start], plan[:, start:]  # a header already in the prompt is not appended again
        samplers = (plan < 0).any(0).tolist()  # (T,) does anyone sample here
        chosen = plan.to(stream.device)  # (B, T)
        lo, hi = lay.image_token_offset, lay.image_token_offset + lay.codebook_size
        # where the other branches' rows start; null rows kept for the text alone (image scale 1) need no code logits
        offsets = () if reps == 2 and scale == 1.0 else tuple(k * b for k in range(1, reps))
        for t, anyone in enumerate(samplers):
            if anyone:
                if pending:  # one forward for the whole run of appended tokens
                    stream.feed(torch.stack(pending, 1).repeat(reps, 1))
                    pending.clear()
                who_cpu = (plan[:, t] < 0).nonzero().flatten()
                who = who_cpu.to(stream.device)
                scores = self._scores(stream, lo, hi, who, offsets, scale, opts.cfg_prior)  # (n, K): codes only
                tok = select_tokens(scores, opts.image, [gens[i] for i in who_cpu.tolist()])
                chosen[who, t] = tok + lo
            pending.append(chosen[:, t])
        return torch.cat([header.to(stream.device), chosen], 1)  # (B, image_length)

    def _text_phase(self, stream: TokenStream, gens: list[torch.Generator], b: int, scale: float,
                    null_at: tuple[int, ...], opts: DecodeOptions) -> list[list[int]]:
        lay = self.layout
        n_text = lay.text_id_end  # the text range only: codes are never text
        allowed = self._text_allowed[:n_text].to(stream.device)
        who = torch.arange(b, device=stream.device)
        done = torch.zeros(b, dtype=torch.bool, device=stream.device)
        out = []
        for step in range(opts.max_text_tokens):
            scores = self._scores(stream, 0, n_text, who, null_at, scale)  # (B, text vocab)
            scores[:, ~allowed] = float("-inf")  # after CFG: -inf - -inf would be nan
            tok = select_tokens(scores, opts.text, gens)
            tok = torch.where(done, torch.full_like(tok, lay.eos_id), tok)
            out.append(tok)
            done |= tok == lay.eos_id
            if step == opts.max_text_tokens - 1 or bool(done.all()):
                break
            stream.feed(tok[:, None].repeat(stream.rows // b, 1))
        table = torch.stack(out, 1).tolist() if out else [[] for _ in range(b)]
        return [row[: row.index(lay.eos_id)] if lay.eos_id in row else row for row in table]
