"""VocabLayout: code grid <-> ids round trips, structural tokens where the layout says, clear errors."""

import pytest
import torch

from progemu.errors import LayoutError
from progemu.tokenization import layout_for_tokenizer
from progemu.vocab import SPECIAL_TOKENS, VocabLayout
from tests._progemu_helpers import make_tokenizer

SPECIALS = {name: i for i, name in enumerate(SPECIAL_TOKENS)}


def layout(h: int, w: int, codebook: int = 50, marker=(20, 21, 22)) -> VocabLayout:
    return VocabLayout(text_vocab_size=40, codebook_size=codebook, grid_h=h, grid_w=w, special_ids=SPECIALS,
                       size_marker_ids=list(marker))


@pytest.mark.parametrize("h,w", [(1, 1), (4, 4), (3, 5), (8, 2), (16, 16)])
def test_round_trip(h, w):
    lay = layout(h, w)
    codes = torch.randint(0, lay.codebook_size, (3, h, w))
    ids = lay.codes_to_ids(codes)
    assert ids.shape == (3, lay.image_length)
    assert torch.equal(lay.ids_to_codes(ids), codes)
    assert torch.equal(lay.ids_to_codes(ids[1]), codes[1])  # no batch dimension
    assert lay.image_length == lay.header_length + h * (w + 1) + 2


@pytest.mark.parametrize("h,w", [(2, 3), (5, 4)])
def test_structural_tokens_where_the_layout_says(h, w):
    lay = layout(h, w, marker=(20, 21))
    ids = lay.codes_to_ids(torch.randint(0, lay.codebook_size, (h, w))).tolist()
    assert ids[0] == lay.boi_id and ids[1:3] == [20, 21] and ids[3] == lay.img_id
    assert lay.header_length == 4
    for r in range(h):
        row_start = lay.header_length + r * (w + 1)
        assert all(lay.image_token_offset <= t < lay.vocab_size for t in ids[row_start: row_start + w])
        assert ids[row_start + w] == lay.eol_id
        assert lay.forced_token(row_start + w) == lay.eol_id
        assert all(lay.forced_token(row_start + c) is None for c in range(w))
    assert ids[-2:] == [lay.eof_id, lay.eoi_id]
    offs = lay.code_offsets()
    assert offs.shape == (h, w)
    is_code = lay.is_image_code(torch.tensor(ids))
    assert set(offs.flatten().tolist()) == set(is_code.nonzero().flatten().tolist())


def test_masks_and_find_images():
    lay = layout(2, 2)
    block = lay.codes_to_ids(torch.zeros(2, 2, dtype=torch.long))
    seq = torch.cat([torch.tensor([lay.bos_id, 30, 31]), block, torch.tensor([32]), block, torch.tensor([lay.eos_id])])
    starts = [3, 3 + lay.image_length + 1]
    assert lay.find_images(seq) == [(s, s + lay.image_length) for s in starts]
    text = lay.is_text(seq)
    assert text[:3].all() and not text[3: 3 + lay.image_length][[0, -1, -2]].any()
    assert not lay.is_text(torch.tensor([lay.pad_id])).any()


def test_serialisation_round_trip():
    lay = layout(3, 4)
    again = VocabLayout.from_dict(lay.to_dict())
    assert again.to_dict() == lay.to_dict() and again.image_length == lay.image_length


def test_errors():
    lay = layout(2, 3)
    with pytest.raises(LayoutError, match="does not match"):
        lay.codes_to_ids(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(LayoutError, match="outside"):
        lay.codes_to_ids(torch.full((2, 3), lay.codebook_size))
    ids = lay.codes_to_ids(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(LayoutError, match="expects"):
        lay.ids_to_codes(ids[:-1])
    bad = ids.clone()
    eol_at = lay.header_length + 3
    bad[eol_at] = lay.image_token_offset
    with pytest.raises(LayoutError, match=f"offset {eol_at}"):
        lay.ids_to_codes(bad)
    bad = ids.clone()
    bad[lay.header_length + 1] = 25  # a text id where a code belongs
    with pytest.raises(LayoutError, match="row 0, col 1"):
        lay.ids_to_codes(bad)
    with pytest.raises(LayoutError, match="lacks special"):
        VocabLayout(text_vocab_size=40, codebook_size=5, grid_h=1, grid_w=1,
                    special_ids={k: v for k, v in SPECIALS.items() if k != "eol"})
    with pytest.raises(LayoutError, match="outside the text range"):
        VocabLayout(text_vocab_size=4, codebook_size=5, grid_h=1, grid_w=1, special_ids=SPECIALS)


def test_layout_for_tokenizer():
    tok = make_tokenizer()
    lay = layout_for_tokenizer(tok, codebook_size=64, grid_h=8, grid_w=6)
    assert lay.text_vocab_size == len(tok) and lay.image_token_offset == len(tok)
    assert {k: tok.convert_ids_to_tokens(v) for k, v in lay.special_ids.items()} == SPECIAL_TOKENS
    assert tok.decode(lay.size_marker_ids).strip() == "8*6"
    bigger = layout_for_tokenizer(tok, 64, 8, 6, text_vocab_size=len(tok) + 10)
    assert bigger.image_token_offset == len(tok) + 10
