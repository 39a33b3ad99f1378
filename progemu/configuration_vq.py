"""Configuration of the grayscale chest X-ray VQ tokenizer (`ProgEmuVQModel`)."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

QUANTIZERS = ("vq", "fsq", "lfq")


class ProgEmuVQConfig(PreTrainedConfig):
    """Shape of the conv encoder/decoder and of the quantizer.

    The encoder first folds ``patch_size x patch_size`` pixels into channels (pixel-unshuffle, lossless; 1 = off),
    then has ``len(channel_multipliers)`` resolution levels with ``len(channel_multipliers) - 1`` stride-2 steps.
    The downsampling factor is ``f = patch_size * 2**(len(channel_multipliers) - 1)`` and the code grid of an
    ``H x W`` image is ``(H / f, W / f)``; H and W must be divisible by f.

    Quantizers (all from vector-quantize-pytorch):
    - ``"vq"``: ``VectorQuantize`` with an EMA codebook of ``codebook_size`` entries of ``codebook_dim``,
      options ``vq_decay``, ``vq_kmeans_init``, ``vq_use_cosine_sim``, ``vq_threshold_ema_dead_code``
      (dead-code restarts), ``vq_commitment_weight``.
    - ``"fsq"``: ``FSQ`` with ``fsq_levels`` (codebook size = product of the levels).
    - ``"lfq"``: ``LFQ`` with ``codebook_size`` a power of two, ``lfq_entropy_loss_weight``.
    """

    model_type = "progemu_vq"

    def __init__(
        self,
        in_channels: int = 1,
        patch_size: int = 1,
        base_channels: int = 64,
        channel_multipliers: list[int] | tuple[int, ...] = (1, 2, 2, 4),
        encoder_res_blocks: int = 1,
        decoder_res_blocks: int = 2,
        use_mid_attention: bool = False,
        embed_dim: int = 64,
        quantizer: str = "vq",
        codebook_size: int = 1024,
        codebook_dim: int = 32,
        vq_decay: float = 0.9,
        vq_kmeans_init: bool = True,
        vq_use_cosine_sim: bool = True,
        vq_threshold_ema_dead_code: float = 2.0,
        vq_commitment_weight: float = 0.25,
        fsq_levels: list[int] | tuple[int, ...] = (8, 5, 5, 5),
        lfq_entropy_loss_weight: float = 0.1,
        image_size: int = 128,
        validation: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
        if len(channel_multipliers) < 1:
            raise ValueError("channel_multipliers needs at least one level")
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.base_channels = base_channels
        self.channel_multipliers = list(channel_multipliers)
        self.encoder_res_blocks = encoder_res_blocks
        self.decoder_res_blocks = decoder_res_blocks
        self.use_mid_attention = use_mid_attention
        self.embed_dim = embed_dim
        self.quantizer = quantizer
        self.fsq_levels = list(fsq_levels)
        if quantizer == "fsq":
            size = 1
            for level in self.fsq_levels:
                size *= int(level)
            codebook_size, codebook_dim = size, len(self.fsq_levels)
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.vq_decay = vq_decay
        self.vq_kmeans_init = vq_kmeans_init
        self.vq_use_cosine_sim = vq_use_cosine_sim
        self.vq_threshold_ema_dead_code = vq_threshold_ema_dead_code
        self.vq_commitment_weight = vq_commitment_weight
        self.lfq_entropy_loss_weight = lfq_entropy_loss_weight
        self.image_size = image_size
        # the tokenizer's reconstruction figures on held-out images of its training data (`progemu.generation.
        # fidelity`): saved with the weights, so generation can tell an input far outside what it reconstructs well
        self.validation = dict(validation) if validation else None
        super().__init__(**kwargs)

    @property
    def num_downsamplings(self) -> int:
        """Number of 2x reductions, the pixel-unshuffle included (log2 of the downsampling factor)."""
        return len(self.channel_multipliers) - 1 + max(0, int(self.patch_size).bit_length() - 1)

    @property
    def downsample_factor(self) -> int:
        return int(self.patch_size) * 2 ** (len(self.channel_multipliers) - 1)
