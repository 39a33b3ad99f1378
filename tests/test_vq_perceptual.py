"""The classifier-feature perceptual loss of the VQ tokenizer and fine-tuning from a trained tokenizer:
zero on identical images, larger for larger changes, gradients reach only the reconstruction (the networks stay
frozen, BatchNorm statistics included), and a fine-tune run starts from the given weights and uses the loss."""

from __future__ import annotations

import json

import pytest
import torch

from progemu.classifier import Evaluator, EvaluatorSpec
from tokenizer.perceptual import ClassifierFeatureLoss


@pytest.fixture
def nets(tmp_path):
    torch.manual_seed(0)
    for name, n in (("findings", 3), ("age_group", 2)):
        ev = Evaluator(EvaluatorSpec(name=name, kind="multiclass", classes=[str(i) for i in range(n)], image_size=32,
                                     width=4, heldout={"accuracy": 1.0}))
        for m in ev.net.modules():  # non-trivial running statistics, so a BatchNorm update would show
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
        ev.save(tmp_path / "perc")
    return tmp_path / "perc"


def test_zero_on_identical_and_growing_with_the_change(nets):
    loss = ClassifierFeatureLoss(nets)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    noise = torch.randn_like(x)
    small, large = float(loss(x + 0.05 * noise, x)), float(loss(x + 0.5 * noise, x))
    assert 0 < small < large


def test_networks_frozen_gradient_reaches_the_reconstruction_only(nets):
    loss = ClassifierFeatureLoss(nets)
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    loss.train()  # a training loop calling .train() on everything must not unfreeze BatchNorm
    x = torch.rand(2, 1, 48, 48) * 2 - 1  # another size than the networks': resized inside
    rec = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    loss(rec, x).backward()
    assert rec.grad is not None and rec.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())
    for k, v in loss.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_missing_networks_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_evaluators"):
        ClassifierFeatureLoss(tmp_path)


def test_fine_tune_starts_from_init_and_logs_the_loss(nets, tmp_path):
    from progemu.modeling_vq import ProgEmuVQModel
    from tests.test_vq import _cfg
    from tokenizer.train_vq import train

    train(_cfg(4), tmp_path / "base", progress=False)
    base = ProgEmuVQModel.from_pretrained(tmp_path / "base")
    cfg = _cfg(2).replace(init=str(tmp_path / "base"), perceptual=str(nets), perceptual_weight=1.0, lr=0.0,
                          warmup_steps=1)
    train(cfg, tmp_path / "ft", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "ft" / "train_log.jsonl").read_text().splitlines()]
    assert all(r["perc"] > 0 for r in rows)
    ft = ProgEmuVQModel.from_pretrained(tmp_path / "ft")  # lr 0: the weights are the init's (EMA codebook aside)
    for (k, a), b in zip(base.encoder.state_dict().items(), ft.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
