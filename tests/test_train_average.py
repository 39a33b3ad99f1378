"""train/average.py: the weighted mean of checkpoints, written as a model folder that reloads with those weights."""

import pytest
import torch
from safetensors.torch import load_file

from progemu.errors import ProgEmuError
from tests._gen_helpers import make_model_dir
from train.average import average, main


def test_average_is_the_weighted_mean_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM, AutoProcessor

    import progemu  # noqa: F401  (registers the Auto classes)

    a, b = make_model_dir(tmp_path / "a", seed=0), make_model_dir(tmp_path / "b", seed=1)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)  # two different models, or the test proves nothing
    main([str(a), str(b), str(tmp_path / "out"), "--weights", "3", "1"])
    want = {k: 0.75 * wa[k] + 0.25 * wb[k] for k in wa}
    got = load_file(tmp_path / "out" / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)
    # the folder loads with from_pretrained and computes what a model holding the mean weights computes
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ref = AutoModelForCausalLM.from_pretrained(a).eval()
    ref.load_state_dict(want, strict=False)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref(ids).logits, atol=1e-5)
    layout = AutoProcessor.from_pretrained(tmp_path / "out").vocab_layout
    assert layout == AutoProcessor.from_pretrained(a).vocab_layout
    assert model.vqmodel is not None  # the first input's VQ in vq/, the model's image tokenizer
    card = (tmp_path / "out" / "README.md").read_text()
    assert "average of" in card and f"{a}: `not recorded`" in card
    same = average([a, a], [1.0, 1.0])  # a model averaged with itself is itself
    assert all(torch.equal(same[k], wa[k]) for k in wa)


def test_average_refuses_other_architectures_and_bad_weights(tmp_path):
    a, other = make_model_dir(tmp_path / "a"), make_model_dir(tmp_path / "other", codebook=16)
    with pytest.raises(ProgEmuError, match="other"):
        average([a, other], [1.0, 1.0])
    with pytest.raises(ProgEmuError, match="weights"):
        average([a, a], [1.0, -1.0])
    with pytest.raises(ProgEmuError, match="one weight per"):
        average([a, a], [1.0])
