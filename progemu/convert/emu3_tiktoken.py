"""Emu3's original text tokenizer (tiktoken BPE ranks + remote code) -> a transformers fast tokenizer, offline.

    from progemu.convert.emu3_tiktoken import convert_tiktoken_tokenizer
    tok = convert_tiktoken_tokenizer("progemu/lm")   # a PreTrainedTokenizerFast with Emu3's ids

Emu3's ``Emu3ForCausalLM`` folders (``BAAI/Emu3-Gen``, ProgEmu's ``massaki75/progemu``) ship ``emu3.tiktoken``
(one ``base64(token) rank`` per line), ``emu3_vision_tokens.txt`` (the image tokens, one per line) and the code of
their ``tokenization_emu3.py``, which is never run here. That code gives the special tokens the ids right after
the BPE ranks, in this order: ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, ``<|extra_0|>`` ...
``<|extra_204|>``, then the lines of ``emu3_vision_tokens.txt``; it splits text with `EMU3_PATTERN` (Qwen's) after
NFC normalisation. transformers' `TikTokenConverter` turns the ranks into byte-level BPE merges; the pattern,
NFC and the special tokens are Emu3's, and every special token's id is checked after conversion.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from progemu.errors import ConversionError

TIKTOKEN_FILE = "emu3.tiktoken"
VISION_TOKENS_FILE = "emu3_vision_tokens.txt"
# tokenization_emu3.PAT_STR: Qwen's pre-tokenizer (single digits; GPT-2's byte-level regex splits differently)
EMU3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
FIXED_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in range(205)))
ROLE_DEFAULTS = {"bos_token": "<|extra_203|>", "eos_token": "<|extra_204|>", "pad_token": "<|endoftext|>"}


def has_tiktoken_tokenizer(folder: str | Path) -> bool:
    """Whether ``folder`` holds Emu3's original tokenizer file."""
    return (Path(folder) / TIKTOKEN_FILE).is_file()


def read_ranks(path: str | Path) -> dict[bytes, int]:
    """The BPE ranks of a tiktoken file; read here, not by tiktoken, whose loader caches files by path in /tmp."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(path, "missing: Emu3's original text tokenizer (tiktoken BPE ranks)")
    ranks = {}
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as err:
            raise ConversionError(path, f"line {n} is not 'base64-token rank': {line[:60]!r}") from err
    if not ranks:
        raise ConversionError(path, "has no BPE ranks")
    if sorted(ranks.values()) != list(range(len(ranks))):  # Emu3's code asserts the same (ids then follow on)
        raise ConversionError(path, f"ranks are not 0..{len(ranks) - 1}, each once")
    return ranks


def emu3_special_tokens(folder: str | Path, config: dict[str, Any] | None = None) -> list[str]:
    """Emu3's special tokens in id order: the fixed ones, then the lines of the vision-tokens file."""
    name = Path(str((config or {}).get("special_tokens_file") or VISION_TOKENS_FILE)).name
    path = Path(folder) / name
    if not path.is_file():
        raise ConversionError(path, "missing: Emu3's tiktoken tokenizer lists its image and visual tokens there")
    vision = [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    clash = sorted(set(vision) & set(FIXED_SPECIAL_TOKENS))
    if clash or len(set(vision)) != len(vision):
        raise ConversionError(path, f"repeats special tokens {clash[:3] or 'of its own'}")
    return [*FIXED_SPECIAL_TOKENS, *vision]


def convert_tiktoken_tokenizer(folder: str | Path) -> Any:
    """Emu3's original tokenizer in ``folder`` -> a `PreTrainedTokenizerFast` with the same ids (see module doc)."""
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    folder = Path(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    ranks = read_ranks(folder / TIKTOKEN_FILE)
    specials = emu3_special_tokens(folder, config)

    class _Converter(TikTokenConverter):  # the ranks read above, not tiktoken's path-keyed cache
        def load_tiktoken_bpe(self, _url: str) -> dict[bytes, int]:
            return ranks

    backend = _Converter(vocab_file=str(folder / TIKTOKEN_FILE), pattern=EMU3_PATTERN,
                         extra_special_tokens=specials).converted()
    backend.normalizer = normalizers.NFC()  # Emu3's tokenize() NFC-normalises before encoding
    roles = {role: config.get(role) or default for role, default in ROLE_DEFAULTS.items()}
    roles = {role: t["content"] if isinstance(t, dict) else t for role, t in roles.items()}
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **roles)
    want = {t: len(ranks) + k for k, t in enumerate(specials)}
    wrong = [(t, tok.convert_tokens_to_ids(t), i) for t, i in want.items() if tok.convert_tokens_to_ids(t) != i]
    if wrong or len(tok) != len(ranks) + len(specials):
        raise ConversionError(folder / TIKTOKEN_FILE, f"converted ids differ from Emu3's: (token, got, want) "
                                                      f"{wrong[:3]}, {len(tok)} ids for {len(want) + len(ranks)}")
    return tok


__all__ = ["EMU3_PATTERN", "FIXED_SPECIAL_TOKENS", "TIKTOKEN_FILE", "VISION_TOKENS_FILE", "convert_tiktoken_tokenizer",
           "emu3_special_tokens", "has_tiktoken_tokenizer", "read_ranks"]
