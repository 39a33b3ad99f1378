"""The VQ tokenizer: codes in range and shape, indices -> output equals the forward pass, save/load identical,
training lowers the loss, resume continues from the saved step with the same result."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from progemu.configuration_vq import ProgEmuVQConfig
from progemu.modeling_vq import ProgEmuVQModel, register_auto_classes

SMALL = dict(patch_size=2, base_channels=8, channel_multipliers=[1, 2], embed_dim=8, codebook_size=64, codebook_dim=4,
             fsq_levels=[4, 4, 4], image_size=32)
QUANTIZERS = ["vq", "fsq", "lfq"]


def small_model(quantizer: str, **kw) -> ProgEmuVQModel:
    return ProgEmuVQModel(ProgEmuVQConfig(**{**SMALL, "quantizer": quantizer, **kw}))


def images(n: int = 4, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 1, size, size) * 2 - 1  # (B, 1, S, S) in [-1, 1]


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_codes_in_range_and_shape(quantizer):
    model = small_model(quantizer)
    model.train()
    model(images(8))  # initialise the codebook (k-means) the way training does
    model.eval()
    assert model.downsample_factor == 4 and model.grid_size(32) == (8, 8) and model.grid_size((32, 48)) == (8, 12)
    for size in (32, 48):
        codes = model.encode(images(3, size))
        assert codes.dtype == torch.long and codes.shape == (3, size // 4, size // 4)
        assert int(codes.min()) >= 0 and int(codes.max()) < model.codebook_size
        assert model.decode(codes).shape == (3, 1, size, size)
    with pytest.raises(ValueError, match="divisible"):
        model.encode(images(1, 30))
    with pytest.raises(ValueError, match="codes must lie"):
        model.decode(torch.full((1, 8, 8), model.codebook_size))


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_output_from_indices_equals_forward(quantizer):
    model = small_model(quantizer)
    model.train()
    model(images(8))
    model.eval()
    x = images(4)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(model.encode(x), out.codes)
        assert torch.allclose(model.quantizer.codes_to_latent(out.codes), out.quantized, atol=1e-6)
        assert torch.allclose(model.decode(out.codes), out.reconstruction, atol=1e-6)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_save_load_identical(quantizer, tmp_path):
    from transformers import AutoConfig, AutoModel

    model = small_model(quantizer)
    model.train()
    model(images(8))
    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    register_auto_classes()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ProgEmuVQConfig)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, ProgEmuVQModel) and not loaded.training
    # every buffer, the unsaved ones too (from_pretrained allocates those empty), matches the saved model
    mine = dict(model.named_buffers())
    for name, buf in loaded.named_buffers():
        assert torch.equal(buf, mine[name]), name
    x = images(4)
    with torch.no_grad():
        codes = model.encode(x)
        assert torch.equal(loaded.encode(x), codes)
        assert torch.equal(loaded.decode(codes), model.decode(codes))
        loaded.train()
        model.train()
        assert torch.allclose(loaded(x).aux_loss, model(x).aux_loss)  # the training loss resumes where it was


def test_config_round_trip_and_errors():
    cfg = ProgEmuVQConfig(**SMALL, quantizer="fsq")
    assert cfg.codebook_size == 64 and cfg.downsample_factor == 4 and cfg.num_downsamplings == 2
    again = ProgEmuVQConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()
    with pytest.raises(ValueError, match="quantizer"):
        ProgEmuVQConfig(quantizer="kmeans")


def _cfg(steps: int):
    from tokenizer.vq_presets import get_preset

    return get_preset("tiny-base").replace(model={**SMALL, "quantizer": "vq"}, image_size=32, data="procedural",
                                      batch_size=8, steps=steps, warmup_steps=2, log_every=1, save_every=100,
                                      val_images=8)


def _log(out) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def test_training_lowers_loss(tmp_path):
    from tokenizer.train_vq import train

    metrics = train(_cfg(30), tmp_path, progress=False)
    losses = [r["loss"] for r in _log(tmp_path)]
    assert len(losses) == 30 and sum(losses[-5:]) < 0.8 * sum(losses[:5])
    assert {"psnr", "ssim", "usage", "perplexity"} <= set(metrics)
    assert ProgEmuVQModel.from_pretrained(tmp_path).encode(images(1)).shape == (1, 8, 8)


def test_resume_continues_from_saved_step(tmp_path):
    from tokenizer.train_vq import train

    train(_cfg(6), tmp_path / "whole", progress=False)
    assert train(_cfg(6), tmp_path / "split", progress=False, stop_at=3) == {}
    assert [r["step"] for r in _log(tmp_path / "split")] == [1, 2, 3]
    train(_cfg(6), tmp_path / "split", progress=False)
    assert [r["step"] for r in _log(tmp_path / "split")] == [1, 2, 3, 4, 5, 6]
    whole, split = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("whole", "split"))
    for key in whole:
        assert torch.allclose(whole[key], split[key], atol=1e-5), key
