"""Images <-> VQ codes through the model's image tokenizer, read with a processor's ingestion options.

The model owns its image tokenizer (``model.vqmodel``, from the model folder's ``vq/``); the processor only says
how image files are read. ``owner`` below is a `ProgEmuForCausalLM` (its `get_image_tokens` /
`decode_image_tokens` are used) or, where there is no transformer (dataset encoding, a VQ round trip), a bare image
tokenizer from `progemu.emu3_vq.load_image_tokenizer`.

    model = ProgEmuForCausalLM.from_pretrained(PATH); proc = ProgEmuProcessor.from_pretrained(PATH)
    codes = encode_images(model, proc, ["prior.png"])   # (1, h, w)
    images = decode_codes(model, codes)                 # (1, H, W) float32 in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from progemu.errors import LayoutError


def image_tokenizer(owner: Any) -> nn.Module:
    """The image tokenizer network of ``owner`` (a model's ``vqmodel``, or ``owner`` itself); LayoutError if none."""
    return owner._need_vq() if hasattr(owner, "get_image_tokens") else owner


def ingest_options(owner: Any, processor: Any) -> Any:
    """The processor's `IngestOptions`, its size derived from the tokenizer's downsampling where none was saved."""
    vq = owner.vqmodel if hasattr(owner, "get_image_tokens") else owner  # may be None: reading files needs no network
    factor = getattr(getattr(vq, "config", None), "downsample_factor", None)
    return processor.get_ingest_options(downsample_factor=factor)


def pixel_values(owner: Any, processor: Any,
                 images: Sequence[str | Path | np.ndarray] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Image files / [0, 1] arrays (H, W) -> pixel values (B, 1, H, W) in [-1, 1]; pixel values pass through."""
    from progemu.data.ingest import load_image, to_pixel_values

    if torch.is_tensor(images) and images.ndim == 4:
        return images
    opts = ingest_options(owner, processor)
    arrs = [load_image(x, opts) if isinstance(x, (str, Path)) else np.asarray(x, np.float32) for x in images]
    return to_pixel_values(np.stack(arrs))


@torch.no_grad()
def encode_images(owner: Any, processor: Any,
                  images: Sequence[str | Path | np.ndarray] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Image files / [0, 1] arrays (H, W) / pixel values (B, 1, H, W) -> codes (B, h, w) long, on the CPU.
    (The tokenizer's codes directly: a model's `get_image_tokens` would wrap them in block ids to unwrap here.)"""
    vq = image_tokenizer(owner)
    pixels = pixel_values(owner, processor, images)
    lay = processor.layout
    param = next(vq.parameters())
    codes = vq.encode(pixels.to(param.device, param.dtype))
    if tuple(codes.shape[-2:]) != (lay.grid_h, lay.grid_w):
        raise LayoutError(f"images of {tuple(pixels.shape[-2:])} px give a {tuple(codes.shape[-2:])} code grid, "
                          f"the layout expects {lay.grid_h}x{lay.grid_w}")
    return codes.long().cpu()


@torch.no_grad()
def decode_codes(owner: Any, codes: torch.Tensor) -> np.ndarray:
    """Codes (B, h, w) -> float32 images (B, H, W) in [0, 1]."""
    from progemu.data.ingest import from_pixel_values

    vq = image_tokenizer(owner)
    out = from_pixel_values(vq.decode(torch.as_tensor(codes).long().to(next(vq.parameters()).device)))
    return out[None] if out.ndim == 2 else out


__all__ = ["decode_codes", "encode_images", "image_tokenizer", "ingest_options", "pixel_values"]
