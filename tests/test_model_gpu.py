"""ProgEmuForCausalLM on a CUDA GPU: bf16 attention kernels agree, KV cache, checkpointed training, 8B preset.

Skipped without CUDA. On a GPU machine: ``pytest -m gpu tests/test_model_gpu.py`` (``PROGEMU_GPU_TESTS_ON=cpu`` runs
the same code on the CPU, to check the file itself, with ``-m 'gpu and not slow'``); throughput figures:
``python -m tests.test_model_gpu`` (prints tokens/s of a training step and of cached generation per preset).
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from progemu.configuration_progemu import ProgEmuConfig
from progemu.modeling_progemu import ProgEmuForCausalLM
from progemu.vocab import SPECIAL_TOKENS, VocabLayout

DEVICE = os.environ.get("PROGEMU_GPU_TESTS_ON", "cuda")  # "cpu": a dry run of this file's logic
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE != "cpu" and not torch.cuda.is_available(), reason="needs a CUDA device")]


def _layout(grid: int, codebook: int, text: int = 1024) -> VocabLayout:
    specials = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    return VocabLayout(text_vocab_size=text, codebook_size=codebook, grid_h=grid, grid_w=grid, special_ids=specials,
                       size_marker_ids=[20, 21, 22])


def _model(preset: str, layout: VocabLayout, attn: str = "sdpa", dtype=torch.bfloat16, **kw) -> ProgEmuForCausalLM:
    cfg = ProgEmuConfig.from_preset(preset, layout=layout, **kw)
    with torch.device(DEVICE):
        model = ProgEmuForCausalLM._from_config(cfg, attn_implementation=attn, dtype=dtype)
    return model


def _sequence(layout: VocabLayout, n_text: int = 40, batch: int = 1) -> torch.Tensor:
    """(B, T) ``<bos> text IMG text IMG text <eos>`` on the GPU."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(batch):
        text = torch.randint(30, layout.text_vocab_size, (n_text,), generator=g)
        imgs = [layout.codes_to_ids(torch.randint(0, layout.codebook_size, (layout.grid_h, layout.grid_w),
                                                  generator=g)) for _ in range(2)]
        rows.append(torch.cat([torch.tensor([layout.bos_id]), text, imgs[0], imgs[1], text, torch.tensor([1])]))
    return torch.stack(rows).to(DEVICE)


def test_bf16_sdpa_matches_eager():
    lay = _layout(8, 512)
    torch.manual_seed(0)
    sdpa = _model("tiny", lay).eval()
    eager = _model("tiny", lay, attn="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    ids = _sequence(lay, batch=2)
    with torch.no_grad():
        a, b = sdpa(ids).logits.float(), eager(ids).logits.float()
    assert (a - b).abs().max().item() < 0.1 * a.abs().max().item()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean().item() > 0.95


def test_flash_attention_2_matches_sdpa():
    from transformers.utils.import_utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        pytest.skip("flash-attn is not installed")
    lay = _layout(8, 512)
    torch.manual_seed(0)
    sdpa = _model("tiny", lay).eval()
    flash = _model("tiny", lay, attn="flash_attention_2").eval()
    flash.load_state_dict(sdpa.state_dict())
    ids = _sequence(lay)
    with torch.no_grad():
        a, b = sdpa(ids).logits.float(), flash(ids).logits.float()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean().item() > 0.95


def test_generate_cached_equals_uncached():
    lay = _layout(8, 512)
    torch.manual_seed(0)
    model = _model("tiny", lay, dtype=torch.float32).eval()
    prompt = _sequence(lay)[:, :60]
    a = model.generate(prompt, max_new_tokens=24, do_sample=False, use_cache=True)
    b = model.generate(prompt, max_new_tokens=24, do_sample=False, use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_rows_do_not_attend_across_sequences_on_cuda(dtype):
    """Training's packed rows (position ids restarting per sequence, no attention mask) in the training forward,
    where cuDNN attention is allowed: a sequence's logits do not depend on the sequence packed before it."""
    lay = _layout(8, 512)
    torch.manual_seed(0)
    model = _model("tiny", lay, dtype=dtype).train()  # the training path (dropout is 0 in the presets)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # sharp logits: a leak across sequences shows
    second, first = _sequence(lay, n_text=20)[0], _sequence(lay, n_text=33)[0]
    firsts = [first, torch.randint(30, lay.text_vocab_size, first.shape, device=DEVICE)]  # same length, other tokens
    outs = []
    for first in firsts:
        ids = torch.cat([first, second])[None]
        pos = torch.cat([torch.arange(len(first)), torch.arange(len(second))])[None].to(DEVICE)
        with torch.no_grad():
            outs.append(model(input_ids=ids, position_ids=pos, use_cache=False).logits[0, len(first):].float())
    with torch.no_grad():
        alone = model(input_ids=second[None], use_cache=False).logits[0].float()
    scale = alone.abs().max().item()
    assert (outs[0] - outs[1]).abs().max().item() <= 1e-3 * scale  # what came before does not matter
    tol = 1e-4 if dtype == torch.float32 else 0.05  # packed vs alone: other kernel shapes, bf16 rounding
    assert (outs[0] - alone).abs().max().item() <= tol * scale


def test_checkpointed_bf16_training_step():
    lay = _layout(16, 1024)
    model = _model("small", lay).train()
    model.gradient_checkpointing_enable()
    ids = _sequence(lay, batch=2)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.num_image_tokens > 0 and out.num_text_tokens > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)



@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_steps_equal_the_eager_static_steps(dtype, monkeypatch):
    """``--cache graph``: after the first one-token step every step is a replay of one captured CUDA graph, and its
    outputs are those of the same static-cache steps run eagerly (same kernels: equal in bf16 as in fp32)."""
    from progemu.generation.decoder import CounterfactualGenerator, DecodeOptions
    from progemu.generation.sampling import SamplingOptions

    lay = _layout(8, 1024, text=512)
    torch.manual_seed(0)
    model = _model("tiny", lay, dtype=dtype).eval()
    gen = CounterfactualGenerator(model, lay)
    codes = torch.randint(0, 1024, (4, 8, 8))
    prompts = [[lay.bos_id, *range(40, 43 + i), *lay.codes_to_ids(codes[i]).tolist()] for i in range(4)]
    mask = torch.zeros(4, 8, 8, dtype=torch.bool)
    mask[:, 2:6, 1:7] = True  # forced runs between sampled codes: eager multi-token feeds between the replays
    replays, replay = [], torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda self: replays.append(1) or replay(self))

    def run(cache):
        return gen.generate(prompts, null_prompts=[[lay.bos_id]] * 4, prior_codes=codes, edit_mask=mask,
                            seeds=[1, 2, 3, 4], options=DecodeOptions(image=SamplingOptions(top_k=50), cfg_image=3.0,
                                                                      cfg_text=2.0, max_text_tokens=12, cache=cache))

    eager, graphed = run("static"), run("graph")
    assert torch.equal(graphed.codes, eager.codes) and graphed.text_ids == eager.text_ids
    assert torch.equal(graphed.codes.cpu()[~mask], codes[~mask])
    if DEVICE != "cpu":  # the CPU dry run has no graphs: the same static step runs eagerly there
        assert len(replays) > 10  # the steps were replays, not eager calls

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_counterfactual_decoder_invariants_on_cuda(dtype):
    """The decoder on CUDA: codes outside the edit mask = the prior's; in fp32 also cached = uncached, filled =
    static cache, CFG 1 = no CFG and an item alone = in a batch (bf16 kernels differ with the batch's shape)."""
    from progemu.generation.decoder import CounterfactualGenerator, DecodeOptions
    from progemu.generation.sampling import SamplingOptions

    lay = _layout(8, 1024, text=512)
    torch.manual_seed(0)
    model = _model("tiny", lay, dtype=dtype).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # sharp logits: no argmax ties
    gen = CounterfactualGenerator(model, lay)
    codes = torch.randint(0, 1024, (4, 8, 8))
    prompts = [[lay.bos_id, *range(40, 43 + i), *lay.codes_to_ids(codes[i]).tolist()] for i in range(4)]
    nulls = [[lay.bos_id]] * 4
    greedy = SamplingOptions(greedy=True)
    mask = torch.zeros(4, 8, 8, dtype=torch.bool)
    mask[:, 2:5, 2:5] = True
    r = gen.generate(prompts, null_prompts=nulls, prior_codes=codes, edit_mask=mask, seeds=[1, 2, 3, 4],
                     options=DecodeOptions(cfg_image=3.0, max_text_tokens=4))
    assert torch.equal(r.codes.cpu()[~mask], codes[~mask])
    if dtype == torch.float32:  # bf16 kernels differ with the batch's shape, and so may the codes
        a = gen.generate(prompts, options=DecodeOptions(image=greedy, max_text_tokens=8))
        cfg1 = gen.generate(prompts, null_prompts=nulls,
                            options=DecodeOptions(image=greedy, cfg_text=2.0, max_text_tokens=8))
        assert torch.equal(a.codes, cfg1.codes)
        b = gen.generate(prompts, options=DecodeOptions(image=greedy, max_text_tokens=8, use_cache=False))
        s = gen.generate(prompts, options=DecodeOptions(image=greedy, max_text_tokens=8, cache="static"))
        assert torch.equal(a.codes, b.codes) and a.text_ids == b.text_ids and torch.equal(a.codes, s.codes)
        opts = DecodeOptions(cfg_image=3.0, max_text_tokens=4)
        batch = gen.generate(prompts, null_prompts=nulls, seeds=[1, 2, 3, 4], options=opts)
        alone = gen.generate(prompts[2:3], null_prompts=nulls[2:3], seeds=[3], options=opts)
        assert torch.equal(batch.codes[2], alone.codes[0])


@pytest.mark.slow
def test_emu3_8b_preset_trains_on_a_progemu_length_sequence():
    if torch.cuda.get_device_properties(0).total_memory < 70e9:
        pytest.skip("needs a GPU with >= 70 GB")
    lay = _layout(64, 32768)  # ProgEmu: 512 px images, 8x downsampling, Emu3's 32,768 codes
    model = _model("emu3-8b", lay).train()
    model.gradient_checkpointing_enable()
    ids = _sequence(lay, n_text=40)  # ~8.4k tokens, inside ProgEmu's 9,216 context
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert 7e9 < model.num_parameters() < 9e9


def _bench() -> None:
    """tokens/s of one checkpointed bf16 training step and of cached greedy generation, per preset."""
    for preset, grid, codebook, batch in (("small", 16, 1024, 8), ("base", 32, 8192, 4), ("emu3-8b", 64, 32768, 1)):
        lay = _layout(grid, codebook)
        model = _model(preset, lay).train()
        model.gradient_checkpointing_enable()
        ids = _sequence(lay, batch=batch)
        for _ in range(3):  # two warm-up steps, the third timed
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        model.eval()
        n_new = 256
        with torch.no_grad():
            model.generate(ids[:1, :64], max_new_tokens=8, do_sample=False)  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(ids[:, :64], max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
            torch.cuda.synchronize()
            gt = time.perf_counter() - t0
        print(f"{preset}: {model.num_parameters() / 1e6:.0f}M params, train step {ids.numel()} tokens "
              f"(B={batch}, T={ids.shape[1]}) {dt:.3f}s = {ids.numel() / dt:.0f} tok/s; generate B={batch} "
              f"{n_new} tokens {gt:.2f}s = {batch * n_new / gt:.0f} tok/s; peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB",
              flush=True)
        del model
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    _bench()
