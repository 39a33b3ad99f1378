"""ProgEmuForCausalLM: save/load, Auto classes, generate, KV cache, loss split, checkpointing, text-LLM start."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, LlamaConfig, LlamaForCausalLM

import progemu  # noqa: F401  (registers the Auto classes)
from progemu.configuration_progemu import PRESETS, ProgEmuConfig
from progemu.generation.decoder import CounterfactualGenerator, DecodeOptions
from progemu.modeling_progemu import ProgEmuForCausalLM, image_block_mask
from progemu.tokenization import add_special_tokens, layout_for_tokenizer
from tests._progemu_helpers import PROMPT, TEXT, make_model, make_processor, random_codes
from train.examples import build_example, make_batch


@pytest.fixture(scope="module")
def proc():
    return make_processor()


def _batch(proc, **kw):
    prior, target = random_codes(proc, 2)
    return make_batch(proc, [dict(task="icg", prior_codes=prior, target_codes=target, prompt=PROMPT, text=TEXT),
                             dict(task="report2image", target_codes=target, prompt=TEXT)], **kw)


def test_save_load_identical_logits_and_auto_classes(proc, tmp_path):
    model = make_model(proc)
    batch = _batch(proc)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ProgEmuConfig)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(again) is ProgEmuForCausalLM
    assert again.config.vocab_layout == model.config.vocab_layout
    assert again.config.text_config._attn_implementation == "sdpa"
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = again(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(a, b)


def test_generate_and_cached_equals_uncached(proc):
    model = make_model(proc)
    prompt = torch.tensor([proc.build_generation_prompt("icg", random_codes(proc)[0], PROMPT)])
    out = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
    out_nocache = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert out.shape == (1, prompt.shape[1] + 12) and torch.equal(out, out_nocache)
    with torch.no_grad():  # step by step through a DynamicCache == one full forward
        full = model(out).logits
        cache = DynamicCache(config=model.config.get_text_config())
        step = model(out[:, :-4], cache=cache, use_cache=True)
        parts = [step.logits]
        for t in range(out.shape[1] - 4, out.shape[1]):
            step = model(out[:, t: t + 1], cache=step.cache, use_cache=True)
            parts.append(step.logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)


def test_inference_forwards_keep_off_cudnn_attention(proc, monkeypatch):
    """cuDNN SDPA plans every new key length (one per decode step): eval forwards and the generator's decoding
    exclude it, and nothing else of the caller's backend choice; training keeps it."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled()))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = make_model(proc)
    ids = _batch(proc)["input_ids"]
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with torch.no_grad():
        model.eval()(ids)
    assert seen and not any(cudnn for cudnn, _ in seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored after the forward
    seen.clear()
    prompt = proc.build_generation_prompt("icg", random_codes(proc)[0], PROMPT)
    CounterfactualGenerator(model, proc.layout).generate([prompt], options=DecodeOptions(max_text_tokens=2))
    assert seen and not any(cudnn for cudnn, _ in seen)  # the generator calls the backbone itself
    seen.clear()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):  # the caller's choice of the other backends stays
        model(ids)
    assert seen and not any(cudnn or flash for cudnn, flash in seen)
    seen.clear()
    model.train()(ids)
    assert seen and all(cudnn for cudnn, _ in seen)


def test_loss_split_sums(proc):
    model = make_model(proc)
    batch = _batch(proc)
    out = model(**batch)
    n_i, n_t = out.num_image_tokens.item(), out.num_text_tokens.item()
    assert n_i > 0 and n_t > 0
    # every supervised (shifted) label is counted exactly once
    assert n_i + n_t == (batch["labels"][:, 1:] != -100).sum().item()
    torch.testing.assert_close(out.loss.detach(), (out.image_loss * n_i + out.text_loss * n_t) / (n_i + n_t))
    # the processor's per-token weights and the config's per-modality weights give the same weighted loss
    wi, wt = 2.0, 0.5
    out_w = model(**_batch(proc, image_loss_weight=wi, text_loss_weight=wt))
    expect = (wi * out.image_loss * n_i + wt * out.text_loss * n_t) / (wi * n_i + wt * n_t)
    torch.testing.assert_close(out_w.loss.detach(), expect)
    model.config.image_loss_weight, model.config.text_loss_weight = wi, wt
    no_w = {k: v for k, v in batch.items() if k != "loss_weights"}
    torch.testing.assert_close(model(**no_w).loss.detach(), expect)


def test_image_block_mask_counts_the_whole_block(proc):
    lay = proc.layout
    ex = build_example(proc, "icg", *random_codes(proc, 2), prompt=PROMPT, text=TEXT)
    ids = torch.tensor([ex["input_ids"]])
    mask = image_block_mask(ids, lay.boi_id, lay.eoi_id)[0]
    spans = lay.find_images(ids[0])
    expect = torch.zeros_like(mask)
    for s, e in spans:
        expect[s:e] = True
    assert len(spans) == 2 and torch.equal(mask, expect)


def test_gradient_checkpointing_same_gradients(proc):
    batch = _batch(proc)
    grads = []
    for ckpt in (False, True):
        model = make_model(proc).train()
        if ckpt:
            model.gradient_checkpointing_enable()
            assert model.is_gradient_checkpointing
        model(**batch).loss.backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_presets():
    lay = make_processor().layout
    for name in PRESETS:
        cfg = ProgEmuConfig.from_preset(name, layout=lay)
        assert cfg.text_config.vocab_size == lay.vocab_size and cfg.tie_word_embeddings is False
        assert cfg.max_position_embeddings == cfg.text_config.max_position_embeddings
    big = ProgEmuConfig.from_preset("emu3-8b", layout=lay).text_config
    assert (big.num_hidden_layers, big.hidden_size, big.num_key_value_heads) == (32, 4096, 8)
    with pytest.raises(ValueError, match="unknown preset"):
        ProgEmuConfig.from_preset("huge", layout=lay)
    with pytest.raises(ValueError, match="sequence_order"):
        ProgEmuConfig.from_preset("tiny", layout=lay, sequence_order="target_first")


def test_from_text_llm(tmp_path):
    proc = make_processor()
    tok = proc.tokenizer
    # a "pretrained" text LLM over the tokenizer's text ids, then the ProgEmu model grown from it
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256))
    llm.save_pretrained(tmp_path / "llm")
    add_special_tokens(tok)  # already present: a no-op that must keep every id
    lay = layout_for_tokenizer(tok, codebook_size=32, grid_h=4, grid_w=4)
    model = ProgEmuForCausalLM.from_text_llm(tmp_path / "llm", lay).eval()
    assert model.get_input_embeddings().weight.shape[0] == lay.vocab_size
    text = torch.tensor([tok.encode(TEXT, add_special_tokens=False)])
    with torch.no_grad():  # text-only behaviour of the LLM is kept on its own ids
        torch.testing.assert_close(model(text).logits[..., : len(tok)], llm(text).logits)
    model.save_pretrained(tmp_path / "progemu")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "progemu")
    assert type(again) is ProgEmuForCausalLM and again.config.layout.vocab_size == lay.vocab_size


def test_model_card(proc, tmp_path):
    model = make_model(proc)
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "2 layers, hidden 64" in card and "Not evaluated yet" in card and "Not a medical device" in card
    model.save_pretrained(tmp_path, model_card={"data": {"SynthCXR-128": "100 pairs"},
                                                "metrics": {"test": {"ssim": 0.91, "bleu3": 0.2}}})
    card = (tmp_path / "README.md").read_text()
    assert "SynthCXR-128" in card and "| ssim | 0.91 |" in card
    model.save_pretrained(tmp_path)  # keeps the richer card
    assert "SynthCXR-128" in (tmp_path / "README.md").read_text()
