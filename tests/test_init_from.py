"""``init_from`` loads strictly: a folder or checkpoint whose weights miss a model key or carry a foreign one is an
error that names the keys (a missing weight would otherwise stay random without a word)."""

from __future__ import annotations

import json

import pytest
import torch
from _train_helpers import TINY_MODEL, make_processor
from safetensors.torch import load_file, save_file

from progemu.errors import ProgEmuError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from progemu.processing_progemu import ProgEmuProcessor
    from train.config import ModelArgs
    from train.run import build_model

    root = tmp_path_factory.mktemp("init")
    proc = ProgEmuProcessor.from_pretrained(str(make_processor(root / "proc")))
    torch.manual_seed(0)
    model = build_model(ModelArgs(model_overrides=TINY_MODEL), proc, 256)
    model.save_pretrained(root / "whole")
    model.save_pretrained(root / "sharded", max_shard_size="100KB")  # no model.safetensors: the checkpoint path
    return root, proc, model


def _load(src, proc):
    from train.config import ModelArgs
    from train.run import build_model

    return build_model(ModelArgs(init_from=str(src)), proc, 256)


def test_a_complete_folder_or_checkpoint_loads_the_same_weights(saved):
    root, proc, model = saved
    want = model.state_dict()
    for name in ("whole", "sharded"):
        got = _load(root / name, proc).state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), name


def test_missing_or_unexpected_keys_are_named(saved, tmp_path):
    import shutil

    root, proc, _ = saved
    whole = tmp_path / "whole"
    shutil.copytree(root / "whole", whole)
    weights = load_file(whole / "model.safetensors")
    victim = sorted(k for k in weights if "layers.1." in k)[0]
    save_file({**{k: v for k, v in weights.items() if k != victim}, "extra.bias": torch.zeros(3)},
              whole / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ProgEmuError, match=rf"missing \['{victim}'\].*unexpected \['extra.bias'\]"):
        _load(whole, proc)
    sharded = tmp_path / "sharded"
    shutil.copytree(root / "sharded", sharded)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shard = index["weight_map"][victim]
    part = load_file(sharded / shard)
    save_file({k: v for k, v in part.items() if k != victim}, sharded / shard, metadata={"format": "pt"})
    del index["weight_map"][victim]
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ProgEmuError, match=rf"{sharded}.*missing \['{victim}'\]"):
        _load(sharded, proc)
