"""`progemu convert emu3`: a converted Emu3 checkpoint keeps Emu3's token ids, logits and image codes."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor

import progemu  # noqa: F401 - registers the Auto classes
from progemu.cli import main
from progemu.convert.emu3 import convert_emu3
from progemu.convert.emu3_tiktoken import convert_tiktoken_tokenizer
from progemu.emu3_vq import load_image_tokenizer
from progemu.errors import ConversionError
from progemu.image_codes import decode_codes, encode_images
from progemu.modeling_progemu import ProgEmuForCausalLM
from progemu.processing_progemu import ProgEmuProcessor
from tests._emu3_helpers import (
    CODEBOOK,
    EMU3_PAT_STR,
    IMAGE,
    TEXTS,
    emu3_tiktoken_special_tokens,
    make_emu3,
    make_emu3_tiktoken,
    make_image_processor,
    save_original_format,
    save_transformers_format,
    tiktoken_vocab,
    write_tiktoken_tokenizer,
)

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""  # byte-level BPE's
# text the tiny BPE never saw: digits, runs of spaces and newlines, contractions, accents (one not NFC), symbols,
# special tokens written in the text
ODD_TEXTS = ["12345 64*64 3.5cm", "a\n\n  b   c\t\r\nd ", "it's THEY'RE we'll", "décollement e\u0301 ∆ 肺 🙂",
             "<|extra_203|>No pneumothorax.<|image start|><|visual token 000003|><|endoftext|>", ""]


@pytest.fixture(scope="module")
def emu3(tmp_path_factory):
    """(native model, native processor, transformers-format folder, (original lm folder, original vq folder))."""
    model, processor = make_emu3()
    root = tmp_path_factory.mktemp("emu3")
    hf = save_transformers_format(model, processor, root / "hf")
    orig = save_original_format(model, root / "orig", processor.image_processor, processor.tokenizer.save_pretrained)
    return model, processor, hf, orig


@pytest.fixture(scope="module")
def tiktoken_emu3(tmp_path_factory):
    """(native model, BPE ranks, (lm, vq)): Emu3's original layout with its own tiktoken text tokenizer."""
    model, ranks = make_emu3_tiktoken()
    lm, vq = save_original_format(model, tmp_path_factory.mktemp("tiktoken") / "orig", make_image_processor(),
                                  lambda lm: write_tiktoken_tokenizer(lm, ranks))
    return model, ranks, (lm, vq)


def _tiktoken_reference(ranks):
    """Emu3's own encoder: a tiktoken.Encoding over the same ranks, pattern and special tokens (NFC input, as
    Emu3Tokenizer.tokenize normalises, and special tokens allowed in text)."""
    import tiktoken

    specials = {t: len(ranks) + k for k, t in enumerate(emu3_tiktoken_special_tokens())}
    enc = tiktoken.Encoding("emu3-tiny", pat_str=EMU3_PAT_STR, mergeable_ranks=ranks, special_tokens=specials)
    return lambda text: enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")


@pytest.fixture(scope="module")
def converted(emu3, tmp_path_factory):
    """The transformers-format checkpoint converted through the command line."""
    out = tmp_path_factory.mktemp("conv") / "out"
    assert main(["convert", "emu3", str(emu3[2]), str(out), "--image-size", str(IMAGE)]) == 0
    return out


def _ids(model, n: int = 2, length: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, model.config.text_config.vocab_size, (n, length), generator=g)


def _same_logits(native, folder) -> None:
    conv = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert isinstance(conv, ProgEmuForCausalLM)
    ids = _ids(native)  # text, structural and visual-token ids alike
    with torch.no_grad():
        ref, got = native(input_ids=ids).logits, conv(input_ids=ids).logits
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_transformers_format_gives_emu3_logits(emu3, converted):
    import json

    _same_logits(emu3[0], converted)
    # written shard by shard: one output shard per source shard that holds text weights, never one big file
    shards = set(json.loads((converted / "model.safetensors.index.json").read_text())["weight_map"].values())
    assert len(shards) > 1 and not (converted / "model.safetensors").exists()


def test_original_layout_gives_emu3_logits(emu3, tmp_path):
    lm, vq = emu3[3]
    out = convert_emu3(lm, tmp_path / "out", vq=vq, image_size=IMAGE)
    _same_logits(emu3[0], out)
    proc = AutoProcessor.from_pretrained(out)
    assert proc.sequence_order == "prior_prompt" and not hasattr(proc, "vq_model")
    assert (out / "vq" / "config.json").is_file()  # Emu3's VQ-VAE, the model's (Emu3GrayVQ)


def test_layout_keeps_emu3_ids(emu3, converted):
    _, native_proc, _, _ = emu3
    tok = native_proc.tokenizer
    proc = AutoProcessor.from_pretrained(converted)
    assert isinstance(proc, ProgEmuProcessor)
    lay = proc.layout
    assert lay.codebook_size == CODEBOOK and (lay.grid_h, lay.grid_w) == (IMAGE // 8, IMAGE // 8)
    assert lay.image_token_offset == tok.convert_tokens_to_ids("<|visual token 000000|>")
    assert lay.vocab_size == len(tok)  # the visual tokens end Emu3's vocabulary: no new rows
    for role, token in {"bos": "<|extra_203|>", "eos": "<|extra_204|>", "boi": "<|image start|>",
                        "img": "<|image token|>", "eol": "<|extra_200|>", "eof": "<|extra_201|>",
                        "eoi": "<|image end|>"}.items():
        assert lay.special_ids[role] == tok.convert_tokens_to_ids(token), role
    codes = torch.arange(lay.grid_h * lay.grid_w).view(lay.grid_h, lay.grid_w) % CODEBOOK
    assert lay.ids_to_codes(lay.codes_to_ids(codes)).equal(codes)
    assert not lay.is_text(lay.codes_to_ids(codes)[lay.header_length:-2]).any()  # codes and <eol> are not text


def test_grayscale_codes_match_native_image_tokens(emu3, converted):
    """An image block built from the converted VQ's codes == Emu3Processor's block with get_image_tokens inside."""
    native, native_proc, _, _ = emu3
    rng = np.random.default_rng(0)
    gray = (rng.random((IMAGE, IMAGE)) * 255).astype(np.uint8)
    inputs = native_proc(text=["<image>"], images=[Image.fromarray(gray).convert("RGB")], return_tensors="pt")
    with torch.no_grad():
        tokens = native.model.get_image_tokens(inputs["pixel_values"], inputs["image_sizes"])  # codes + <eol> rows
    native_block = inputs["input_ids"][0].clone()
    if native_block[0] == native_proc.tokenizer.bos_token_id:  # the tokenizer starts the text with <bos>
        native_block = native_block[1:]
    native_block[native_block == native.config.image_token_id] = tokens.long()
    proc = AutoProcessor.from_pretrained(converted)
    vq = load_image_tokenizer(converted / "vq")  # the converted model's image tokenizer, without the transformer
    codes = encode_images(vq, proc, [gray.astype(np.float32) / 255])  # (1, h, w): grayscale in, three channels inside
    assert torch.equal(torch.tensor(proc.image_ids(codes[0])), native_block)
    decoded = decode_codes(vq, codes)  # Emu3's RGB output back as one channel
    assert decoded.shape == (1, IMAGE, IMAGE) and 0 <= decoded.min() and decoded.max() <= 1
    with torch.no_grad():  # Emu3's own decoding and its image processor's postprocessing, as 8-bit RGB
        rgb = native_proc.image_processor.postprocess(native.model.vqmodel.decode(codes), return_tensors="np")
    rgb = np.asarray(rgb["pixel_values"] if hasattr(rgb, "keys") else rgb, np.float32).reshape(-1, 3, IMAGE, IMAGE)
    np.testing.assert_allclose(decoded[0], rgb[0].mean(0) / 255, atol=1 / 255)  # 8-bit RGB: its channels' mean


def test_missing_or_bad_sources_are_clear_errors(emu3, tmp_path, capsys):
    assert main(["convert", "emu3", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "nowhere: no such folder" in capsys.readouterr().err
    lm, _ = emu3[3]
    with pytest.raises(ConversionError, match="--vq"):
        convert_emu3(lm, tmp_path / "out")
    (tmp_path / "exists").mkdir()
    with pytest.raises(ConversionError, match="already exists"):
        convert_emu3(emu3[2], tmp_path / "exists")
    import shutil

    bare = tmp_path / "bare-lm"  # Emu3's original LM folder, its tokenizer broken or missing
    bare.mkdir()
    for f in lm.iterdir():
        if f.name.startswith(("model", "config")):
            shutil.copy(f, bare / f.name)
    write_tiktoken_tokenizer(bare, {bytes([b]): b for b in range(256)})
    (bare / "emu3.tiktoken").write_text("")
    with pytest.raises(ConversionError, match=r"emu3\.tiktoken: has no BPE ranks"):
        convert_emu3(bare, tmp_path / "out", vq=emu3[3][1])
    (bare / "emu3.tiktoken").write_text("AAAA 0\nnot-base64! 1\n")
    with pytest.raises(ConversionError, match=r"emu3\.tiktoken: line 2 is not 'base64-token rank'"):
        convert_emu3(bare, tmp_path / "out", vq=emu3[3][1])
    (bare / "emu3.tiktoken").write_text("AA== 0\nAQ== 2\n")
    with pytest.raises(ConversionError, match=r"emu3\.tiktoken: ranks are not 0\.\.1"):
        convert_emu3(bare, tmp_path / "out", vq=emu3[3][1])
    (bare / "emu3.tiktoken").write_text("AA== 0\n")
    (bare / "emu3_vision_tokens.txt").unlink()
    with pytest.raises(ConversionError, match=r"emu3_vision_tokens\.txt: missing"):
        convert_emu3(bare, tmp_path / "out", vq=emu3[3][1])
    (bare / "emu3.tiktoken").unlink()  # only tokenizer_config.json (remote code) is left
    with pytest.raises(ConversionError, match=r"emu3\.tiktoken: missing, and so is tokenizer\.json"):
        convert_emu3(bare, tmp_path / "out", vq=emu3[3][1])
    (bare / "tokenizer_config.json").unlink()  # no tokenizer file at all
    with pytest.raises(ConversionError, match=r"emu3\.tiktoken: missing, and so is tokenizer\.json"):
        convert_emu3(bare, tmp_path / "out", vq=emu3[3][1])
    assert convert_emu3(bare, tmp_path / "out2", vq=emu3[3][1], tokenizer=lm, image_size=IMAGE).is_dir()
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_tiktoken_tokenizer_converts_with_emu3_ids(tiktoken_emu3):
    """Emu3's original tokenizer, converted offline: the ids tiktoken gives (ranks, pattern, special tokens) for
    any text, every BPE token at its rank and every special token at its Emu3 id; decoding inverts encoding."""
    import tiktoken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    _, ranks, (lm, _) = tiktoken_emu3
    tok = convert_tiktoken_tokenizer(lm)
    reference = _tiktoken_reference(ranks)
    for text in TEXTS + ODD_TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == reference(text), text
        assert tok.decode(ids) == unicodedata.normalize("NFC", text)
    assert any(len(reference(t)) < len(t.encode()) for t in TEXTS)  # the merges are used, not only bytes
    for pattern in (TikTokenConverter().pattern, GPT2_PATTERN):  # the test tells Emu3's pattern from others
        other = tiktoken.Encoding("other", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
        assert any(other.encode_ordinary(t) != reference(t) for t in ODD_TEXTS[:3]), pattern
    assert tok.get_vocab() == tiktoken_vocab(ranks) and len(tok) == len(ranks) + 211 + CODEBOOK
    n = len(ranks)  # Emu3: <|endoftext|> at 151643 = the number of BPE ranks, then its order
    for token, want in {"<|endoftext|>": n, "<|im_end|>": n + 2, "<|extra_0|>": n + 3, "<|extra_200|>": n + 203,
                        "<|extra_203|>": n + 206, "<|extra_204|>": n + 207, "<|image token|>": n + 208,
                        "<|image start|>": n + 209, "<|image end|>": n + 210, "<|visual token 000000|>": n + 211,
                        f"<|visual token {CODEBOOK - 1:06d}|>": n + 210 + CODEBOOK}.items():
        assert tok.convert_tokens_to_ids(token) == want, token
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|extra_203|>", "<|extra_204|>", "<|endoftext|>")


def test_original_layout_with_tiktoken_tokenizer_gives_emu3_logits(tiktoken_emu3, tmp_path):
    """`progemu convert emu3 LM OUT --vq VQ` on the original folder alone: Emu3's logits, ids and layout."""
    native, ranks, (lm, vq) = tiktoken_emu3
    out = tmp_path / "out"
    assert main(["convert", "emu3", str(lm), str(out), "--vq", str(vq), "--image-size", str(IMAGE)]) == 0
    _same_logits(native, out)
    proc = AutoProcessor.from_pretrained(out)  # the converted tokenizer, saved and loaded again
    reference = _tiktoken_reference(ranks)
    for text in TEXTS + ODD_TEXTS:
        assert proc.tokenizer.encode(text, add_special_tokens=False) == reference(text), text
    lay, n = proc.layout, len(ranks)
    assert lay.image_token_offset == n + 211 and lay.codebook_size == CODEBOOK and lay.vocab_size == n + 211 + CODEBOOK
    assert lay.special_ids == {"bos": n + 206, "eos": n + 207, "pad": n, "boi": n + 209, "img": n + 208,
                               "eol": n + 203, "eof": n + 204, "eoi": n + 210}


def test_greedy_cfg_generation_matches_native_emu3_generate(emu3, converted):
    """CounterfactualGenerator (batched CFG) on the converted model == Emu3's generate() with its prefix constraint
    and transformers' UnbatchedClassifierFreeGuidanceLogitsProcessor, greedy, scale 3."""
    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import UnbatchedClassifierFreeGuidanceLogitsProcessor

    from progemu.generation.decoder import CounterfactualGenerator, DecodeOptions
    from progemu.generation.sampling import SamplingOptions

    native, native_proc, _, _ = emu3
    proc = AutoProcessor.from_pretrained(converted)
    lay = proc.layout
    prior = torch.arange(lay.grid_h * lay.grid_w).view(lay.grid_h, lay.grid_w) * 5 % CODEBOOK
    prompt = proc.build_generation_prompt("icg", prior_codes=prior, prompt="Moderate left pleural effusion.")
    null = proc.build_generation_prompt("icg", unconditional=True)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    out = CounterfactualGenerator(model, lay).generate(
        [prompt], null_prompts=[null], options=DecodeOptions(image=SamplingOptions(greedy=True), cfg_image=3.0,
                                                             max_text_tokens=0))

    tok = native_proc.tokenizer
    wrapper, eol, eof, eoi = (tok.convert_tokens_to_ids(t) for t in ("<|image token|>", "<|extra_200|>",
                                                                     "<|extra_201|>", "<|image end|>"))
    visual = native.vocabulary_mapping.image_tokens
    h, w = lay.grid_h, lay.grid_w

    def emu3_constraint(_batch: int, ids: torch.Tensor) -> list[int]:  # Emu3's, from the last image's header
        offset = ids.shape[0] - torch.nonzero(ids == wrapper)[-1, 0]
        if offset % (w + 1) == 0:
            return [eol]
        if offset == (w + 1) * h + 1:
            return [eof]
        if offset == (w + 1) * h + 2:
            return [eoi]
        return visual

    ids = torch.tensor([prompt])
    cfg = UnbatchedClassifierFreeGuidanceLogitsProcessor(3.0, native, torch.tensor([null]))
    ref = native.generate(ids, attention_mask=torch.ones_like(ids), logits_processor=LogitsProcessorList([cfg]),
                          prefix_allowed_tokens_fn=emu3_constraint, do_sample=False,
                          max_new_tokens=lay.image_length - lay.header_length, pad_token_id=lay.pad_id,
                          eos_token_id=None)
    header = lay.block_template()[: lay.header_length]
    assert torch.equal(lay.ids_to_codes(torch.cat([header, ref[0, ids.shape[1]:]])), out.codes[0])


def test_generate_command_runs_on_the_converted_model(emu3, converted, tmp_path):
    """`progemu generate` on a converted Emu3: batched CFG, a region edit, guidance maps; and the other two modes."""
    import json

    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((48, 40)) * 255).astype(np.uint8)).save(tmp_path / "p.png")
    mask = np.zeros((IMAGE, IMAGE), np.uint8)
    mask[:, : IMAGE // 2] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "image": "p.png", "prompt": "Moderate left pleural effusion."},
        {"id": "b", "image": "p.png", "prompt": "No pneumothorax.", "mask": "m.png"}]) + "\n")
    base = ["generate", "--model", str(converted), "--input", str(tmp_path / "in.jsonl"), "--no-progress",
            "--batch-size", "2", "--max-text-tokens", "4", "--device", "cpu", "--greedy"]
    assert main([*base, "--out", str(tmp_path / "cf"), "--cfg-image", "3.0"]) == 0
    for item in ("a", "b"):
        for name in ("counterfactual.png", "interpretation.txt", "guidance.npy", "guidance.png", "record.json"):
            assert (tmp_path / "cf" / item / name).is_file(), (item, name)
    rec = json.loads((tmp_path / "cf" / "b" / "record.json").read_text())
    assert rec["region"]["source"] == "mask"
    for mode in ("report2image", "image2report"):
        assert main([*base, "--out", str(tmp_path / mode), "--mode", mode]) == 0, mode


def test_model_owns_its_image_tokenizer(emu3, converted, tmp_path):
    """As Emu3's `model.vqmodel`: the converted model encodes and decodes itself (get_image_tokens == the native
    block), saves its VQ-VAE inside its folder, and the pipeline encodes through it."""
    from progemu.emu3_vq import Emu3GrayVQ
    from progemu.generation.pipeline import CounterfactualPipeline

    native, native_proc, _, _ = emu3
    gray = (np.random.default_rng(2).random((IMAGE, IMAGE)) * 255).astype(np.uint8)
    inputs = native_proc(text=["<image>"], images=[Image.fromarray(gray).convert("RGB")], return_tensors="pt")
    with torch.no_grad():
        ref = native.model.get_image_tokens(inputs["pixel_values"], inputs["image_sizes"]).long()
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    assert isinstance(model.vqmodel, Emu3GrayVQ) and not any("vq" in k for k in model.state_dict())
    pixels = torch.tensor(gray, dtype=torch.float32)[None, None] / 255 * 2 - 1  # (1, 1, H, W) in [-1, 1]
    ids = model.get_image_tokens(pixels)  # (1, image_length)
    lay = model.layout
    assert torch.equal(ids[0, lay.header_length:-2], ref)  # codes and <eol> rows as Emu3's get_image_tokens
    assert model.decode_image_tokens(ids).shape == (1, 1, IMAGE, IMAGE)
    model.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "vq" / "config.json").is_file()
    pipe = CounterfactualPipeline.from_pretrained(converted, device="cpu")
    assert isinstance(pipe.model.vqmodel, Emu3GrayVQ) and not hasattr(pipe.processor, "vq_model")
    codes = encode_images(pipe.model, pipe.processor, [gray.astype(np.float32) / 255])
    assert torch.equal(lay.codes_to_ids(codes)[0, lay.header_length:-2], ref)
