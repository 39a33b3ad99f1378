"""Text tokenizer helpers: train a byte-fallback BPE, wrap it with the special tokens, derive the layout.

The special tokens of `progemu.vocab.SPECIAL_TOKENS` get the first ids (0-7) of a tokenizer trained
here, then the 256 byte tokens ``<0x00>``...``<0xFF>`` (byte fallback: any character the merges do not
cover is spelt in UTF-8 bytes, so nothing is ever unknown), then the learned merges.

    from progemu.tokenization import train_bpe_tokenizer, layout_for_tokenizer
    tok = train_bpe_tokenizer(texts, vocab_size=1024)
    layout = layout_for_tokenizer(tok, codebook_size=512, grid_h=16, grid_w=16)
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from progemu.errors import LayoutError
from progemu.vocab import SPECIAL_TOKENS, VocabLayout

BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]
IMAGE_SPECIALS = ["boi", "img", "eol", "eof", "eoi"]
# Emu3's tokens for the layout's roles (its tokenizer config: bos, eos, pad; its processor: the image block)
EMU3_SPECIAL_TOKENS: dict[str, str] = {
    "bos": "<|extra_203|>", "eos": "<|extra_204|>", "pad": "<|endoftext|>", "boi": "<|image start|>",
    "img": "<|image token|>", "eol": "<|extra_200|>", "eof": "<|extra_201|>", "eoi": "<|image end|>",
}
EMU3_VISUAL_TOKEN = re.compile(r"^<\|visual token (\d{6})\|>$")


def _special_kwargs() -> dict:
    """`PreTrainedTokenizerFast` keyword arguments naming the package's special tokens."""
    return dict(bos_token=SPECIAL_TOKENS["bos"], eos_token=SPECIAL_TOKENS["eos"], pad_token=SPECIAL_TOKENS["pad"],
                extra_special_tokens=[SPECIAL_TOKENS[k] for k in IMAGE_SPECIALS])


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024, lowercase: bool = True,
                        min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer with byte fallback on ``texts`` and wrap it as a `PreTrainedTokenizerFast`.

    ``lowercase`` (default True): report casing carries no finding (MIMIC mixes sentence case and
    all-caps headers), and folding it spends a small vocabulary on words instead of case variants.
    Digits are split one by one, so sizes ("16*16") and measurements tokenise the same everywhere, and
    punctuation stands alone, so "lung." and "lung" share the word token.
    """
    specials = list(SPECIAL_TOKENS.values())
    if vocab_size < len(specials) + len(BYTE_TOKENS) + 32:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for merges after "
                         f"{len(specials) + len(BYTE_TOKENS)} special and byte tokens")
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token=None, fuse_unk=False))
    norms = [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " ")]
    if lowercase:
        norms.append(normalizers.Lowercase())
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    # printable ASCII is always in the alphabet, so digits and punctuation never fall back to bytes
    alphabet = [c.lower() if lowercase else c for c in string.printable if not c.isspace()] + ["▁"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, initial_alphabet=alphabet,
                                  special_tokens=specials + BYTE_TOKENS, show_progress=False)
    tok.train_from_iterator((t for t in texts if t and t.strip()), trainer=trainer)
    # The trainer registers the byte tokens as special added tokens; they are ordinary vocabulary
    # entries (decoded by ByteFallback, kept by skip_special_tokens), so drop them from the added list.
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in set(BYTE_TOKENS)]
    tok = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False,
                                   model_max_length=1_000_000, **_special_kwargs())


def add_special_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add the package's special tokens to an existing (e.g. a pretrained LLM's) tokenizer, in place."""
    tokenizer.add_special_tokens(_special_kwargs(), replace_extra_special_tokens=False)
    return tokenizer


def layout_for_tokenizer(tokenizer: PreTrainedTokenizerBase, codebook_size: int, grid_h: int,
                         grid_w: int, text_vocab_size: int | None = None) -> VocabLayout:
    """The `VocabLayout` of ``tokenizer`` plus a codebook of ``codebook_size`` codes on an h x w grid.

    ``text_vocab_size`` (default ``len(tokenizer)``) may be larger, e.g. a pretrained LLM's padded
    embedding matrix; the image codes start right after it.
    """
    special_ids = {}
    for name, token in SPECIAL_TOKENS.items():
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is None or tokenizer.convert_ids_to_tokens(tid) != token:
            raise LayoutError(f"tokenizer lacks the special token {token!r}; use progemu.tokenization."
                              "add_special_tokens or train it with train_bpe_tokenizer")
        special_ids[name] = int(tid)
    marker = tokenizer.encode(f"{grid_h}*{grid_w}", add_special_tokens=False)
    return VocabLayout(text_vocab_size=max(len(tokenizer), text_vocab_size or 0), codebook_size=codebook_size,
                       grid_h=grid_h, grid_w=grid_w, special_ids=special_ids, size_marker_ids=marker)


def emu3_layout(tokenizer: PreTrainedTokenizerBase, grid_h: int, grid_w: int,
                vocabulary_map: dict[str, int] | None = None, text_vocab_size: int | None = None) -> VocabLayout:
    """The `VocabLayout` of an Emu3 tokenizer: Emu3's own token ids, kept as they are.

    Code ``c`` is the token ``<|visual token c:06d|>`` (``vocabulary_map``, Emu3's ``config.vocabulary_map``,
    default the tokenizer's vocabulary); these ids must be contiguous and in code order, as in Emu3's
    tokenizer. bos / eos / pad are the tokenizer's own; the image block uses Emu3's tokens
    (`EMU3_SPECIAL_TOKENS`) and ``h*w`` tokenised as text, as ``Emu3Processor`` writes it.
    """
    vocab = dict(vocabulary_map) if vocabulary_map is not None else tokenizer.get_vocab()
    visual = sorted((int(m.group(1)), int(tid)) for tok, tid in vocab.items() if (m := EMU3_VISUAL_TOKEN.match(tok)))
    if not visual:
        raise LayoutError("the vocabulary has no '<|visual token NNNNNN|>' tokens: not an Emu3 tokenizer")
    start = visual[0][1]
    broken = [(code, tid) for k, (code, tid) in enumerate(visual) if code != k or tid != start + k]
    if broken:
        raise LayoutError(f"Emu3 visual tokens are not contiguous from code 0 at id {start}: first break at code "
                          f"{broken[0][0]} (id {broken[0][1]})")
    names = dict(EMU3_SPECIAL_TOKENS)
    for role in ("bos", "eos", "pad"):  # a tokenizer that names its own wins
        names[role] = getattr(tokenizer, f"{role}_token", None) or names[role]
    special_ids = {}
    for role, token in names.items():
        tid = vocab.get(token, tokenizer.convert_tokens_to_ids(token))
        if tid is None or tokenizer.convert_ids_to_tokens(int(tid)) != token:
            raise LayoutError(f"the Emu3 tokenizer lacks {token!r} (its {role!r} token)")
        special_ids[role] = int(tid)
    marker = tokenizer.encode(f"{grid_h}*{grid_w}", add_special_tokens=False)
    return VocabLayout(text_vocab_size=max(len(tokenizer), start + len(visual), text_vocab_size or 0),
                       codebook_size=len(visual), grid_h=grid_h, grid_w=grid_w, special_ids=special_ids,
                       size_marker_ids=marker, image_token_start=start)


__all__ = ["BYTE_TOKENS", "EMU3_SPECIAL_TOKENS", "add_special_tokens", "emu3_layout", "layout_for_tokenizer",
           "train_bpe_tokenizer"]
