"""Small tokenizers, processors and ProgEmu models shared by the model / processor / tokenizer tests."""

from __future__ import annotations

import functools

import torch

from progemu.configuration_progemu import ProgEmuConfig
from progemu.modeling_progemu import ProgEmuForCausalLM
from progemu.processing_progemu import ProgEmuProcessor
from progemu.tokenization import train_bpe_tokenizer
from tokenizer.train_text_tokenizer import synth_texts

PROMPT = "Moderate left pleural effusion has developed in the left lower lung. No pneumothorax. Heart size is normal."
TEXT = "There is blunting of the left costophrenic angle, indicating a new pleural effusion."


@functools.lru_cache(maxsize=1)
def _tokenizer():
    return train_bpe_tokenizer(list(synth_texts(60, seed=1)) + [PROMPT, TEXT], vocab_size=600)


def make_tokenizer():
    """A fresh copy (tests may mutate tokenizers) of a small BPE tokenizer trained on SynthCXR-style text."""
    import copy

    return copy.deepcopy(_tokenizer())


def make_processor(grid: int = 4, codebook: int = 32, **kwargs) -> ProgEmuProcessor:
    return ProgEmuProcessor(make_tokenizer(), codebook_size=codebook, grid_h=grid, grid_w=grid, **kwargs)


def make_model(proc: ProgEmuProcessor, seed: int = 0, **overrides) -> ProgEmuForCausalLM:
    torch.manual_seed(seed)
    kw = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512)
    kw.update(overrides)
    return ProgEmuForCausalLM(ProgEmuConfig.from_preset("tiny", layout=proc.layout,
                                                        sequence_order=proc.sequence_order, **kw)).eval()


def random_codes(proc: ProgEmuProcessor, n: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lay = proc.layout
    return torch.randint(0, lay.codebook_size, (n, lay.grid_h, lay.grid_w), generator=g)
