"""`ProgEmuProcessor`: text tokenizer + image ingestion + VQ tokenizer -> token sequences, labels, prompts.

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

    proc = ProgEmuProcessor.from_pretrained("runs/finetune-tiny/final")
    ex = proc.build_example("icg", prior_codes=p, target_codes=t, prompt="...", text="...")
    prompt_ids = proc.build_generation_prompt("icg", prior_codes=p, prompt="...")
    codes, text = proc.parse_generation(generated_ids_after_the_prompt)
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, PreTrainedTokenizerBase, ProcessorMixin

from progemu.errors import LayoutError, SequenceTooLongError
from progemu.tokenization import layout_for_tokenizer
from progemu.vocab import VocabLayout

IGNORE_INDEX = -100
TASKS = ("icg", "edit", "report2image", "image2report")
IMAGE_TASKS = ("icg", "edit", "report2image")  # tasks whose output starts with an image
MASK_MODES: dict[str, frozenset[str]] = {  # which segments carry labels
    "target": frozenset({"target_image", "target_text", "eos"}),
    "image": frozenset({"target_image"}),
    "text": frozenset({"target_text", "eos"}),
    "all": frozenset({"prompt", "prior", "target_image", "target_text", "eos"}),
}
_IMAGE_ROLES = frozenset({"prior", "target_image"})
_SENTENCE = re.compile(r"(?<=[.!?;])\s+")
# A sentence that states an absence or a resolution ("No pneumothorax.", "The effusion has resolved.").
_NEGATIVE = re.compile(r"\b(no|not|without|negative|resolved|absent|free of|unremarkable|clear)\b", re.IGNORECASE)


def augment_prompt(prompt: str, rng: random.Random, p: float) -> str:
    """ProgEmu's prompt augmentation: with probability ``p`` shuffle the sentences, and (independently, with
    probability ``p``) drop one negative sentence. A one-sentence prompt is returned unchanged."""
    sents = [s for s in _SENTENCE.split(prompt.strip()) if s]
    if len(sents) < 2 or p <= 0:
        return prompt
    if rng.random() < p:
        rng.shuffle(sents)
    negative = [i for i, s in enumerate(sents) if _NEGATIVE.search(s)]
    if negative and rng.random() < p:
        del sents[rng.choice(negative)]
    return " ".join(sents)


class ProgEmuProcessor(ProcessorMixin):
    """Builds every token sequence the model sees or writes, through one `VocabLayout`.

    Args:
        tokenizer: the text tokenizer holding `progemu.vocab.SPECIAL_TOKENS`.
        vocab_layout: `VocabLayout.to_dict()`; or give ``codebook_size``, ``grid_h``, ``grid_w``.
        sequence_order: ``"prompt_prior"`` or ``"prior_prompt"`` (see `ProgEmuConfig`).
        max_length: the model's context; longer sequences raise `SequenceTooLongError`.
        ingest_options: `progemu.data.ingest.IngestOptions` fields (how image files are read).
        image_loss_weight, text_loss_weight: the per-token ``loss_weights`` of labelled tokens.
        mask_mode: default loss mask (``target``, ``image``, ``text``, ``all``).
        vq_model: an optional `ProgEmuVQModel` (needed only to turn pixels into codes and back).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_layout: dict | None = None,
                 codebook_size: int | None = None, grid_h: int | None = None, grid_w: int | None = None,
                 sequence_order: str = "prompt_prior", max_length: int | None = None,
                 ingest_options: dict | None = None, image_loss_weight: float = 1.0, text_loss_weight: float = 1.0,
                 mask_mode: str = "target", vq_model: Any = None, **kwargs: Any):
        if vocab_layout is None:
            if None in (codebook_size, grid_h, grid_w):
                raise LayoutError("ProgEmuProcessor needs vocab_layout, or codebook_size, grid_h and grid_w")
            vocab_layout = layout_for_tokenizer(tokenizer, codebook_size, grid_h, grid_w).to_dict()
        self._layout = VocabLayout.from_dict(vocab_layout)
        self.vocab_layout = self._layout.to_dict()
        self._check_tokenizer(tokenizer)
        if sequence_order not in ("prompt_prior", "prior_prompt"):
            raise ValueError(f"sequence_order must be 'prompt_prior' or 'prior_prompt', got {sequence_order!r}")
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {sorted(MASK_MODES)}, got {mask_mode!r}")
        self.sequence_order, self.max_length, self.mask_mode = sequence_order, max_length, mask_mode
        self.image_loss_weight, self.text_loss_weight = float(image_loss_weight), float(text_loss_weight)
        self.ingest_options = dict(ingest_options or {})
        self.vq_model = vq_model
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

    def _segments(self, task: str, prior: list[int], prompt: list[int], target: list[int],
                  text: list[int], with_condition: bool) -> list[tuple[str, list[int]]]:
        lay = self.layout
        cond = [("prompt", prompt), ("prior", prior)] if with_condition else []
        if self.sequence_order == "prior_prompt":
            cond.reverse()
        segs = [("bos", [lay.bos_id]), *cond, ("target_image", target), ("target_text", text), ("eos", [lay.eos_id])]
        return [(role, ids) for role, ids in segs if ids]

    def _check_length(self, n: int, what: str) -> None:
        if self.max_length is not None and n > self.max_length:
            raise SequenceTooLongError(n, self.max_length, what)

    @staticmethod
    def _check_task(task: str, prior_codes: Any, target_codes: Any) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
        if task in ("icg", "edit", "image2report") and prior_codes is None:
            raise LayoutError(f"task {task!r} needs prior_codes (the input image)")
        if task in ("icg", "edit", "report2image") and target_codes is None:
            raise LayoutError(f"task {task!r} needs target_codes")

    # ---- training sequences --------------------------------------------------------------------------------
    def build_example(self, task: str, prior_codes: Any = None, target_codes: Any = None, prompt: str = "",
                      text: str = "", mask_mode: str | None = None, cfg_dropout: float = 0.0,
                      prompt_augment: float = 0.0, rng: random.Random | None = None,
                      changed_code_weight: float = 1.0, prompt_dropout: float = 0.0) -> dict[str, Any]:
        """One training sequence: ``{"input_ids", "labels", "loss_weights"}`` (python lists) + ``"task"``,
        ``"dropped_condition"``, ``"dropped_prompt"``.

        ``labels`` equal ``input_ids`` on the segments ``mask_mode`` supervises and -100 elsewhere (the model
        shifts). ``cfg_dropout``: probability of dropping the prior AND the prompt together (the unconditional
        branch of classifier-free guidance). ``prompt_dropout``: probability of dropping only the prompt of an
        icg / edit example and keeping the prior (InstructPix2Pix's text dropout: the ``"prior"`` CFG branch,
        which guides by the prompt alone), drawn when the condition is kept, so its rate is
        ``prompt_dropout * (1 - cfg_dropout)``. ``prompt_augment``: see `augment_prompt`.
        ``changed_code_weight``: loss weight (x the image weight) of the target codes that differ from the prior's
        code at the same cell (icg / edit): most target codes are copies, learnt early, and the few edited ones
        would otherwise carry a small share of the loss.
        """
        self._check_task(task, prior_codes, target_codes)
        mode = mask_mode or self.mask_mode
        if mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {sorted(MASK_MODES)}, got {mode!r}")
        rng = rng or random.Random()
        drop = cfg_dropout > 0 and rng.random() < cfg_dropout
        # drawn only when asked for, so runs without it see the same random stream as before
        drop_prompt = (not drop and prompt_dropout > 0 and task in ("icg", "edit")
                       and rng.random() < prompt_dropout)
        if drop_prompt:
            prompt = ""
        if prompt and prompt_augment > 0:
            prompt = augment_prompt(prompt, rng, prompt_augment)
        prior = self.image_ids(prior_codes) if prior_codes is not None and task != "report2image" else []
        target = self.image_ids(target_codes) if target_codes is not None and task != "image2report" else []
        prompt_ids = self.encode_text(prompt) if task != "image2report" else []
        text_ids = self.encode_text(text) if task != "report2image" else []
        segs = self._segments(task, prior, prompt_ids, target, text_ids, not drop)
        ids, labels, weights = [], [], []
        for role, seg in segs:
            on = role in MASK_MODES[mode]
            w = (self.image_loss_weight if role in _IMAGE_ROLES else self.text_loss_weight) if on else 0.0
            ids += seg
            labels += seg if on else [IGNORE_INDEX] * len(seg)
            # not when the condition is dropped (without the prior "changed" means nothing) nor the prompt (without
            # it the edit is not determined: its labels stay the true follow-up, but at plain weight)
            if (on and role == "target_image" and changed_code_weight != 1.0 and not drop and not drop_prompt
                    and len(prior) == len(seg)):
                weights += [w * changed_code_weight if t != p else w for t, p in zip(seg, prior, strict=True)]
            else:
                weights += [w] * len(seg)
        self._check_length(len(ids), f"{task} sequence")
        return {"input_ids": ids, "labels": labels, "loss_weights": weights, "task": task,
                "dropped_condition": drop, "dropped_prompt": drop_prompt}

    def build_from_row(self, row: dict[str, Any], task: str, rng: random.Random | None = None,
                       **kwargs: Any) -> dict[str, Any] | None:
        """`build_example` from a code-shard row (docs/architecture.md schema); None if the row lacks what
        ``task`` needs. ``report2image`` / ``image2report`` use the target image and report, else the prior's."""
        prior = list(row.get("prior_codes") or []) or None
        target = list(row.get("target_codes") or []) or None
        if task in ("icg", "edit"):
            prompt = row.get("prompt", "") if task == "icg" else row.get("instruction", "")
            if prior is None or target is None or not (prompt or "").strip():
                return None
            return self.build_example(task, prior, target, prompt=prompt, text=row.get("interpretation", ""),
                                      rng=rng, **kwargs)
        pairs = [(target, row.get("target_report", "")), (prior, row.get("prior_report", ""))]
        codes, report = next(((c, r) for c, r in pairs if c is not None and (r or "").strip()), (None, ""))
        if codes is None:
            return None
        if task == "report2image":
            return self.build_example(task, target_codes=codes, prompt=report, rng=rng, **kwargs)
        if task == "image2report":
            return self.build_example(task, prior_codes=codes, text=report, rng=rng, **kwargs)
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")

    def __call__(self, examples: dict | Sequence[dict], pad_to_multiple_of: int | None = None,
                 **build_kwargs: Any) -> BatchFeature:
        """Examples (dicts of `build_example` arguments) -> a padded batch of tensors."""
        examples = [examples] if isinstance(examples, dict) else list(examples)
        feats = [self.build_example(**{**build_kwargs, **ex}) for ex in examples]
        return BatchFeature(ProgEmuCollator(self.layout.pad_id, pad_to_multiple_of)(feats))

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
        segs = self._segments(task, prior, prompt_ids, [], [], not unconditional)[:-1]  # without <eos>
        ids = [i for _, seg in segs for i in seg]
        if task in IMAGE_TASKS:
            ids += self.layout.block_template()[: self.layout.header_length].tolist()
            need = len(ids) + self.layout.image_length - self.layout.header_length
        else:
            need = len(ids) + 1
        self._check_length(need, f"{task} generation prompt plus the image it must generate")
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
        bad = [k for k, i in enumerate(ids) if i >= lay.text_vocab_size or i in struct]
        if bad:
            raise LayoutError(f"generated text holds a non-text token {ids[bad[0]]} at text position {bad[0]}")
        return codes, self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ---- pixels <-> codes (needs the VQ) --------------------------------------------------------------------
    def get_ingest_options(self) -> Any:
        from progemu.data.ingest import IngestOptions

        opts = {k: tuple(v) if isinstance(v, list) else v for k, v in self.ingest_options.items()}
        lay = self.layout
        if "size" not in opts and self.vq_model is not None and lay.grid_h == lay.grid_w:
            # no size saved (older training runs): read images at the size whose code grid is the layout's,
            # not IngestOptions' default, which would give the VQ a different grid
            opts["size"] = lay.grid_h * int(self.vq_model.config.downsample_factor)
        return IngestOptions(**opts)

    def _need_vq(self) -> Any:
        if self.vq_model is None:
            raise LayoutError("this processor has no VQ model: load a folder with a vq/ subfolder or pass vq_model")
        return self.vq_model

    @torch.no_grad()
    def encode_images(self, images: Sequence[str | Path | np.ndarray] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Image files / [0, 1] arrays (H, W) / pixel_values (B, 1, H, W) in [-1, 1] -> codes (B, h, w)."""
        from progemu.data.ingest import load_image, to_pixel_values

        vq = self._need_vq()
        if torch.is_tensor(images) and images.ndim == 4:
            pixels = images
        else:
            opts = self.get_ingest_options()
            arrs = [load_image(x, opts) if isinstance(x, (str, Path)) else np.asarray(x, np.float32) for x in images]
            pixels = to_pixel_values(np.stack(arrs))  # (B, 1, H, W)
        param = next(vq.parameters())
        codes = vq.encode(pixels.to(param.device, param.dtype))
        if tuple(codes.shape[-2:]) != (self.layout.grid_h, self.layout.grid_w):
            raise LayoutError(f"images of {tuple(pixels.shape[-2:])} px give a {tuple(codes.shape[-2:])} code grid, "
                              f"the layout expects {self.layout.grid_h}x{self.layout.grid_w}")
        return codes.long().cpu()

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> np.ndarray:
        """Codes (B, h, w) -> float32 images (B, H, W) in [0, 1]."""
        from progemu.data.ingest import from_pixel_values

        vq = self._need_vq()
        pixels = vq.decode(torch.as_tensor(codes).long().to(next(vq.parameters()).device))
        out = from_pixel_values(pixels)
        return out[None] if out.ndim == 2 else out

    # ---- config, saving, loading ----------------------------------------------------------------------------
    def model_config(self, preset: str = "tiny", **overrides: Any) -> Any:
        """A `ProgEmuConfig` of ``preset`` matching this processor (layout, order, VQ config)."""
        from progemu.configuration_progemu import ProgEmuConfig

        overrides.setdefault("sequence_order", self.sequence_order)
        vq_config = self.vq_model.config if self.vq_model is not None else None
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
        vq = self.__dict__.pop("vq_model", None)  # a model, saved in vq/ rather than in JSON
        try:
            out = super().to_dict()
        finally:
            self.vq_model = vq
        out.pop("vq_model", None)
        out.pop("_layout", None)
        return out

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> list[str]:
        """Tokenizer files + ``processor_config.json`` + the VQ model in ``vq/`` (when there is one)."""
        files = super().save_pretrained(str(save_directory), **kwargs)
        if self.vq_model is not None:
            self.vq_model.save_pretrained(str(Path(save_directory) / "vq"))
        return files

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, vq_model: Any = None, load_vq: bool = True,
                        **kwargs: Any) -> ProgEmuProcessor:
        """Load a folder written by `save_pretrained`; the VQ from ``vq/`` unless given or ``load_vq=False``."""
        proc = super().from_pretrained(str(pretrained_model_name_or_path), **kwargs)
        vq_dir = Path(pretrained_model_name_or_path) / "vq"
        if vq_model is not None:
            proc.vq_model = vq_model
        elif load_vq and (vq_dir / "config.json").is_file():
            from progemu.modeling_vq import ProgEmuVQModel

            proc.vq_model = ProgEmuVQModel.from_pretrained(str(vq_dir)).eval()
        return proc

    @staticmethod
    def ingest_options_dict(options: Any) -> dict:
        """`IngestOptions` -> the JSON-able dict the processor stores."""
        return dataclasses.asdict(options)


class ProgEmuCollator:
    """Right-pads `build_example` outputs into tensors: ``input_ids`` (pad id), ``attention_mask``, ``labels``
    (-100) and ``loss_weights`` (0) when the features have them. ``pad_to_multiple_of`` rounds the length up."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None):
        self.pad_id, self.multiple = pad_id, pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = max(len(f["input_ids"]) for f in features)
        if self.multiple:
            n = -(-n // self.multiple) * self.multiple
        out: dict[str, torch.Tensor] = {}
        fills = {"input_ids": (self.pad_id, torch.long), "labels": (IGNORE_INDEX, torch.long),
                 "loss_weights": (0.0, torch.float32)}
        for key, (fill, dtype) in fills.items():
            if key in features[0]:
                out[key] = torch.full((len(features), n), fill, dtype=dtype)  # (B, T)
                for i, f in enumerate(features):
                    out[key][i, : len(f[key])] = torch.as_tensor(f[key], dtype=dtype)
        out["attention_mask"] = torch.zeros(len(features), n, dtype=torch.long)
        for i, f in enumerate(features):
            out["attention_mask"][i, : len(f["input_ids"])] = 1
        return out


__all__ = ["IGNORE_INDEX", "IMAGE_TASKS", "MASK_MODES", "TASKS", "ProgEmuCollator", "ProgEmuProcessor",
           "augment_prompt"]
