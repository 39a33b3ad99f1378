"""The committed demo assets: the embedded tiny checkpoint and the evaluators `make demo` uses by default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "progemu" / "assets" / "tiny-synthcxr"
EVALUATORS = REPO / "eval" / "assets" / "evaluators"

pytestmark = pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason="no embedded checkpoint")


def test_embedded_checkpoint_loads_with_auto_classes_and_fits_the_budget():
    from transformers import AutoModelForCausalLM, AutoProcessor

    import progemu  # noqa: F401  (registers the Auto classes)
    from progemu.modeling_progemu import ProgEmuForCausalLM
    from progemu.processing_progemu import ProgEmuProcessor

    model = AutoModelForCausalLM.from_pretrained(MODEL)
    processor = AutoProcessor.from_pretrained(MODEL)
    assert isinstance(model, ProgEmuForCausalLM) and isinstance(processor, ProgEmuProcessor)
    assert model.vqmodel is not None and not hasattr(processor, "vq_model")  # the model owns its image tokenizer
    processor.check_model_config(model.config)
    # the embedded checkpoint (transformer, VQ tokenizer, text tokenizer) stays within 25 MB; the evaluation
    # networks, which are no part of it, stay small too
    size = {d: sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) for d in (MODEL, EVALUATORS)}
    assert size[MODEL] <= 25 * 1024 * 1024 and size[EVALUATORS] <= 5 * 1024 * 1024, size


def test_embedded_checkpoint_edits_only_inside_the_mask_and_writes_text(tmp_path):
    from progemu.generation import CounterfactualPipeline, GenerationItem, PipelineOptions
    from progemu.generation.decoder import DecodeOptions
    from progemu.generation.sampling import SamplingOptions
    from progemu.image_codes import encode_images
    from progemu.synth import SynthCXR

    pair = SynthCXR(size=128, seed=99).pair(0)
    pipe = CounterfactualPipeline.from_pretrained(MODEL, device="cpu")
    mask = np.zeros((128, 128), bool)
    mask[64:, :64] = True  # the image's lower left quarter (the patient's right lower zone)
    opts = PipelineOptions(decode=DecodeOptions(image=SamplingOptions(greedy=True), max_text_tokens=48),
                           region="mask", dilate=0, guidance="nll")
    item = GenerationItem("a", image=pair.prior, prompt="Moderate right pleural effusion has developed.", mask=mask)
    (res,) = pipe([item], opts)
    prior_codes = encode_images(pipe.model, pipe.processor, [pair.prior])[0]
    outside = ~res.edit_mask
    assert outside.any() and res.edit_mask.any()
    assert torch.equal(res.codes[outside], prior_codes.to(res.codes.device)[outside])
    assert res.text.strip(), "the interpretation is empty"
    assert res.guidance.shape == (128, 128) and 0.0 <= res.guidance.min() <= res.guidance.max() <= 1.0
    # the change map lies where the codes changed: a trained VQ spreads a code over ~3 cells at most
    changed = (res.codes.cpu() != prior_codes).float()
    near = torch.nn.functional.max_pool2d(changed[None], 7, 1, 3)[0].bool()  # within 3 cells of a change
    cell = 128 // changed.shape[-1]
    far = ~np.kron(near.numpy(), np.ones((cell, cell))).astype(bool)
    assert changed.any() and res.guidance[far].max() < 0.05 and res.guidance.max() > 0.2
    assert res.prior_reconstruction["psnr"] > 25 and res.warning is None  # SynthCXR: what the tokenizer knows


def test_embedded_evaluators_carry_their_heldout_scores():
    from progemu import classifier

    names = classifier.available(EVALUATORS)
    assert {"findings", "sex", "age_group"} <= set(names)
    for name in names:
        ev = classifier.Evaluator.load(EVALUATORS, name)
        assert ev.spec.heldout.get("reliable") is True
        assert json.loads((EVALUATORS / f"{name}.json").read_text())
