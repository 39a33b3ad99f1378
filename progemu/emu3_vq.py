"""Emu3's RGB VQ-VAE (transformers' `Emu3VQVAE`) behind progemu's image-tokenizer interface, and the loader of
a model folder's ``vq/`` whichever tokenizer it holds.

progemu's VQ reads grayscale pixel values (B, 1, H, W) in [-1, 1] and writes codes (B, h, w); so does `Emu3GrayVQ`:
a grayscale chest X-ray enters Emu3's VQ-VAE as three equal channels, normalised as ``Emu3ImageProcessor`` does
(``(x - image_mean) / image_std`` per channel, x in [0, 1]); its RGB output is un-normalised and averaged back to
one grayscale channel. 512 x 512 px give 64 x 64 codes at Emu3's spatial factor 8.

    from progemu.emu3_vq import load_image_tokenizer
    vq = load_image_tokenizer("runs/progemu-converted/vq")
    codes = vq.encode(pixel_values)   # (B, 1, H, W) in [-1, 1] -> (B, h, w)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from progemu.errors import LayoutError

# Emu3ImageProcessor's defaults (OpenAI CLIP's statistics), used when a folder names none
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_FILE = "preprocessor_config.json"


class Emu3GrayVQ(nn.Module):
    """`Emu3VQVAE` for grayscale images: ``encode`` (B, 1, H, W) [-1, 1] -> (B, h, w) codes, ``decode`` back.

    Args:
        vqmodel: the `Emu3VQVAE` (frozen, as in Emu3).
        image_mean, image_std: the per-channel normalisation of Emu3's image processor.
    """

    def __init__(self, vqmodel: nn.Module, image_mean: Any = CLIP_MEAN, image_std: Any = CLIP_STD):
        super().__init__()
        self.vqmodel = vqmodel.eval()
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        cfg = vqmodel.config
        # what the processor and the pipeline read from a VQ config (progemu's VQ has these fields)
        self.config = SimpleNamespace(model_type=cfg.model_type, codebook_size=int(cfg.codebook_size),
                                      downsample_factor=2 ** (len(cfg.channel_multiplier) - 1), validation=None,
                                      image_size=512, emu3=cfg)  # ProgEmu's 512 px

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def grid_size(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        """The code grid (h, w) of an image of ``image_size`` px (LayoutError unless divisible)."""
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        f = self.downsample_factor
        if h % f or w % f:
            raise LayoutError(f"image of {h}x{w} px is not divisible by Emu3's spatial factor {f}")
        return h // f, w // f

    def to_rgb(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [-1, 1] -> (B, 3, H, W) normalised as Emu3's image processor does."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 1:
            raise LayoutError(f"Emu3GrayVQ reads grayscale pixel values (B, 1, H, W), got {tuple(pixel_values.shape)}")
        x = (pixel_values.float() + 1) / 2
        return (x.expand(-1, 3, -1, -1) - self.image_mean) / self.image_std

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [-1, 1] -> (B, H/f, W/f) long codes."""
        h, w = pixel_values.shape[-2:]
        self.grid_size((h, w))
        rgb = self.to_rgb(pixel_values).to(self.vqmodel.dtype)
        sizes = torch.tensor([[h, w]] * rgb.shape[0], device=rgb.device)
        out = self.vqmodel.encode(rgb, sizes, return_dict=True)
        return torch.stack(list(out.image_tokens)).long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> (B, 1, H, W) grayscale in [-1, 1]: the mean of the RGB channels as Emu3's image
        processor post-processes them (un-normalised, each clipped to [0, 1])."""
        rgb = self.vqmodel.decode(torch.as_tensor(codes).long()).float()  # (B, 3, H, W), normalised
        x = (rgb * self.image_std + self.image_mean).clamp(0, 1).mean(1, keepdim=True)
        return x * 2 - 1

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """The VQ-VAE (``config.json`` + safetensors) and its normalisation (``preprocessor_config.json``)."""
        from progemu.io import write_json_atomic

        self.vqmodel.save_pretrained(str(save_directory), **kwargs)
        write_json_atomic(Path(save_directory) / PREPROCESSOR_FILE, {
            "image_processor_type": "Emu3ImageProcessor", "image_mean": self.image_mean.flatten().tolist(),
            "image_std": self.image_std.flatten().tolist(), "spatial_factor": self.downsample_factor})

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> Emu3GrayVQ:
        from transformers import Emu3VQVAE

        pre = Path(path) / PREPROCESSOR_FILE
        stats = json.loads(pre.read_text()) if pre.is_file() else {}
        vq = Emu3VQVAE.from_pretrained(str(path), **kwargs)
        return cls(vq, stats.get("image_mean", CLIP_MEAN), stats.get("image_std", CLIP_STD))


@contextmanager
def whole_weights() -> Iterator[None]:
    """Load a frozen tool network whole even inside a ZeRO-3 run (whose `from_pretrained` would partition it)."""
    from transformers.integrations import deepspeed as hf_ds

    ref = hf_ds._hf_deepspeed_config_weak_ref
    if ref is None or ref() is None or not hf_ds.is_deepspeed_zero3_enabled():
        yield
        return
    config = ref()
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds.set_hf_deepspeed_config(config)


def load_image_tokenizer(path: str | Path, **kwargs: Any) -> nn.Module:
    """The image tokenizer saved in ``path`` (a ``vq/`` folder): progemu's VQ or Emu3's VQ-VAE, in eval mode,
    whole (never ZeRO-3-partitioned: it is not trained, and each checkpoint saves it in its vq/)."""
    with whole_weights():
        return _load_image_tokenizer(path, **kwargs)


def _load_image_tokenizer(path: str | Path, **kwargs: Any) -> nn.Module:
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise LayoutError(f"{cfg_file}: no image tokenizer config")
    model_type = json.loads(cfg_file.read_text()).get("model_type")
    if model_type == "emu3_vqgan":
        return Emu3GrayVQ.from_pretrained(path, **kwargs).eval()
    if model_type in (None, "progemu_vq"):
        from progemu.modeling_vq import ProgEmuVQModel

        return ProgEmuVQModel.from_pretrained(str(path), **kwargs).eval()
    raise LayoutError(f"{cfg_file}: unknown image tokenizer model_type {model_type!r} (expected 'progemu_vq' or "
                      "'emu3_vqgan')")


__all__ = ["Emu3GrayVQ", "load_image_tokenizer", "whole_weights"]
