"""The model owns its image tokenizer (as Emu3's `model.vqmodel`): on the embedded checkpoint, whose VQ sits in vq/,
the model's encode / decode equal the processor's, and the pipeline uses one network for both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from progemu.data.ingest import from_pixel_values, to_pixel_values
from progemu.generation.pipeline import CounterfactualPipeline
from progemu.modeling_progemu import ProgEmuForCausalLM
from progemu.modeling_vq import ProgEmuVQModel
from progemu.processing_progemu import ProgEmuProcessor

ASSET = str(Path(__file__).resolve().parents[1] / "progemu" / "assets" / "tiny-synthcxr")


def test_embedded_model_encodes_and_decodes_as_its_processor():
    model = ProgEmuForCausalLM.from_pretrained(ASSET, dtype=torch.float32)
    proc = ProgEmuProcessor.from_pretrained(ASSET)
    assert isinstance(model.vqmodel, ProgEmuVQModel)
    size = proc.get_ingest_options().size
    image = np.random.default_rng(0).random((size, size)).astype(np.float32)
    codes = proc.encode_images([image])  # (1, h, w)
    ids = model.get_image_tokens(to_pixel_values(image))  # (1, image_length)
    assert torch.equal(ids[0], torch.tensor(proc.image_ids(codes[0])))
    assert np.array_equal(from_pixel_values(model.decode_image_tokens(ids)), proc.decode_codes(codes))
    assert ProgEmuForCausalLM.from_pretrained(ASSET, load_vq=False).vqmodel is None


def test_pipeline_lends_the_models_tokenizer_to_the_processor():
    pipe = CounterfactualPipeline.from_pretrained(ASSET, device="cpu")
    assert pipe.processor.vq_model is pipe.model.vqmodel is not None
