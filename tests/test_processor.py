"""ProgEmuProcessor: parsing generated ids, save/load (also of folders saved with training options), layout checks."""

import pytest
import torch
from transformers import AutoProcessor

import progemu  # noqa: F401  (registers the Auto classes)
from progemu.errors import LayoutError
from progemu.processing_progemu import ProgEmuProcessor
from tests._progemu_helpers import PROMPT, TEXT, make_processor, random_codes


@pytest.fixture(scope="module", params=["prompt_prior", "prior_prompt"])
def proc(request):
    return make_processor(sequence_order=request.param, max_length=400)


def test_parser_accepts_header_truncation_and_padding(proc):
    lay = proc.layout
    target = random_codes(proc)[0]
    block = lay.codes_to_ids(target).tolist()
    text = proc.encode_text(TEXT)
    for ids in (block + text + [lay.eos_id, lay.pad_id, lay.pad_id], block[lay.header_length:] + text):
        codes, out = proc.parse_generation(torch.tensor(ids))
        assert torch.equal(codes, target) and out == TEXT.lower()


def test_parser_malformed_outputs(proc):
    lay = proc.layout
    body = lay.codes_to_ids(random_codes(proc)[0]).tolist()[lay.header_length:]
    with pytest.raises(LayoutError, match="ends inside the image"):
        proc.parse_generation(body[:5])
    missing_eol = list(body)
    missing_eol[lay.grid_w] = lay.image_token_offset  # a code where row 1's <eol> belongs
    with pytest.raises(LayoutError, match=f"malformed.*offset {lay.header_length + lay.grid_w}"):
        proc.parse_generation(missing_eol)
    text_in_grid = list(body)
    text_in_grid[1] = proc.encode_text("effusion")[0]
    with pytest.raises(LayoutError, match="row 0, col 1"):
        proc.parse_generation(text_in_grid)
    with pytest.raises(LayoutError, match="non-text token"):
        proc.parse_generation(body + proc.encode_text("left") + [lay.image_token_offset + 3, lay.eos_id])
    with pytest.raises(LayoutError, match="header"):
        proc.parse_generation([lay.boi_id, lay.img_id] + body)


def test_save_load_round_trip(tmp_path):
    proc = make_processor(sequence_order="prior_prompt", max_length=300, ingest_options={"size": 32})
    proc.save_pretrained(tmp_path)
    for again in (ProgEmuProcessor.from_pretrained(tmp_path), _auto_processor(proc, tmp_path)):
        assert type(again) is ProgEmuProcessor
        assert again.to_dict() == proc.to_dict()
        prior = random_codes(proc)[0]
        assert again.build_generation_prompt("icg", prior, PROMPT) == proc.build_generation_prompt("icg", prior, PROMPT)
        assert again.get_ingest_options().size == 32


def test_folder_saved_with_training_options_loads(tmp_path):
    """Folders saved before the training options left the processor (the embedded demo model's) still load."""
    import json

    proc = make_processor(max_length=300)
    proc.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "processor_config.json").read_text())
    assert not {"mask_mode", "image_loss_weight", "text_loss_weight"} & set(cfg)
    cfg.update(mask_mode="image", image_loss_weight=2.0, text_loss_weight=0.5)
    (tmp_path / "processor_config.json").write_text(json.dumps(cfg))
    again = ProgEmuProcessor.from_pretrained(tmp_path)
    assert again.to_dict() == proc.to_dict() and not hasattr(again, "mask_mode")


def _auto_processor(proc, path):
    proc.model_config("tiny", num_hidden_layers=1).save_pretrained(path)  # AutoProcessor finds us through config.json
    return AutoProcessor.from_pretrained(path)


def test_mismatched_tokenizer_is_refused():
    proc = make_processor()
    small = dict(proc.vocab_layout, text_vocab_size=10)
    with pytest.raises(LayoutError, match="collide"):
        ProgEmuProcessor(proc.tokenizer, vocab_layout=small)
    with pytest.raises(LayoutError, match="model's vocab_layout differs"):
        make_processor(grid=2).check_model_config(proc.model_config("tiny"))
    with pytest.raises(LayoutError, match="sequence_order"):
        proc.check_model_config(proc.model_config("tiny", sequence_order="prior_prompt"))
    proc.check_model_config(proc.model_config("tiny", max_position_embeddings=333))
    assert proc.max_length == 333  # adopted from the model
