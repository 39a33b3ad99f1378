"""Tiny random models and layouts shared by the generation tests (no training, no files)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from progemu.vocab import SPECIAL_TOKENS, VocabLayout


def tiny_layout(grid: int = 4, codebook: int = 24, text_vocab: int = 40) -> VocabLayout:
    specials = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    return VocabLayout(text_vocab_size=text_vocab, codebook_size=codebook, grid_h=grid, grid_w=grid,
                       special_ids=specials, size_marker_ids=[20, 21, 22])


def tiny_model(layout: VocabLayout, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=layout.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=layout.pad_id, bos_token_id=layout.bos_id, eos_token_id=layout.eos_id)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a sharper random model: greedy ties become impossible, outputs vary with inputs
        model.lm_head.weight.mul_(20)
    return model


def prompt_for(layout: VocabLayout, codes: torch.Tensor, text: list[int]) -> list[int]:
    """<bos> IMG(prior) text -- the ICG prompt order, ending right before the generated image."""
    return [layout.bos_id, *layout.codes_to_ids(codes).tolist(), *text]


def make_model_dir(path, image_size: int = 32, codebook: int = 32, seed: int = 0):
    """A complete random model folder (tokenizer, processor, VQ in vq/, transformer) as `save_pretrained` writes."""
    from progemu.configuration_vq import ProgEmuVQConfig
    from progemu.modeling_progemu import ProgEmuForCausalLM
    from progemu.modeling_vq import ProgEmuVQModel
    from progemu.processing_progemu import ProgEmuProcessor
    from progemu.tokenization import train_bpe_tokenizer

    texts = ["moderate left pleural effusion has developed.", "the right lung is clear.",
             "cardiomegaly is unchanged.", "new consolidation in the right lower lung."] * 20
    tok = train_bpe_tokenizer(texts, vocab_size=300, min_frequency=1)
    torch.manual_seed(seed)
    vq = ProgEmuVQModel(ProgEmuVQConfig(base_channels=8, channel_multipliers=(1, 1, 1, 1), embed_dim=8,
                                        codebook_size=codebook, codebook_dim=8, image_size=image_size,
                                        vq_kmeans_init=False, encoder_res_blocks=1, decoder_res_blocks=1)).eval()
    grid = image_size // vq.downsample_factor
    proc = ProgEmuProcessor(tok, codebook_size=codebook, grid_h=grid, grid_w=grid, ingest_options={"size": image_size})
    cfg = proc.model_config("tiny", vq, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2)
    model = ProgEmuForCausalLM(cfg).eval()
    model.set_image_tokenizer(vq)  # saved in vq/ with the model
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path
