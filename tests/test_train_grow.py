"""train/grow.py: a deeper model that computes exactly what the input computes, and then learns with its new blocks."""

import pytest
import torch
from safetensors.torch import load_file

from progemu.errors import ProgEmuError
from tests._gen_helpers import make_model_dir
from train.grow import layer_plan, main


@pytest.mark.parametrize("old,new", [(6, 10), (2, 5), (4, 4), (3, 9)])
def test_layer_plan_keeps_every_block_in_order_and_the_last_last(old, new):
    plan = layer_plan(old, new)
    assert len(plan) == new and sum(fresh for _, fresh in plan) == new - old
    assert [i for i, fresh in plan if not fresh] == list(range(old))  # each old block once, in order
    assert [i for i, _ in plan] == sorted(i for i, _ in plan)  # a new block follows the block it copies
    assert plan[-1] == (old - 1, False)
    with pytest.raises(ProgEmuError, match="fewer"):
        layer_plan(old, old - 1)


def test_grown_model_computes_the_same_logits_and_trains_its_new_blocks(tmp_path):
    from transformers import AutoModelForCausalLM, AutoProcessor

    import progemu  # noqa: F401  (registers the Auto classes)

    src = make_model_dir(tmp_path / "src", seed=3)
    main([str(src), str(tmp_path / "out"), "--layers", "5"])
    small = AutoModelForCausalLM.from_pretrained(src).eval()
    big = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert big.config.text_config.num_hidden_layers == 5 and len(big.model.layers) == 5
    ids = torch.randint(0, small.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(big(ids).logits, small(ids).logits)  # the new blocks add exactly zero
    # the old blocks are copied in order; each new one is the block before it with zeroed output projections
    w, w_src = load_file(tmp_path / "out" / "model.safetensors"), load_file(src / "model.safetensors")
    for j, (i, fresh) in enumerate(layer_plan(2, 5)):
        for name in ("self_attn.q_proj.weight", "self_attn.o_proj.weight", "mlp.down_proj.weight"):
            got, want = w[f"model.layers.{j}.{name}"], w_src[f"model.layers.{i}.{name}"]
            zeroed = fresh and ("o_proj" in name or "down_proj" in name)
            assert torch.equal(got, torch.zeros_like(want) if zeroed else want), (j, name)
    layout = AutoProcessor.from_pretrained(tmp_path / "out").vocab_layout
    assert layout == AutoProcessor.from_pretrained(src).vocab_layout
    assert big.vqmodel is not None  # src's VQ, in vq/
    assert "grown from" in (tmp_path / "out" / "README.md").read_text()
    # one optimiser step gives the new blocks outputs: the grown model can learn what the small one could not
    big.train()
    opt = torch.optim.SGD(big.parameters(), lr=0.1)
    big(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    new = [j for j, (_, fresh) in enumerate(layer_plan(2, 5)) if fresh]
    assert all(big.model.layers[j].self_attn.o_proj.weight.abs().sum() > 0 for j in new)
