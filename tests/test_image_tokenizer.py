"""The model owns its image tokenizer (as Emu3's `model.vqmodel`): on the embedded checkpoint, whose VQ sits in vq/,
the model's encode / decode equal the bare tokenizer's, the processor carries no network, and the model's folder
(not the processor's) holds vq/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from progemu.data.ingest import from_pixel_values, to_pixel_values
from progemu.emu3_vq import load_image_tokenizer
from progemu.generation.decoder import DecodeOptions
from progemu.generation.pipeline import CounterfactualPipeline, GenerationItem, PipelineOptions
from progemu.image_codes import decode_codes, encode_images, ingest_options
from progemu.modeling_progemu import ProgEmuForCausalLM
from progemu.modeling_vq import ProgEmuVQModel
from progemu.processing_progemu import ProgEmuProcessor

ASSET = str(Path(__file__).resolve().parents[1] / "progemu" / "assets" / "tiny-synthcxr")


def test_embedded_model_encodes_and_decodes_as_its_bare_tokenizer():
    model = ProgEmuForCausalLM.from_pretrained(ASSET, dtype=torch.float32)
    proc = ProgEmuProcessor.from_pretrained(ASSET)
    vq = load_image_tokenizer(Path(ASSET) / "vq")
    assert isinstance(model.vqmodel, ProgEmuVQModel)
    size = ingest_options(model, proc).size
    assert size == ingest_options(vq, proc).size
    image = np.random.default_rng(0).random((size, size)).astype(np.float32)
    codes = encode_images(vq, proc, [image])  # (1, h, w), no transformer
    assert torch.equal(encode_images(model, proc, [image]), codes)
    ids = model.get_image_tokens(to_pixel_values(image))  # (1, image_length)
    assert torch.equal(ids[0], torch.tensor(proc.image_ids(codes[0])))
    assert np.array_equal(from_pixel_values(model.decode_image_tokens(ids)), decode_codes(vq, codes))
    assert np.array_equal(decode_codes(model, codes), decode_codes(vq, codes))
    assert ProgEmuForCausalLM.from_pretrained(ASSET, load_vq=False).vqmodel is None


def test_the_processor_carries_no_network_and_the_model_saves_vq(tmp_path):
    proc = ProgEmuProcessor.from_pretrained(ASSET)  # its folder holds vq/: the model's, not the processor's
    assert not hasattr(proc, "vq_model")
    assert not any(isinstance(v, torch.nn.Module) for v in vars(proc).values())
    proc.save_pretrained(tmp_path / "proc")
    assert not (tmp_path / "proc" / "vq").exists()
    model = ProgEmuForCausalLM.from_pretrained(ASSET, dtype=torch.float32)
    model.save_pretrained(tmp_path / "model")
    again = load_image_tokenizer(tmp_path / "model" / "vq")
    for key, value in model.vqmodel.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_the_pipeline_encodes_with_the_models_tokenizer():
    """Every prior goes through the model's own image tokenizer, one image at a time."""
    pipe = CounterfactualPipeline.from_pretrained(ASSET, device="cpu")
    assert pipe.model.vqmodel is not None and not hasattr(pipe.processor, "vq_model")
    seen, encode = [], pipe.model.vqmodel.encode
    pipe.model.vqmodel.encode = lambda x: seen.append(tuple(x.shape)) or encode(x)
    priors = [np.random.default_rng(i).random((128, 128)).astype(np.float32) for i in range(2)]
    items = [GenerationItem(f"i{i}", image=p, prompt="Moderate cardiomegaly has developed.")
             for i, p in enumerate(priors)]
    pipe(items, PipelineOptions(decode=DecodeOptions(max_text_tokens=1), guidance="none"))
    assert seen == [(1, 1, 128, 128)] * 2


def test_a_model_without_image_tokenizer_is_a_clear_error():
    from progemu.errors import LayoutError

    model = ProgEmuForCausalLM.from_pretrained(ASSET, load_vq=False)
    proc = ProgEmuProcessor.from_pretrained(ASSET)
    image = np.zeros((32, 32), np.float32)
    with pytest.raises(LayoutError, match="no image tokenizer"):
        encode_images(model, proc, [image])
    with pytest.raises(LayoutError, match="no image tokenizer"):
        decode_codes(model, torch.zeros(1, proc.layout.grid_h, proc.layout.grid_w, dtype=torch.long))
