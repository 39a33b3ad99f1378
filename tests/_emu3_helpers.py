"""Tiny random Emu3 checkpoints built with transformers' own classes, in both layouts `progemu convert emu3` reads:
transformers' format (`Emu3ForConditionalGeneration` + `Emu3Processor`) and Emu3's original one (an
`Emu3ForCausalLM` folder with Llama key names and an original-style config, plus a vision-tokenizer folder)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Emu3Config,
    Emu3ForConditionalGeneration,
    Emu3ImageProcessor,
    Emu3Processor,
    Emu3TextConfig,
    Emu3VQVAEConfig,
    PreTrainedTokenizerFast,
)

CODEBOOK = 64
IMAGE = 32  # px; spatial factor 8 -> a 4x4 code grid
TEXTS = ["Moderate left pleural effusion has developed in the left lower lung.", "No pneumothorax.",
         "There is blunting of the left costophrenic angle, indicating a new pleural effusion.", "64*64 32*32 4*4"]
EXTRA = {"image_token": "<image>", "boi_token": "<|image start|>", "eoi_token": "<|image end|>",
         "image_wrapper_token": "<|image token|>", "eof_token": "<|extra_201|>"}


def make_emu3_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with Emu3's special tokens, then its visual tokens at the end of the vocabulary."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(TEXTS, trainer=trainer)
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(200, 205)]
                           + ["<|image token|>", "<|image start|>", "<|image end|>", "<image>"])
    tok.add_special_tokens([f"<|visual token {i:06d}|>" for i in range(CODEBOOK)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|extra_203|>", eos_token="<|extra_204|>",
                                   pad_token="<|endoftext|>", extra_special_tokens=EXTRA,
                                   clean_up_tokenization_spaces=False)


def make_emu3(seed: int = 0) -> tuple[Emu3ForConditionalGeneration, Emu3Processor]:
    tok = make_emu3_tokenizer()
    text = Emu3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    vq = Emu3VQVAEConfig(codebook_size=CODEBOOK, embed_dim=4, latent_channels=4, base_channels=32,
                         channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[], hidden_size=32)
    torch.manual_seed(seed)
    model = Emu3ForConditionalGeneration(Emu3Config(text_config=text, vq_config=vq,
                                                    vocabulary_map=tok.get_vocab())).eval()
    with torch.no_grad():  # a sharper random model: greedy decoding has no near-ties between implementations
        model.lm_head.weight.mul_(20)
    image_processor = Emu3ImageProcessor(min_pixels=IMAGE * IMAGE, max_pixels=IMAGE * IMAGE, spatial_factor=8)
    return model, Emu3Processor(image_processor=image_processor, tokenizer=tok)


def save_transformers_format(model: Emu3ForConditionalGeneration, processor: Emu3Processor, path: Path) -> Path:
    model.save_pretrained(path, max_shard_size="100KB")  # several shards: the converter reads one at a time
    processor.save_pretrained(path)
    return path


def save_original_format(model: Emu3ForConditionalGeneration, processor: Emu3Processor,
                         path: Path) -> tuple[Path, Path]:
    """Emu3's original layout: ``lm/`` (Llama names, model_type "Emu3", two shards) and ``vq/`` (bare names)."""
    lm, vq = path / "lm", path / "vq"
    lm.mkdir(parents=True)
    vq.mkdir(parents=True)
    state = model.state_dict()
    text = {k.replace("model.text_model.", "model.", 1): v.clone() for k, v in state.items()
            if k.startswith(("model.text_model.", "lm_head."))}
    keys = sorted(text)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in halves.items():
        save_file({k: text[k] for k in part}, str(lm / name), metadata={"format": "pt"})
    (lm / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, part in halves.items() for k in part}}))
    tc = model.config.text_config
    (lm / "config.json").write_text(json.dumps({
        "architectures": ["Emu3ForCausalLM"], "model_type": "Emu3", "vocab_size": tc.vocab_size,
        "hidden_size": tc.hidden_size, "intermediate_size": tc.intermediate_size,
        "num_hidden_layers": tc.num_hidden_layers, "num_attention_heads": tc.num_attention_heads,
        "num_key_value_heads": tc.num_key_value_heads, "hidden_act": "silu",
        "max_position_embeddings": tc.max_position_embeddings, "rms_norm_eps": tc.rms_norm_eps,
        "rope_theta": 10000.0, "rope_scaling": None, "attention_dropout": 0.1, "pad_token_id": tc.pad_token_id,
        "bos_token_id": tc.bos_token_id, "eos_token_id": tc.eos_token_id, "tie_word_embeddings": False}))
    processor.tokenizer.save_pretrained(lm)
    save_file({k[len("model.vqmodel."):]: v.clone() for k, v in state.items() if k.startswith("model.vqmodel.")},
              str(vq / "model.safetensors"), metadata={"format": "pt"})
    c = model.config.vq_config
    (vq / "config.json").write_text(json.dumps({
        "architectures": ["Emu3VisionVQModel"], "model_type": "Emu3VisionVQ", "codebook_size": c.codebook_size,
        "embed_dim": c.embed_dim, "z_channels": c.latent_channels, "double_z": c.double_latent,
        "in_channels": c.in_channels, "out_channels": c.out_channels,
        "temporal_downsample_factor": c.temporal_downsample_factor, "ch": c.base_channels,
        "ch_mult": list(c.channel_multiplier), "num_res_blocks": c.num_res_blocks,
        "attn_resolutions": list(c.attn_resolutions), "dropout": 0.0}))
    ip = processor.image_processor
    (vq / "preprocessor_config.json").write_text(json.dumps({"image_mean": list(ip.image_mean),
                                                             "image_std": list(ip.image_std)}))
    return lm, vq
