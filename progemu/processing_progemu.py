"""`ProgEmuProcessor`: text tokenizer + image ingestion -> the token layout, prompts, parsing.

It carries no network: the image tokenizer belongs to the model (``model.vqmodel``, saved in the model folder's
``vq/``); `progemu.image_codes` turns image files into codes and back through it with this processor's ingestion.

Sequences (``sequence_order="prompt_prior"``, the default; ``"prior_prompt"`` swaps the two conditions):

| task | sequence | prompt slot / text slot |
| --- | --- | --- |
| ``icg`` | ``<bos> prompt IMG(prior) IMG(target) interpretation <eos>`` | progression prompt / interpretation |
| ``edit`` | ``<bos> instruction IMG(prior) IMG(target) [interpretation] <eos>`` | instruction / optional text |
| ``report2image`` | ``<bos> report IMG(target) <eos>`` | report / none |
| ``image2report`` | ``<bos> IMG(prior) report <eos>`` | none / report (the image goes in ``prior_codes``) |

``IMG(x)`` is the layout's block ``<boi> h*w <img> row_1 <eol> ... row_h <eol> <eof> <eoi>``. Inputs a task
does not use (the prior of ``report2image``, the text of ``report2image``, the prompt of ``image2report``)
are ignored.

Training examples (labels, loss weights, dropout, augmentation, the collator) are built in ``train/examples.py``
from these pieces.

    proc = ProgEmuProcessor.from_pretrained("runs/finetune-tiny/final")
    prompt_ids = proc.build_generation_prompt("icg", prior_codes=p, prompt="...")
    codes, text = proc.parse_generation(generated_ids_after_the_prompt)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, ProcessorMixin

from progemu.errors import LayoutError, SequenceTooLongError
from progemu.tokenization import layout_for_tokenizer
from progemu.vocab import VocabLayout

TASKS = ("icg", "edit", "report2image", "image2report")
IMAGE_TASKS = ("icg", "edit", "report2image")  # tasks whose output starts with an image
# training options that processor folders saved by earlier versions hold; the run config owns them now
_LEGACY_TRAINING_KEYS = ("mask_mode", "image_loss_weight", "text_loss_weight")


class ProgEmuProcessor(ProcessorMixin):
    """Builds every token sequence the model sees or writes, through one `VocabLayout`.

    Args:
        tokenizer: the text tokenizer holding `progemu.vocab.SPECIAL_TOKENS`.
        vocab_layout: `VocabLayout.to_dict()`; or give ``codebook_size``, ``grid_h``, ``grid_w``.
        sequence_order: ``"prompt_prior"`` or ``"prior_prompt"`` (see `ProgEmuConfig`).
        max_length: the model's context; longer sequences raise `SequenceTooLongError`.
        ingest_options: `progemu.data.ingest.IngestOptions` fields (how image files are read).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_layout: dict | None = None,
                 codebook_size: int | None = None, grid_h: int | None = None, grid_w: int | None = None,
                 sequence_order: str = "prompt_prior", max_length: int | None = None,
                 ingest_options: dict | None = None, **kwargs: Any):
        for key in _LEGACY_TRAINING_KEYS:  # read from older folders, not kept: training takes them from its config
            kwargs.pop(key, None)
        if vocab_layout is None:
            if None in (codebook_size, grid_h, grid_w):
                raise LayoutError("ProgEmuProcessor needs vocab_layout, or codebook_size, grid_h and grid_w")
            vocab_layout = layout_for_tokenizer(tokenizer, codebook_size, grid_h, grid_w).to_dict()
        self._layout = VocabLayout.from_dict(vocab_layout)
        self.vocab_layout = self._layout.to_dict()
        self._check_tokenizer(tokenizer)
        if sequence_order not in ("prompt_prior", "prior_prompt"):
            raise ValueError(f"sequence_order must be 'prompt_prior' or 'prior_prompt', got {sequence_order!r}")
        self.sequence_order, self.max_length = sequence_order, max_length
        self.ingest_options = dict(ingest_options or {})
        super().__init__(tokenizer, **kwargs)

    def _check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        for name, tid in self._layout.special_ids.items():
            if tokenizer.convert_ids_to_tokens(tid) is None or tokenizer.convert_tokens_to_ids(
                    tokenizer.convert_ids_to_tokens(tid)) != tid or tid >= len(tokenizer):
                raise LayoutError(f"the layout's {name!r} id {tid} is not a token of this tokenizer")
        if len(tokenizer) > self._layout.text_vocab_size:
            raise LayoutError(f"tokenizer has {len(tokenizer)} tokens but the layout's text range ends at "
                              f"{self._layout.text_vocab_size}: its ids would collide with image codes")

    @property
    def layout(self) -> VocabLayout:
        return self._layout

    # ---- pieces ------------------------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        """Text -> ids without special tokens ('' -> []). A special token's spelling inside the text (say
        "<|boi|>" in a user's prompt) is tokenised as plain text, so no text can forge image structure."""
        text = (text or "").strip()
        return list(self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)) if text else []

    def image_ids(self, codes: Any) -> list[int]:
        """A code grid ((h, w) or flat h*w, row-major) -> the ids of its full image block."""
        codes = torch.as_tensor(np.asarray(codes) if not torch.is_tensor(codes) else codes).long()
        if codes.ndim == 1:
            if codes.numel() != self.layout.grid_h * self.layout.grid_w:
                raise LayoutError(f"flat code list has {codes.numel()} codes, the layout's grid needs "
                                  f"{self.layout.grid_h}x{self.layout.grid_w}")
            codes = codes.view(self.layout.grid_h, self.layout.grid_w)
        return self.layout.codes_to_ids(codes).tolist()

    def segments(self, prior: list[int], prompt: list[int], target: list[int], text: list[int],
                 with_condition: bool = True) -> list[tuple[str, list[int]]]:
        """The (role, ids) segments of a sequence in this processor's order, empty ones left out: ``bos``,
        ``prompt`` and ``prior`` (the condition, in ``sequence_order``; none when ``with_condition`` is false),
        ``target_image``, ``target_text``, ``eos``. Training examples and generation prompts both use it."""
        lay = self.layout
        cond = [("prompt", prompt), ("prior", prior)] if with_condition else []
        if self.sequence_order == "prior_prompt":
            cond.reverse()
        segs = [("bos", [lay.bos_id]), *cond, ("target_image", target), ("target_text", text), ("eos", [lay.eos_id])]
        return [(role, ids) for role, ids in segs if ids]

    def check_length(self, n: int, what: str) -> None:
        """`SequenceTooLongError` when ``n`` tokens exceed ``max_length`` (``what`` names the sequence)."""
        if self.max_length is not None and n > self.max_length:
            raise SequenceTooLongError(n, self.max_length, what)

    @staticmethod
    def check_inputs(task: str, prior_codes: Any, target_codes: Any) -> None:
        """An error unless ``task`` is known and the images it needs are given."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
        if task in ("icg", "edit", "image2report") and prior_codes is None:
            raise LayoutError(f"task {task!r} needs prior_codes (the input image)")
        if task in ("icg", "edit", "report2image") and target_codes is None:
            raise LayoutError(f"task {task!r} needs target_codes")

    # ---- generation ----------------------------------------------------------------------------------------
    def build_generation_prompt(self, task: str = "icg", prior_codes: Any = None, prompt: str = "",
                                unconditional: bool = False) -> list[int]:
        """The ids the model continues from.

        For the image tasks (``icg``, ``edit``, ``report2image``) this is everything up to AND including the
        target image's header ``<boi> h*w <img>``: the next token to generate is the first code of row 1,
        and `parse_generation` expects the continuation from there. For ``image2report`` it is
        ``<bos> IMG(prior)``; the continuation is the report. ``unconditional=True`` drops the prior and the
        prompt (the CFG branch, as trained with ``cfg_dropout``): ``<bos> <boi> h*w <img>``.
        """
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
        if task in ("icg", "edit", "image2report") and prior_codes is None and not unconditional:
            raise LayoutError(f"task {task!r} needs prior_codes (the input image)")
        prior = self.image_ids(prior_codes) if prior_codes is not None and task != "report2image" else []
        prompt_ids = self.encode_text(prompt) if task != "image2report" else []
        segs = self.segments(prior, prompt_ids, [], [], not unconditional)[:-1]  # without <eos>
        ids = [i for _, seg in segs for i in seg]
        if task in IMAGE_TASKS:
            ids += self.layout.block_template()[: self.layout.header_length].tolist()
            need = len(ids) + self.layout.image_length - self.layout.header_length
        else:
            need = len(ids) + 1
        self.check_length(need, f"{task} generation prompt plus the image it must generate")
        return ids

    def parse_generation(self, ids: Any, task: str = "icg") -> tuple[torch.Tensor | None, str]:
        """Generated continuation -> ``(codes (h, w) long or None, text)``.

        ``ids`` follow a `build_generation_prompt` prompt: for image tasks, the image body (codes of row 1
        ... ``<eol> <eof> <eoi>``; a leading full header ``<boi> h*w <img>`` is also accepted), then text up
        to ``<eos>`` (optional: generation may stop at a length limit) and padding. Raises `LayoutError`
        saying what is malformed and where.
        """
        lay = self.layout
        ids = [int(i) for i in (ids.tolist() if torch.is_tensor(ids) else ids)]
        codes = None
        if task in IMAGE_TASKS:
            header = lay.block_template()[: lay.header_length].tolist()
            if ids[:1] == [lay.boi_id]:
                ids = ids[lay.header_length:] if ids[: lay.header_length] == header else ids
                if ids[:1] == [lay.boi_id]:
                    raise LayoutError(f"generated image header {ids[:lay.header_length]} differs from the layout's "
                                      f"{header}")
            body = lay.image_length - lay.header_length
            if len(ids) < body:
                raise LayoutError(f"generated output ends inside the image after {len(ids)} tokens; a "
                                  f"{lay.grid_h}x{lay.grid_w} image needs {body} (rows of {lay.grid_w} codes + "
                                  "<eol>, then <eof> <eoi>)")
            try:
                codes = lay.ids_to_codes(torch.tensor(header + ids[:body]))
            except LayoutError as err:
                raise LayoutError(f"generated image is malformed: {err} (offsets count from <boi>; "
                                  f"{lay.header_length} header tokens, rows of {lay.grid_w + 1})") from err
            ids = ids[body:]
        elif task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
        if lay.eos_id in ids:
            ids = ids[: ids.index(lay.eos_id)]
        ids = [i for i in ids if i != lay.pad_id]
        struct = set(lay.structural_ids) | {lay.bos_id}
        bad = [k for k, i in enumerate(ids) if i >= lay.text_id_end or i in struct]
        if bad:
            raise LayoutError(f"generated text holds a non-text token {ids[bad[0]]} at text position {bad[0]}")
        return codes, self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ---- image ingestion ---------------------------------------------------------------------------------------
    def get_ingest_options(self, downsample_factor: int | None = None) -> Any:
        """How image files are read (`progemu.data.ingest.IngestOptions`). A processor saved without a size (older
        training runs) reads at the size whose code grid is the layout's, given the image tokenizer's
        ``downsample_factor``; not at IngestOptions' default, which would give the tokenizer a different grid."""
        from progemu.data.ingest import IngestOptions

        opts = {k: tuple(v) if isinstance(v, list) else v for k, v in self.ingest_options.items()}
        lay = self.layout
        if "size" not in opts and downsample_factor is not None and lay.grid_h == lay.grid_w:
            opts["size"] = lay.grid_h * int(downsample_factor)
        return IngestOptions(**opts)

    # ---- config, saving, loading ----------------------------------------------------------------------------
    def model_config(self, preset: str = "tiny", image_tokenizer: Any = None, **overrides: Any) -> Any:
        """A `ProgEmuConfig` of ``preset`` matching this processor (layout, order) and ``image_tokenizer``'s config
        (progemu's VQ; the model then owns that tokenizer, `ProgEmuForCausalLM.set_image_tokenizer`)."""
        from progemu.configuration_progemu import ProgEmuConfig

        overrides.setdefault("sequence_order", self.sequence_order)
        vq_config = getattr(image_tokenizer, "config", None)
        vq_config = vq_config if getattr(vq_config, "model_type", None) == "progemu_vq" else None
        return ProgEmuConfig.from_preset(preset, layout=self.layout, vq_config=vq_config, **overrides)

    def check_model_config(self, config: Any) -> None:
        """LayoutError unless ``config`` (a `ProgEmuConfig`) has this processor's layout and order; a processor
        without ``max_length`` adopts the model's context."""
        if config.vocab_layout != self.vocab_layout:
            raise LayoutError("the model's vocab_layout differs from the processor's: they were not built together")
        if config.sequence_order != self.sequence_order:
            raise LayoutError(f"model sequence_order {config.sequence_order!r} != processor's {self.sequence_order!r}")
        if self.max_length is None:
            self.max_length = int(config.max_position_embeddings)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("_layout", None)
        return out

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> ProgEmuProcessor:
        """Load a folder written by `save_pretrained`. A ``vq/`` in it belongs to the model
        (`ProgEmuForCausalLM.from_pretrained` loads it), not to the processor."""
        for gone in ("vq_model", "load_vq"):
            if gone in kwargs:
                raise TypeError(f"ProgEmuProcessor.from_pretrained: {gone!r} is gone: the processor carries no network; "
                                "the model owns its image tokenizer (ProgEmuForCausalLM.from_pretrained loads vq/, "
                                "set_image_tokenizer replaces it; progemu.image_codes encodes and decodes)")
        return super().from_pretrained(str(pretrained_model_name_or_path), **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in ("encode_images", "decode_codes"):  # moved with the network: say where to
            raise AttributeError(f"ProgEmuProcessor.{name} moved: use progemu.image_codes.{name}(model, "
                                 f"{'processor, images' if name == 'encode_images' else 'codes'}) (the model owns "
                                 "its image tokenizer)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


__all__ = ["IMAGE_TASKS", "TASKS", "ProgEmuProcessor"]
