"""Grayscale chest X-ray VQ tokenizer: a VQGAN-like conv encoder/decoder around a vector-quantize-pytorch quantizer.

Usage::

    from progemu.modeling_vq import ProgEmuVQModel
    vq = ProgEmuVQModel.from_pretrained("runs/vq-tiny")          # eval mode
    codes = vq.encode(pixel_values)      # (B, 1, H, W) in [-1, 1] -> (B, H/f, W/f) long, f = vq.downsample_factor
    images = vq.decode(codes)            # (B, H/f, W/f) -> (B, 1, H, W), roughly in [-1, 1]

H and W must be divisible by ``downsample_factor`` (2 ** number of downsamplings); the ingestion resizes every
image to a square size, so any DICOM / PNG / JPEG it accepts can be encoded at a size that is a multiple of it.

Locality by design: every norm is per position (over channels), not over the image (GroupNorm / BatchNorm would
let a change anywhere shift every code), and global attention is off by default, so a local change in pixels
changes only the codes within the encoder's receptive field (see tokenizer/README.md for the measurement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from progemu.configuration_vq import ProgEmuVQConfig


@dataclass
class ProgEmuVQOutput(ModelOutput):
    """Output of `ProgEmuVQModel.forward`.

    reconstruction: (B, 1, H, W) decoded image; codes: (B, h, w) long; quantized: (B, D, h, w) quantized latent
    (what the decoder sees); latent: (B, D, h, w) encoder output before quantization; aux_loss: scalar quantizer loss
    (commitment / entropy; zero for FSQ).
    """

    reconstruction: torch.Tensor | None = None
    codes: torch.Tensor | None = None
    quantized: torch.Tensor | None = None
    latent: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at each position of a (B, C, H, W) map: keeps the encoder local (unlike GroupNorm)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)  # (B, H, W, C)
        return x.permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1 = ChannelLayerNorm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = ChannelLayerNorm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions (optional; it makes every code depend on the whole image)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = ChannelLayerNorm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # each (B, hw, C)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # (B, hw, C)
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class Encoder(nn.Module):
    def __init__(self, cfg: ProgEmuVQConfig):
        super().__init__()
        chans = [cfg.base_channels * m for m in cfg.channel_multipliers]
        # pixel-unshuffle first: a lossless (B, 1, H, W) -> (B, p*p, H/p, W/p) that spares full-resolution convs
        self.unshuffle = nn.PixelUnshuffle(cfg.patch_size) if cfg.patch_size > 1 else nn.Identity()
        self.conv_in = nn.Conv2d(cfg.in_channels * cfg.patch_size**2, chans[0], 3, padding=1)
        blocks: list[nn.Module] = []
        ch = chans[0]
        for level, out_ch in enumerate(chans):
            for _ in range(cfg.encoder_res_blocks):
                blocks.append(ResBlock(ch, out_ch))
                ch = out_ch
            if level < len(chans) - 1:
                blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))  # downsample by 2
        if cfg.use_mid_attention:
            blocks += [AttnBlock(ch), ResBlock(ch, ch)]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = ChannelLayerNorm(ch)
        self.conv_out = nn.Conv2d(ch, cfg.embed_dim, 1)  # 1x1: adds no receptive field

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, D, H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(self.unshuffle(x))))))


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    def __init__(self, cfg: ProgEmuVQConfig):
        super().__init__()
        chans = [cfg.base_channels * m for m in cfg.channel_multipliers][::-1]
        ch = chans[0]
        self.conv_in = nn.Conv2d(cfg.embed_dim, ch, 3, padding=1)
        blocks: list[nn.Module] = [ResBlock(ch, ch)]
        if cfg.use_mid_attention:
            blocks += [AttnBlock(ch), ResBlock(ch, ch)]
        for level, out_ch in enumerate(chans):
            for _ in range(cfg.decoder_res_blocks):
                blocks.append(ResBlock(ch, out_ch))
                ch = out_ch
            if level < len(chans) - 1:
                blocks.append(Upsample(ch))
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = ChannelLayerNorm(ch)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels * cfg.patch_size**2, 3, padding=1)
        self.shuffle = nn.PixelShuffle(cfg.patch_size) if cfg.patch_size > 1 else nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, D, h, w) -> (B, 1, H, W)
        return self.shuffle(self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(z))))))


class Quantizer(nn.Module):
    """One interface over VectorQuantize / FSQ / LFQ: (B, D, h, w) -> quantized, codes (B, h, w) long, aux loss."""

    def __init__(self, cfg: ProgEmuVQConfig):
        super().__init__()
        from vector_quantize_pytorch import FSQ, LFQ, VectorQuantize

        self.kind = cfg.quantizer
        # from_pretrained builds modules on the meta device; FSQ / LFQ compute non-persistent buffers (levels,
        # bit masks) at construction, which must be real, so the quantizer is always built on the CPU
        with torch.device("cpu"):
            self._build(cfg, VectorQuantize, FSQ, LFQ)

    def _build(self, cfg: ProgEmuVQConfig, VectorQuantize, FSQ, LFQ) -> None:  # noqa: N803
        if self.kind == "vq":
            self.q = VectorQuantize(
                dim=cfg.embed_dim, codebook_size=cfg.codebook_size, codebook_dim=cfg.codebook_dim,
                decay=cfg.vq_decay, kmeans_init=cfg.vq_kmeans_init, use_cosine_sim=cfg.vq_use_cosine_sim,
                threshold_ema_dead_code=cfg.vq_threshold_ema_dead_code, commitment_weight=cfg.vq_commitment_weight,
                accept_image_fmap=True,
            )
        elif self.kind == "fsq":
            self.q = FSQ(levels=list(cfg.fsq_levels), dim=cfg.embed_dim)
        else:
            self.q = LFQ(dim=cfg.embed_dim, codebook_size=cfg.codebook_size,
                         entropy_loss_weight=cfg.lfq_entropy_loss_weight)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = z.float()  # quantize in fp32 even under bf16 autocast: distances and EMA updates need the precision
        with torch.autocast(device_type=z.device.type, enabled=False):
            if self.kind == "vq":
                zq, codes, aux = self.q(z)
            elif self.kind == "fsq":
                zq, codes = self.q(z)  # channel-first for 4-D input
                aux = z.new_zeros(())
            else:
                zq, codes, aux = self.q(z)
        return zq, codes.long(), aux.mean() if aux.ndim else aux

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:  # (B, h, w) -> (B, D, h, w)
        if self.kind == "vq":
            # get_output_from_indices fails with accept_image_fmap and a projection, so project by hand
            vec = self.q.project_out(self.q.codebook[codes])  # (B, h, w, D)
            return vec.permute(0, 3, 1, 2)
        if self.kind == "fsq":
            return self.q.indices_to_codes(codes)
        return self.q.indices_to_codes(codes)


class ProgEmuVQPreTrainedModel(PreTrainedModel):
    config_class = ProgEmuVQConfig
    base_model_prefix = "vq"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's default conv/linear init (kaiming uniform): the library default N(0, 0.02) stalls a deep conv net
        if isinstance(module, nn.Conv2d | nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(module.bias, -bound, bound)
        elif type(module).__name__ in ("VectorQuantize", "FSQ", "LFQ"):
            # from_pretrained allocates non-saved buffers (VQ loss zero, FSQ levels, LFQ bit masks) empty; the
            # library's constructor is the one place that knows their values, so copy them from a fresh build
            fresh = Quantizer(self.config).q
            persistent = set(module.state_dict(keep_vars=True))
            fresh_buffers = dict(fresh.named_buffers())
            for name, buf in module.named_buffers():
                if name not in persistent:
                    init.copy_(buf, fresh_buffers[name].to(buf.device))
        elif isinstance(module, ChannelLayerNorm | nn.LayerNorm):
            if getattr(module, "weight", None) is not None:
                init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)


class ProgEmuVQModel(ProgEmuVQPreTrainedModel):
    """Chest X-ray image tokenizer: ``encode`` images to code grids, ``decode`` code grids to images."""

    def __init__(self, config: ProgEmuVQConfig):
        super().__init__(config)
        self.encoder = Encoder(config)
        self.quantizer = Quantizer(config)
        self.decoder = Decoder(config)
        self.post_init()

    @property
    def codebook_size(self) -> int:
        return int(self.config.codebook_size)

    @property
    def downsample_factor(self) -> int:
        return int(self.config.downsample_factor)

    def grid_size(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        """Code grid (h, w) of an image of ``image_size`` (an int for square images); ValueError if not divisible."""
        hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        f = self.downsample_factor
        if any(s % f for s in hw):
            raise ValueError(f"image size {hw} is not divisible by the tokenizer's downsampling factor {f}")
        return hw[0] // f, hw[1] // f

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.in_channels:
            raise ValueError(f"pixel_values must be (B, {self.config.in_channels}, H, W), got {tuple(pixel_values.shape)}")
        self.grid_size(tuple(pixel_values.shape[-2:]))

    def forward(self, pixel_values: torch.Tensor, return_dict: bool = True, **kwargs) -> ProgEmuVQOutput:
        """(B, 1, H, W) in [-1, 1] -> reconstruction, codes, quantized latent, aux loss."""
        self._check_pixels(pixel_values)
        latent = self.encoder(pixel_values)  # (B, D, h, w)
        quantized, codes, aux = self.quantizer(latent)
        reconstruction = self.decoder(quantized.to(latent.dtype))
        return ProgEmuVQOutput(reconstruction=reconstruction, codes=codes, quantized=quantized, latent=latent,
                               aux_loss=aux)

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [-1, 1], H and W divisible by ``downsample_factor`` -> codes (B, h, w) long.

        Call it in eval mode (``from_pretrained`` returns the model in eval mode): in train mode the VQ codebook's
        EMA would be updated.
        """
        self._check_pixels(pixel_values)
        _, codes, _ = self.quantizer(self.encoder(pixel_values))
        return codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) in [0, codebook_size) -> images (B, 1, h*f, w*f), roughly in [-1, 1] (clamp to display)."""
        if codes.ndim != 3:
            raise ValueError(f"codes must be (B, h, w), got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")
        latent = self.quantizer.codes_to_latent(codes.long())
        return self.decoder(latent.to(next(self.decoder.parameters()).dtype))


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModel.from_pretrained`` load the tokenizer without trust_remote_code."""
    from transformers import AutoConfig, AutoModel

    AutoConfig.register(ProgEmuVQConfig.model_type, ProgEmuVQConfig, exist_ok=True)
    AutoModel.register(ProgEmuVQConfig, ProgEmuVQModel, exist_ok=True)
