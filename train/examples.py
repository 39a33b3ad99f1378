"""Training examples: one token sequence with labels and loss weights per (shard row, task), and the collator.

Everything here exists for training only (labels, loss weights, CFG / prompt dropout, prompt augmentation,
padding into batches); the processor keeps what inference needs (layout, prompts, parsing), and these
functions ask it for the sequence layout, so a training sequence and a generation prompt never disagree.

    from train.examples import build_example, Collator
    ex = build_example(processor, "icg", prior_codes=p, target_codes=t, prompt="...", text="...")
    batch = Collator(processor.layout.pad_id)([ex])
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from progemu.findings import states_absence
from progemu.processing_progemu import TASKS

IGNORE = -100
MASK_MODES: dict[str, frozenset[str]] = {  # which segments carry labels
    "target": frozenset({"target_image", "target_text", "eos"}),
    "image": frozenset({"target_image"}),
    "text": frozenset({"target_text", "eos"}),
    "all": frozenset({"prompt", "prior", "target_image", "target_text", "eos"}),
}
_IMAGE_ROLES = frozenset({"prior", "target_image"})
_SENTENCE = re.compile(r"(?<=[.!?;])\s+")


def augment_prompt(prompt: str, rng: random.Random, p: float) -> str:
    """ProgEmu's prompt augmentation: with probability ``p`` shuffle the sentences, and (independently, with
    probability ``p``) drop one negative sentence (``progemu.findings.states_absence``: "No pneumothorax.", "The
    effusion has resolved."). A one-sentence prompt is returned unchanged."""
    sents = [s for s in _SENTENCE.split(prompt.strip()) if s]
    if len(sents) < 2 or p <= 0:
        return prompt
    if rng.random() < p:
        rng.shuffle(sents)
    negative = [i for i, s in enumerate(sents) if states_absence(s)]
    if negative and rng.random() < p:
        del sents[rng.choice(negative)]
    return " ".join(sents)


def build_example(processor: Any, task: str, prior_codes: Any = None, target_codes: Any = None, prompt: str = "",
                  text: str = "", mask_mode: str = "target", cfg_dropout: float = 0.0, prompt_augment: float = 0.0,
                  rng: random.Random | None = None, changed_code_weight: float = 1.0, prompt_dropout: float = 0.0,
                  image_loss_weight: float = 1.0, text_loss_weight: float = 1.0) -> dict[str, Any]:
    """One training sequence: ``{"input_ids", "labels", "loss_weights"}`` (python lists) + ``"task"``,
    ``"dropped_condition"``, ``"dropped_prompt"``.

    ``labels`` equal ``input_ids`` on the segments ``mask_mode`` supervises and -100 elsewhere (the model
    shifts); supervised tokens weigh ``image_loss_weight`` inside image blocks, ``text_loss_weight`` elsewhere.
    ``cfg_dropout``: probability of dropping the prior AND the prompt together (the unconditional branch of
    classifier-free guidance). ``prompt_dropout``: probability of dropping only the prompt of an icg / edit
    example and keeping the prior (InstructPix2Pix's text dropout: the ``"prior"`` CFG branch, which guides by
    the prompt alone), drawn when the condition is kept, so its rate is ``prompt_dropout * (1 - cfg_dropout)``.
    ``prompt_augment``: see `augment_prompt`. ``changed_code_weight``: loss weight (x the image weight) of the
    target codes that differ from the prior's code at the same cell (icg / edit): most target codes are copies,
    learnt early, and the few edited ones would otherwise carry a small share of the loss.
    """
    processor.check_inputs(task, prior_codes, target_codes)
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {sorted(MASK_MODES)}, got {mask_mode!r}")
    rng = rng or random.Random()
    drop = cfg_dropout > 0 and rng.random() < cfg_dropout
    # drawn only when asked for, so runs without it see the same random stream as before
    drop_prompt = not drop and prompt_dropout > 0 and task in ("icg", "edit") and rng.random() < prompt_dropout
    if drop_prompt:
        prompt = ""
    if prompt and prompt_augment > 0:
        prompt = augment_prompt(prompt, rng, prompt_augment)
    prior = processor.image_ids(prior_codes) if prior_codes is not None and task != "report2image" else []
    target = processor.image_ids(target_codes) if target_codes is not None and task != "image2report" else []
    prompt_ids = processor.encode_text(prompt) if task != "image2report" else []
    text_ids = processor.encode_text(text) if task != "report2image" else []
    ids, labels, weights = [], [], []
    for role, seg in processor.segments(prior, prompt_ids, target, text_ids, not drop):
        on = role in MASK_MODES[mask_mode]
        w = (image_loss_weight if role in _IMAGE_ROLES else text_loss_weight) if on else 0.0
        ids += seg
        labels += seg if on else [IGNORE] * len(seg)
        # not when the condition is dropped (without the prior "changed" means nothing) nor the prompt (without
        # it the edit is not determined: its labels stay the true follow-up, but at plain weight)
        if (on and role == "target_image" and changed_code_weight != 1.0 and not drop and not drop_prompt
                and len(prior) == len(seg)):
            weights += [w * changed_code_weight if t != p else w for t, p in zip(seg, prior, strict=True)]
        else:
            weights += [w] * len(seg)
    processor.check_length(len(ids), f"{task} sequence")
    return {"input_ids": ids, "labels": labels, "loss_weights": weights, "task": task,
            "dropped_condition": drop, "dropped_prompt": drop_prompt}


def build_from_row(processor: Any, row: dict[str, Any], task: str, rng: random.Random | None = None,
                   **kwargs: Any) -> dict[str, Any] | None:
    """`build_example` from a code-shard row (docs/architecture.md schema); None if the row lacks what ``task``
    needs. ``report2image`` / ``image2report`` use the target image and report, else the prior's."""
    prior = list(row.get("prior_codes") or []) or None
    target = list(row.get("target_codes") or []) or None
    if task in ("icg", "edit"):
        prompt = row.get("prompt", "") if task == "icg" else row.get("instruction", "")
        if prior is None or target is None or not (prompt or "").strip():
            return None
        return build_example(processor, task, prior, target, prompt=prompt, text=row.get("interpretation", ""),
                             rng=rng, **kwargs)
    pairs = [(target, row.get("target_report", "")), (prior, row.get("prior_report", ""))]
    codes, report = next(((c, r) for c, r in pairs if c is not None and (r or "").strip()), (None, ""))
    if codes is None:
        return None
    if task == "report2image":
        return build_example(processor, task, target_codes=codes, prompt=report, rng=rng, **kwargs)
    if task == "image2report":
        return build_example(processor, task, prior_codes=codes, text=report, rng=rng, **kwargs)
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")


@dataclass
class ExampleBuilder:
    """``builder(row, task, rng)`` -> `build_from_row` with one run's loss mask, weights and augmentations.

    A plain object rather than a closure so that data-loader worker processes can receive it."""

    processor: Any
    mask_mode: str = "target"
    cfg_dropout: float = 0.0
    prompt_augment: float = 0.0
    changed_code_weight: float = 1.0
    prompt_dropout: float = 0.0
    image_loss_weight: float = 1.0
    text_loss_weight: float = 1.0

    def __call__(self, row: dict[str, Any], task: str, rng: random.Random) -> dict[str, Any] | None:
        return build_from_row(self.processor, row, task, rng=rng, mask_mode=self.mask_mode,
                              cfg_dropout=self.cfg_dropout, prompt_augment=self.prompt_augment,
                              changed_code_weight=self.changed_code_weight, prompt_dropout=self.prompt_dropout,
                              image_loss_weight=self.image_loss_weight, text_loss_weight=self.text_loss_weight)


class Collator:
    """Pads rows into a batch: ``pack`` / ``pad_max`` to ``max_length``, ``group`` to the longest row (rounded up
    to ``pad_to_multiple_of``).

    A row is a `build_example` output or a packed row of the data stream (lists, arrays or tensors of
    ``input_ids`` and optionally ``labels``, ``loss_weights``, ``position_ids``). Packed batches carry
    restarting ``position_ids`` and no ``attention_mask`` (document-masked attention); padded batches carry an
    ``attention_mask``. ``num_tokens`` (real, non-pad tokens, for the tokens/s log; the trainer removes it
    before the forward pass) unless ``count_tokens=False``; ``data_state`` (the stream position after this
    batch, for exact resume) when the rows carry one.
    """

    def __init__(self, pad_id: int, max_length: int | None = None, packing: str = "group",
                 pad_to_multiple_of: int | None = None, count_tokens: bool = True):
        if packing in ("pack", "pad_max") and max_length is None:
            raise ValueError(f"packing {packing!r} pads to max_length: give max_length")
        self.pad_id, self.max_length, self.packing = pad_id, max_length, packing
        self.multiple, self.count_tokens = pad_to_multiple_of, count_tokens

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        lens = [len(r["input_ids"]) for r in rows]
        if self.packing in ("pack", "pad_max"):
            width = self.max_length
        else:
            width = max(lens)
            if self.multiple:
                width = -(-width // self.multiple) * self.multiple
        n = len(rows)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)  # (B, T)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        weights = torch.zeros((n, width), dtype=torch.float32)
        mask = torch.zeros((n, width), dtype=torch.long)
        # padding continues as its own "document" starting at position 0 so real tokens never see it
        pos = torch.zeros((n, width), dtype=torch.long)
        for b, (r, k) in enumerate(zip(rows, lens)):
            ids[b, :k] = _tensor(r["input_ids"], torch.long)
            mask[b, :k] = 1
            if "labels" in r:
                labels[b, :k] = _tensor(r["labels"], torch.long)
            if "loss_weights" in r:
                weights[b, :k] = _tensor(r["loss_weights"], torch.float32)
            pos[b, :k] = _tensor(r["position_ids"], torch.long) if "position_ids" in r else torch.arange(k)
            pos[b, k:] = torch.arange(width - k)
        batch: dict[str, Any] = {"input_ids": ids}
        if "labels" in rows[0]:
            batch["labels"] = labels
        if "loss_weights" in rows[0]:
            batch["loss_weights"] = weights
        if self.packing == "pack":
            batch["position_ids"] = pos
        else:
            batch["attention_mask"] = mask
        if self.count_tokens:
            batch["num_tokens"] = mask.sum()
        if "data_state" in rows[-1]:
            batch["data_state"] = rows[-1]["data_state"]  # the stream position after the batch's last row
        return batch


def _tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    if torch.is_tensor(x):
        return x.to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def make_batch(processor: Any, examples: dict | Sequence[dict], pad_to_multiple_of: int | None = None,
               **build_kwargs: Any) -> dict[str, torch.Tensor]:
    """Examples (dicts of `build_example` arguments) -> one right-padded batch of model inputs (``input_ids``,
    ``attention_mask``, ``labels``, ``loss_weights``)."""
    examples = [examples] if isinstance(examples, dict) else list(examples)
    feats = [build_example(processor, **{**build_kwargs, **ex}) for ex in examples]
    return Collator(processor.layout.pad_id, pad_to_multiple_of=pad_to_multiple_of, count_tokens=False)(feats)
