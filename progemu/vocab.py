"""The one vocabulary layout: text ids, special tokens and the contiguous image-code range.

An image is laid out as in Emu3 / ProgEmu::

    <boi> h*w <img> row_1 <eol> ... row_h <eol> <eof> <eoi>

where ``h*w`` is the text of the grid size (tokenised once by the text tokenizer) and every code ``c``
of the grid becomes the id ``image_token_offset + c``. Nobody else derives offsets: the processor, the
data collator, the loss mask and the generation constraint all ask this class.

Two layouts share this class:

- progemu's own: ``[0, text_vocab_size)`` text (special tokens included), then the codebook.
- Emu3's (Emu3-Gen, ProgEmu's published weights): the codes are ``<|visual token NNNNNN|>`` tokens inside the
  text vocabulary (``image_token_start`` says where code 0 sits) and the structural tokens are Emu3's
  (``<|image start|>``, ``<|image token|>``, ``<|extra_200|>``, ``<|extra_201|>``, ``<|image end|>``); see
  `progemu.tokenization.emu3_layout`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from progemu.errors import LayoutError

SPECIAL_TOKENS: dict[str, str] = {
    "bos": "<|bos|>",
    "eos": "<|eos|>",
    "pad": "<|pad|>",
    "boi": "<|boi|>",  # begin of image
    "img": "<|img|>",  # closes the size marker "h*w"
    "eol": "<|eol|>",  # end of a grid row
    "eof": "<|eof|>",  # end of frame
    "eoi": "<|eoi|>",  # end of image
}


@dataclass
class VocabLayout:
    """Token-id layout of one model: text ids (special tokens included) and ``codebook_size`` code ids.

    ``image_token_start`` None (progemu's layout): the codes follow the text, ``[text_vocab_size,
    text_vocab_size + codebook_size)``. An int (Emu3's layout): the codes are ``[image_token_start,
    image_token_start + codebook_size)`` inside the text vocabulary; generated text is then drawn from the ids
    below ``image_token_start`` (`text_id_end`).
    """

    text_vocab_size: int
    codebook_size: int
    grid_h: int
    grid_w: int
    special_ids: dict[str, int]
    size_marker_ids: list[int] = field(default_factory=list)
    image_token_start: int | None = None

    def __post_init__(self) -> None:
        missing = [k for k in SPECIAL_TOKENS if k not in self.special_ids]
        if missing:
            raise LayoutError(f"vocabulary layout lacks special tokens: {missing}")
        bad = {k: v for k, v in self.special_ids.items() if not 0 <= v < self.text_vocab_size}
        if bad:
            raise LayoutError(f"special token ids outside the text range [0, {self.text_vocab_size}): {bad}")
        if self.grid_h < 1 or self.grid_w < 1 or self.codebook_size < 1:
            raise LayoutError(f"invalid grid {self.grid_h}x{self.grid_w} or codebook {self.codebook_size}")
        if self.image_token_start is not None:
            self.image_token_start = int(self.image_token_start)
            lo, hi = self.image_token_start, self.image_token_start + self.codebook_size
            if lo < 0:
                raise LayoutError(f"image_token_start {lo} is negative")
            inside = {k: v for k, v in self.special_ids.items() if lo <= v < hi}
            if inside:
                raise LayoutError(f"special tokens inside the image-code range [{lo}, {hi}): {inside}")
        self.size_marker_ids = [int(i) for i in self.size_marker_ids]
        self._template = self._build_template()

    # ---- ids -----------------------------------------------------------------------------------------
    @property
    def image_token_offset(self) -> int:
        """The id of code 0."""
        return self.text_vocab_size if self.image_token_start is None else self.image_token_start

    @property
    def vocab_size(self) -> int:
        """Rows the embedding matrix and the LM head need."""
        return max(self.text_vocab_size, self.image_token_offset + self.codebook_size)

    @property
    def text_id_end(self) -> int:
        """Generated text is drawn from ``[0, text_id_end)``: every text id of progemu's layout, the ids below the
        visual tokens in Emu3's (which end its vocabulary)."""
        return min(self.text_vocab_size, self.image_token_offset)

    def __getattr__(self, name: str) -> int:
        # bos_id, eos_id, pad_id, boi_id, img_id, eol_id, eof_id, eoi_id
        if name.endswith("_id") and "special_ids" in self.__dict__ and name[:-3] in self.__dict__["special_ids"]:
            return self.__dict__["special_ids"][name[:-3]]
        raise AttributeError(name)

    @property
    def structural_ids(self) -> list[int]:
        return [self.special_ids[k] for k in ("boi", "img", "eol", "eof", "eoi")]

    # ---- the image block -----------------------------------------------------------------------------
    def _build_template(self) -> torch.Tensor:
        """The image block with -1 where a code goes: (image_length,)."""
        row = [-1] * self.grid_w + [self.special_ids["eol"]]
        ids = [self.special_ids["boi"], *self.size_marker_ids, self.special_ids["img"]]
        ids += row * self.grid_h
        ids += [self.special_ids["eof"], self.special_ids["eoi"]]
        return torch.tensor(ids, dtype=torch.long)

    @property
    def image_length(self) -> int:
        """Tokens of one image block, ``<boi>`` to ``<eoi>`` inclusive."""
        return int(self._template.numel())

    @property
    def header_length(self) -> int:
        """Tokens before the first code: ``<boi> h*w <img>``."""
        return len(self.size_marker_ids) + 2

    def block_template(self) -> torch.Tensor:
        """(image_length,) ids of the block with -1 at every code position (a copy)."""
        return self._template.clone()

    def code_offsets(self) -> torch.Tensor:
        """(h, w) offsets of the code positions inside an image block."""
        return (self._template == -1).nonzero().flatten().view(self.grid_h, self.grid_w)

    def forced_token(self, offset: int) -> int | None:
        """The structural id the layout puts at ``offset`` of a block, or None where a code is sampled."""
        tok = int(self._template[offset])
        return None if tok < 0 else tok

    # ---- conversions ---------------------------------------------------------------------------------
    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., h, w) integer codes -> (..., image_length) token ids of the full image block."""
        codes = torch.as_tensor(codes)
        if codes.shape[-2:] != (self.grid_h, self.grid_w):
            raise LayoutError(f"code grid {tuple(codes.shape[-2:])} does not match the layout's "
                              f"{self.grid_h}x{self.grid_w}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise LayoutError(f"codes outside [0, {self.codebook_size}): min {int(codes.min())}, max {int(codes.max())}")
        lead = codes.shape[:-2]
        ids = self._template.to(codes.device).expand(*lead, -1).clone()
        ids[..., self.code_offsets().flatten().to(codes.device)] = codes.reshape(*lead, -1).long() + self.image_token_offset
        return ids

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., image_length) block ids -> (..., h, w) codes; a LayoutError says what is malformed and where."""
        ids = torch.as_tensor(ids).long()
        if ids.shape[-1] != self.image_length:
            raise LayoutError(f"image block has {ids.shape[-1]} tokens, the layout expects {self.image_length}")
        tmpl = self._template.to(ids.device)
        fixed = tmpl >= 0
        wrong = (ids[..., fixed] != tmpl[fixed])
        if wrong.any():
            where = fixed.nonzero().flatten()[wrong.reshape(-1, int(fixed.sum())).any(0)][0].item()
            raise LayoutError(f"image block: expected structural token {int(tmpl[where])} at offset {where}, "
                              f"found {int(ids.reshape(-1, ids.shape[-1])[:, where][0])}")
        codes = ids[..., ~fixed] - self.image_token_offset
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            bad = ((codes < 0) | (codes >= self.codebook_size)).reshape(-1, codes.shape[-1]).any(0).nonzero()[0].item()
            raise LayoutError(f"image block: code position {bad} (row {bad // self.grid_w}, col {bad % self.grid_w}) "
                              "holds a non-image token")
        return codes.reshape(*ids.shape[:-1], self.grid_h, self.grid_w)

    def is_image_code(self, ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask of ids in the image-code range."""
        return (ids >= self.image_token_offset) & (ids < self.image_token_offset + self.codebook_size)

    def is_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask of ids that are text (not codes, not structural image tokens, not pad)."""
        struct = torch.tensor(self.structural_ids + [self.special_ids["pad"]], device=ids.device)
        return (ids < self.text_vocab_size) & ~self.is_image_code(ids) & ~torch.isin(ids, struct)

    def find_images(self, ids: torch.Tensor) -> list[tuple[int, int]]:
        """(start, end) positions (end exclusive) of every ``<boi> ... <eoi>`` block of a 1-D sequence."""
        ids = torch.as_tensor(ids).flatten()
        starts = (ids == self.special_ids["boi"]).nonzero().flatten().tolist()
        return [(s, s + self.image_length) for s in starts]

    # ---- (de)serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["image_token_start"] is None:  # progemu's layout: the same dict as folders saved before Emu3's existed
            del d["image_token_start"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VocabLayout:
        return cls(**{k: d[k] for k in ("text_vocab_size", "codebook_size", "grid_h", "grid_w", "special_ids",
                                         "size_marker_ids", "image_token_start") if k in d})
