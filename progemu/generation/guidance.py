"""Guidance maps: where the model acted on the prior, and where, by its own account, the prompt asks it to act.

Two maps per counterfactual, both in [0, 1] at the image's size:

- the **change map** (``guidance.npy``, the one evaluated): where the model changed the image, the mean
  absolute difference between the counterfactual's codes and the prior's codes, both decoded by the VQ, per code
  cell, divided by `CHANGE_SCALE` (a cell whose pixels moved by 10% of the intensity range on average is 1) and
  smoothed bilinearly at the code scale. It is exactly 0 when the model kept every code of the prior (a prompt
  that changes nothing gives an empty map), and a changed code shows over its neighbourhood as far as the VQ
  decoder spreads it (~1-3 cells for the embedded tokenizer);
- the **relevance map** (``relevance.npy``): where the prompt pulls the model away from the prior, before
  anything is generated (InstructX2X's relevance R x the anatomical prior; it gives ``--region auto`` its edit
  mask).

For the relevance, one teacher-forced pass feeds ``prompt + IMG(prior)`` and reads, at every code position, the
model's next-token distribution over codes. Two relevance measures (InstructX2X's R, made autoregressive):

- ``"kl"`` (default): KL(p(. | prompt) || p(. | reference prompt)), where the reference is the same prior
  with an empty prompt, so only the prompt's effect is measured;
- ``"nll"``: 1 - p(prior code | prompt), how strongly the model wants to leave the prior code.

Each map is scaled to [0, 1] per item (divided by its maximum), upsampled to the image size, saved as a
float array and as a red overlay on the prior. Multiplied by an anatomical prior and thresholded at
``tau`` it gives the automatic edit mask (``tau = 0``: unrestricted).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from progemu.generation.stream import head_logits, keeps_logits, left_pad, split_head
from progemu.vocab import VocabLayout

METHODS = ("kl", "nll")
PEAK_FLOOR = 1e-3  # nats for "kl", probability for "nll"
# the change map's full scale: mean absolute change of a code cell's decoded pixels (intensity range 1); chosen on
# SynthCXR validate pairs among 0.1-0.4 (pixel IoU with the true change region 0.51 at 0.1, 0.29 at 0.4)
CHANGE_SCALE = 0.1


@torch.inference_mode()
def _code_logits(model: torch.nn.Module, layout: VocabLayout, rows: list[list[int]]) -> torch.Tensor:
    """Rows ending with an image block -> (R, h*w, K) logits over codes predicting each code of that block."""
    device = next(model.parameters()).device
    ids, mask = left_pad(rows, layout.pad_id, device)  # (R, L)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = layout.image_length + 1
    kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": False}
    offs = layout.code_offsets().flatten().to(device)  # index o of the kept positions predicts block offset o
    lo, hi = layout.image_token_offset, layout.image_token_offset + layout.codebook_size
    decoder, head = split_head(model)
    if decoder is not None:  # only the code rows of the head: no (R, positions, full vocabulary) tensor
        hidden = decoder(**kwargs).last_hidden_state[:, -keep:]  # (R, image_length + 1, D)
        return head_logits(head, hidden[:, offs], lo, hi).float()
    if keeps_logits(model):
        kwargs["logits_to_keep"] = keep
    logits = model(**kwargs).logits[:, -keep:]  # (R, image_length + 1, V)
    return logits[:, offs, lo:hi].float()


def teacher_forced_row(layout: VocabLayout, prompt: list[int], codes: torch.Tensor) -> list[int]:
    """``prompt`` followed by the image block of ``codes`` (h, w): the sequence a training example of the task
    holds with ``codes`` as its target image. A prompt from `build_generation_prompt` already ends with the
    block's header ``<boi> h*w <img>``; then only the rest of the block is appended (the header twice is a sequence
    the model never saw)."""
    block = layout.codes_to_ids(torch.as_tensor(codes).cpu()).tolist()
    n = layout.header_length
    start = n if len(prompt) >= n and list(prompt[-n:]) == block[:n] else 0
    return list(prompt) + block[start:]


def relevance_grid(model: torch.nn.Module, layout: VocabLayout, prompts: list[list[int]],
                   prior_codes: torch.Tensor, reference_prompts: list[list[int]] | None = None,
                   method: str = "kl") -> torch.Tensor:
    """(B, h, w) relevance in [0, 1] of each code position for each item's prompt.

    ``prompts`` end right before the generated image or after its header; the block of ``prior_codes`` is appended
    teacher-forced (`teacher_forced_row`).
    ``reference_prompts`` (needed by ``"kl"``) are the same prompts with the instruction text removed.
    """
    if method not in METHODS:
        raise ValueError(f"unknown guidance method {method!r}; choose one of {METHODS}")
    if method == "kl" and reference_prompts is None:
        raise ValueError("the 'kl' guidance needs reference prompts (the prompt without its text)")
    prior_codes = torch.as_tensor(prior_codes)
    b, h, w = prior_codes.shape
    out = []
    # one item at a time: its rows are then padded the same way whatever batch it came in, so its map is the same
    # to the bit alone, in any batch or on any rank (and the (rows, positions, codebook) logits stay small)
    for s in range(b):
        idx = range(s, s + 1)
        rows = [teacher_forced_row(layout, prompts[i], prior_codes[i]) for i in idx]
        if method == "kl":
            rows += [teacher_forced_row(layout, reference_prompts[i], prior_codes[i]) for i in idx]
        logits = _code_logits(model, layout, rows)  # (R, h*w, K)
        n = len(idx)
        logp = torch.log_softmax(logits[:n], -1)
        if method == "kl":
            logq = torch.log_softmax(logits[n:], -1)
            rel = (logp.exp() * (logp - logq)).sum(-1).clamp(min=0)  # (n, h*w)
        else:
            codes = prior_codes[list(idx)].reshape(n, -1, 1).to(logp.device).long()
            rel = 1 - logp.gather(-1, codes).squeeze(-1).exp()
        out.append(rel.cpu())
    rel = torch.cat(out).reshape(b, h, w)
    # scale to [0, 1] by the item's peak; the floor keeps a prompt with no effect at ~0 instead of amplified noise
    peak = rel.flatten(1).amax(1).clamp(min=PEAK_FLOOR)[:, None, None]
    return (rel / peak).clamp(0, 1)


def change_grid(counterfactual: np.ndarray, prior: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """(h, w) change map in [0, 1]: the mean |counterfactual - prior| per code cell over `CHANGE_SCALE`; both (H, W)
    images decoded by the VQ from codes, so the tokenizer's reconstruction error is not counted as a change."""
    diff = torch.as_tensor(np.abs(np.asarray(counterfactual, np.float32) - np.asarray(prior, np.float32)))
    cells = F.adaptive_avg_pool2d(diff[None, None], grid)[0, 0]  # (h, w)
    return (cells / CHANGE_SCALE).clamp(0, 1)


def upsample(grid: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(h, w) map -> float32 (H, W) in [0, 1], bilinear (each code covers a patch of pixels)."""
    g = torch.as_tensor(grid, dtype=torch.float32)[None, None]
    return F.interpolate(g, size=size, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()


def overlay(prior: np.ndarray, guidance: np.ndarray, alpha: float = 0.7) -> np.ndarray:
    """Grayscale prior (H, W) in [0, 1] and guidance (H, W) in [0, 1] -> uint8 (H, W, 3) red overlay."""
    gray = np.repeat(np.clip(prior, 0, 1)[..., None], 3, axis=-1)
    red = np.zeros_like(gray)
    red[..., 0] = 1.0
    a = alpha * np.clip(guidance, 0, 1)[..., None]
    return np.round(255 * ((1 - a) * gray + a * red)).astype(np.uint8)


def auto_edit_mask(guidance_grid: torch.Tensor, tau: float, anatomy_grid: torch.Tensor | None = None) -> torch.Tensor:
    """Edit mask (h, w) bool: G = guidance x anatomy >= tau; ``tau = 0`` edits everywhere (InstructX2X)."""
    g = torch.as_tensor(guidance_grid, dtype=torch.float32)
    if anatomy_grid is not None:
        g = g * torch.as_tensor(anatomy_grid, dtype=torch.float32)
    if tau <= 0:
        return torch.ones_like(g, dtype=torch.bool)
    return g >= tau
