"""Token selection: top-k / top-p draws follow transformers' filtered distribution; three-branch CFG's formula."""

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from progemu.generation.sampling import SamplingOptions, cfg_combine, select_tokens

NEG = float("-inf")


def _transformers(opts: SamplingOptions) -> LogitsProcessorList:
    """The reference: transformers' warpers in `generate()`'s order, top-k over the whole vocabulary."""
    return LogitsProcessorList([TemperatureLogitsWarper(opts.temperature), TopKLogitsWarper(opts.top_k),
                                TopPLogitsWarper(opts.top_p)])


def _frequencies(scores: torch.Tensor, opts: SamplingOptions, draws: int = 6000) -> tuple[torch.Tensor, list[int]]:
    gens = [torch.Generator().manual_seed(11)]
    picks = torch.stack([select_tokens(scores, opts, gens) for _ in range(draws)])[:, 0]
    return torch.bincount(picks, minlength=scores.shape[-1]).float() / draws, picks[:20].tolist()


@pytest.mark.parametrize("case", ["plain", "forbidden among the best", "fewer allowed than k", "ties at the k-th"])
@pytest.mark.parametrize("opts", [SamplingOptions(top_k=3), SamplingOptions(top_k=4, top_p=0.8, temperature=0.7)])
def test_top_k_draws_follow_the_filtered_distribution(case, opts):
    """Drawing among the k best only gives transformers' top-k (then top-p) distribution over the whole vocabulary,
    never draws a forbidden token, and reproduces with the seed."""
    scores = torch.randn(1, 12, generator=torch.Generator().manual_seed(3)) * 2
    if case == "forbidden among the best":
        scores[0, int(scores.argmax())] = NEG
    elif case == "fewer allowed than k":
        scores[0, 2:] = NEG
    elif case == "ties at the k-th":
        scores = torch.tensor([[3.0, 2.0, 1.0, 1.0, 1.0, 0.0, -1.0, 1.0]])
    want = torch.softmax(_transformers(opts)(None, scores.clone()), -1)[0]  # the filters over all ids
    freq, first = _frequencies(scores, opts)
    assert set(freq.nonzero().flatten().tolist()) <= set(want.nonzero().flatten().tolist())
    assert (freq - want).abs().max() < 0.025
    assert _frequencies(scores, opts, draws=20)[1] == first  # the same seed, the same draws


@pytest.mark.parametrize("opts", [SamplingOptions(top_k=3), SamplingOptions(top_k=3, top_p=0.9, temperature=0.8)])
def test_a_rows_draw_does_not_depend_on_its_neighbours(opts):
    """A tie-free row draws the same tokens alone and beside a row with ties at the k-th value (which draws among
    its own survivors), and the tied row follows transformers' distribution."""
    plain = torch.tensor([[1.1, 0.3, 1.7, -0.4, 2.5, 0.0, 0.9, -2.0]])  # best first by value, last by index
    tied = torch.tensor([[3.0, 2.0, 1.0, 1.0, 1.0, 0.0, -1.0, 1.0]])
    for seed in range(30):
        alone = select_tokens(plain, opts, [torch.Generator().manual_seed(seed)])
        batch = select_tokens(torch.cat([tied, plain]), opts,
                              [torch.Generator().manual_seed(99), torch.Generator().manual_seed(seed)])
        assert int(batch[1]) == int(alone[0])
    want = torch.softmax(_transformers(opts)(None, tied.clone()), -1)[0]
    freq, _ = _frequencies(tied, opts)
    assert (freq - want).abs().max() < 0.025


def test_three_branch_formula_and_its_two_reductions():
    g = torch.Generator().manual_seed(0)
    c, p, u = (torch.randn(2, 9, generator=g) for _ in range(3))
    ls = lambda x: torch.log_softmax(x, -1)  # noqa: E731
    torch.testing.assert_close(cfg_combine(c, u, 4.0, prior=p, prior_scale=2.0),
                               ls(u) + 2.0 * (ls(p) - ls(u)) + 4.0 * (ls(c) - ls(p)))
    torch.testing.assert_close(cfg_combine(c, u, 3.0, prior=p, prior_scale=3.0), cfg_combine(c, u, 3.0))
    torch.testing.assert_close(cfg_combine(c, u, 3.0, prior=p, prior_scale=1.0), cfg_combine(c, p, 3.0))
    with pytest.raises(ValueError, match="unconditional"):
        cfg_combine(c, None, 3.0, prior=p)
