"""Named run configurations for ``tokenizer.train_vq``: the model shape (ProgEmuVQConfig kwargs) and the training knobs.

- ``tiny-base`` then ``tiny``: SynthCXR at 128 px -> 16x16 codes (8x down). ``tiny-base``: 1,200 steps of L1 + SSIM +
  gradients (~1 min on a GPU, ~15 min on 2 CPU cores); ``tiny``: 2,400 more steps from it with the classifier-feature
  perceptual loss (``tokenizer.perceptual``; ~28 min on 2 CPU cores), which keeps the thin findings.
- ``tiny-f16``: the same at 16x down -> 8x8 codes (a quarter of the transformer's image tokens).
- ``base``: 512 px -> 32x32 codes, codebook 1,024 (the UniXGen / LLM-CXR scale), for GPUs.
- ``f8``: 512 px -> 64x64 codes (the ProgEmu / Emu3 scale), for GPUs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class VQTrainConfig:
    """Everything a run needs besides the output folder; CLI flags override single fields."""

    model: dict[str, Any] = field(default_factory=dict)  # ProgEmuVQConfig kwargs
    image_size: int = 128
    data: str = "synth"  # "synth", "procedural" or a data-set folder
    data_format: str = "icg-cxr"  # loader format for a folder ("images" = every image file under it)
    batch_size: int = 16  # per rank
    steps: int = 1000
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    ssim_weight: float = 0.5
    grad_weight: float = 0.5
    gan_weight: float = 0.0  # 0 disables the patch-GAN
    gan_start: int = 0  # step at which the adversarial loss starts (after the reconstruction warm-up)
    disc_lr: float = 2e-4
    perceptual: str | None = None  # folder of project-trained CXR classifiers (tokenizer.perceptual); None: off
    perceptual_weight: float = 0.0
    perceptual_start: int = 0  # step at which the perceptual loss starts (the codebook settles first)
    init: str | None = None  # start from this saved VQ folder (fine-tuning) instead of random weights
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    save_every: int = 100
    val_images: int = 64
    num_workers: int = 0
    seed: int = 0

    def replace(self, **changes: Any) -> VQTrainConfig:
        model = {**self.model, **changes.pop("model", {})}
        return dataclasses.replace(self, model=model, **changes)


# 4x4 pixel-unshuffle then two conv levels: no full-resolution feature maps, the cheapest f8 that trains on a CPU
_TINY_MODEL = dict(patch_size=4, base_channels=64, channel_multipliers=[1, 2], encoder_res_blocks=1, decoder_res_blocks=1,
                   embed_dim=64, quantizer="vq", codebook_size=512, codebook_dim=16, vq_decay=0.9,
                   vq_kmeans_init=True, vq_use_cosine_sim=False, vq_threshold_ema_dead_code=1.0,
                   vq_commitment_weight=0.25, image_size=128)

PRESETS: dict[str, VQTrainConfig] = {
    "tiny-base": VQTrainConfig(model=_TINY_MODEL, image_size=128, batch_size=16, steps=1200, lr=2e-3, save_every=100),
    "tiny-f16": VQTrainConfig(model={**_TINY_MODEL, "channel_multipliers": [1, 2, 4]}, image_size=128,
                              batch_size=16, steps=1200, lr=2e-3, save_every=100),
    # stage 2 of the tiny recipe: fine-tune `tiny-base` with the classifier-feature perceptual loss
    # (tokenizer.perceptual), which keeps thin findings (tubes, pleural lines, nodules) that L1 + SSIM let the
    # codebook smooth away; from scratch the loss drowns the reconstruction terms (measured: L1 0.6 after 150 steps)
    "tiny": VQTrainConfig(model=_TINY_MODEL, image_size=128, batch_size=16, steps=2400, lr=5e-4, warmup_steps=20,
                          save_every=100, init="runs/vq-tiny-base", perceptual="runs/vq-perceptual",
                          perceptual_weight=1.5),
    "base": VQTrainConfig(
        model=dict(base_channels=128, channel_multipliers=[1, 1, 2, 2, 4], encoder_res_blocks=2, decoder_res_blocks=3,
                   embed_dim=256, quantizer="vq", codebook_size=1024, codebook_dim=32, vq_decay=0.99,
                   vq_threshold_ema_dead_code=2.0, image_size=512),
        image_size=512, batch_size=8, steps=100_000, lr=2e-4, warmup_steps=1000, gan_weight=0.1, gan_start=30_000,
        log_every=50, eval_every=5000, save_every=2000, val_images=256, num_workers=8),
    "f8": VQTrainConfig(
        model=dict(base_channels=128, channel_multipliers=[1, 2, 2, 4], encoder_res_blocks=2, decoder_res_blocks=3,
                   embed_dim=256, quantizer="vq", codebook_size=8192, codebook_dim=32, vq_decay=0.99,
                   vq_threshold_ema_dead_code=2.0, image_size=512),
        image_size=512, batch_size=8, steps=100_000, lr=2e-4, warmup_steps=1000, gan_weight=0.1, gan_start=30_000,
        log_every=50, eval_every=5000, save_every=2000, val_images=256, num_workers=8),
}


def get_preset(name: str) -> VQTrainConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], model=dict(PRESETS[name].model))
