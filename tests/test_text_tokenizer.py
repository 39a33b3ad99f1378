"""Text tokenizer: byte-fallback BPE with the package's special tokens, trained and reloaded by the script."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from progemu.tokenization import BYTE_TOKENS, add_special_tokens, layout_for_tokenizer, train_bpe_tokenizer
from progemu.vocab import SPECIAL_TOKENS
from tests._progemu_helpers import make_tokenizer
from tokenizer.train_text_tokenizer import main, synth_texts

ODD = "Trace effusion (2.5 cm) at 16*16 — naïve 漢字 émoji 🫁; résumé"


def test_script_writes_a_loadable_tokenizer(tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_text("Pneumoperitoneum is unusual here.\nSecond line of text.\n", encoding="utf-8")
    out = tmp_path / "tok"
    assert main(["--out", str(out), "--vocab-size", "700", "--synth-pairs", "60", "--text-file", str(extra)]) == 0
    tok = AutoTokenizer.from_pretrained(out)
    assert 8 + len(BYTE_TOKENS) < len(tok) <= 700
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS.values()] == list(range(len(SPECIAL_TOKENS)))
    assert main(["--out", str(out), "--vocab-size", "700", "--synth-pairs", "10"]) == 0  # replaces atomically
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tok.")]


def test_byte_fallback_round_trip_and_lowercase():
    tok = make_tokenizer()
    ids = tok.encode(ODD, add_special_tokens=False)
    assert tok.unk_token_id is None or tok.unk_token_id not in ids
    assert tok.decode(ids) == ODD.lower()
    assert tok.decode(ids, skip_special_tokens=True) == ODD.lower()  # byte tokens are not "special"
    assert any(t.startswith("<0x") for t in tok.convert_ids_to_tokens(ids))  # the CJK went through bytes


def test_keep_case():
    tok = train_bpe_tokenizer(list(synth_texts(40)), vocab_size=500, lowercase=False)
    assert tok.decode(tok.encode(ODD, add_special_tokens=False)) == ODD


def test_special_tokens_are_atomic():
    tok = make_tokenizer()
    text = SPECIAL_TOKENS["boi"] + "mild edema" + SPECIAL_TOKENS["eos"]
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[0] == tok.convert_tokens_to_ids(SPECIAL_TOKENS["boi"]) and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "mild edema"
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"],
                                                             SPECIAL_TOKENS["pad"])


def test_add_special_tokens_to_a_foreign_tokenizer():
    # a tokenizer trained elsewhere (as a pretrained LLM's) knows none of the package's special tokens
    raw = Tokenizer(models.BPE(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(list(synth_texts(20)), trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]))
    foreign = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    n = len(foreign)
    before = foreign.encode("mild edema", add_special_tokens=False)
    add_special_tokens(foreign)
    assert len(foreign) == n + len(SPECIAL_TOKENS)
    assert foreign.encode("mild edema", add_special_tokens=False) == before  # text ids keep their meaning
    lay = layout_for_tokenizer(foreign, codebook_size=16, grid_h=2, grid_w=2)
    assert all(n <= i < len(foreign) for i in lay.special_ids.values())
    n2 = len(add_special_tokens(foreign))
    assert n2 == len(foreign)  # idempotent


def test_too_small_vocab_errors():
    with pytest.raises(ValueError, match="no room"):
        train_bpe_tokenizer(["a b c"], vocab_size=100)


def test_script_reads_data_sources_train_split_only(tmp_path):
    from tests.formats import icg_pair_json, write_icg_pair, write_mimic_cxr
    from tokenizer.train_text_tokenizer import record_texts

    icg = tmp_path / "icg" / "mimic_cxr" / "pa"
    write_icg_pair(icg, "p1")
    held_out = icg_pair_json("p2", split="test") | {"progression-description": "Zzyzx held out prompt."}
    write_icg_pair(icg, "p2", data=held_out)
    texts = list(record_texts(str(tmp_path / "icg"), "icg-cxr"))
    assert "Mild pleural effusion has developed in the left lower lung." in texts
    assert "Small left effusion." in texts and not any("Zzyzx" in t for t in texts)
    cxr = write_mimic_cxr(tmp_path / "mimic")
    assert any(t.strip() for t in record_texts(str(cxr), "mimic-cxr"))
    out = tmp_path / "tok"
    assert main(["--out", str(out), "--vocab-size", "400", "--min-frequency", "1",
                 "--data", f"{tmp_path / 'icg'}:icg-cxr", "--data", f"{cxr}:mimic-cxr"]) == 0
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.decode(tok.encode("left effusion", add_special_tokens=False)) == "left effusion"
