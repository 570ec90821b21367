"""Sampling with a standalone draft is lossless: children drawn without replacement from the draft's q
(over the shared vocabulary), kept by draw rank in a dynamic tree, verified with SpecInfer's rule with
q. Chi-square tests against the exact base distribution, as in tests/test_sampling.py, and a broken
contract (deterministic top-k declared as drawn from q) as the negative control."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from sampling_stats import (
    ALPHA,
    CASES,
    RUNS,
    SEED,
    assert_follows_base,
    chi2_pvalue,
    exact_sequences,
    fit_pvalue,
    sample_runs,
)
from test_standalone import foreign_tokenizer

from specforge_het.algorithms.standalone import StandaloneProposer
from specforge_het.algorithms.standalone import proposer as proposer_module
from specforge_het.algorithms.standalone.draws import draw_order, rank_scores
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.proposer import TreeSpec
from specforge_het.models.base import BaseModel
from specforge_het.testing import tiny_base

TREE = TreeSpec("dynamic", max_depth=2, top_k=2, total_tokens=4)  # 6 candidates pruned to 3 draft tokens
Q_TEMPERATURE = 1.5  # the sharp base as its own draft, blurred: q differs from p, drafts often accepted
# case -> (draft, draft temperature, sampling case)
LOSSLESS = {
    "self_draft_t1": ("self", Q_TEMPERATURE, "t1"),
    "self_draft_filtered": ("self", Q_TEMPERATURE, "t0.8_topk5_topp0.9"),
    "foreign_draft_t1": ("foreign", 1.0, "t1"),
}


@pytest.fixture(scope="module")
def foreign_draft():
    """A tiny random Gemma3 LM with a foreign tokenizer."""
    tok = foreign_tokenizer()
    return BaseModel(tiny_base("gemma3", tok, hidden=32, layers=2, seed=7), tok, name="draft-gemma3")


# ---------------------------------------------------------------- the draws


def test_draw_order_samples_without_replacement():
    q = torch.tensor([0.5, 0.3, 0.2, 0.0])
    gen = torch.Generator().manual_seed(SEED)
    counts = Counter(tuple(draw_order(q, 2, gen).tolist()) for _ in range(3000))
    pairs = [(a, b) for a in range(3) for b in range(3) if a != b]
    exact = torch.tensor([float(q[a] * q[b] / (1 - q[a])) for a, b in pairs])
    assert set(counts) <= set(pairs)  # never a token of probability 0, never twice
    assert chi2_pvalue(torch.tensor([counts[p] for p in pairs]), exact) > ALPHA
    wrong = torch.tensor([float(q[a] * q[b] / q.sum()) for a, b in pairs])  # with replacement, renormalised
    assert chi2_pvalue(torch.tensor([counts[p] for p in pairs]), wrong) < ALPHA
    assert draw_order(q, 5, gen).shape == (3,)  # no more draws than q has support


def test_rank_scores_depend_on_the_rank_only():
    q = torch.tensor([0.1, 0.6, 0.3])
    a, b = rank_scores(q, torch.tensor([0, 2])), rank_scores(q, torch.tensor([2, 0]))
    assert a[0] == b[2] and a[2] == b[0] and a[1] == b[1] == float("-inf")  # the slot decides, not the token
    assert a[0] > a[2] and float(a[0]) == pytest.approx(float(torch.tensor(0.6).log()))
    tied = rank_scores(torch.tensor([0.5, 0.5]), torch.tensor([1, 0]))
    assert tied[1] > tied[0]  # equal probabilities still rank in draw order


# ---------------------------------------------------------------- lossless through the decoder


def make_decoder(base, draft, q_temperature: float, case: str) -> Decoder:
    proposer = StandaloneProposer.for_base(base, draft, TREE, q_temperature, torch.Generator().manual_seed(SEED + 1))
    return Decoder(base, proposer, CASES[case][0], torch.Generator().manual_seed(SEED))


@pytest.mark.parametrize("name", list(LOSSLESS))
def test_standalone_sampling_is_lossless(sharp_base, foreign_draft, short_ids, name):
    which, q_temperature, case = LOSSLESS[name]
    s, length = CASES[case]
    decoder = make_decoder(sharp_base, sharp_base if which == "self" else foreign_draft, q_temperature, case)
    exact = exact_sequences(sharp_base, short_ids, s, decoder.eos, length)
    counts, taus = sample_runs(decoder, short_ids, length, RUNS)
    assert_follows_base(counts, exact, length)
    # the same statistic rejects the base distribution at half the temperature
    half = type(s)(s.temperature / 2, s.top_p, s.top_k)
    assert fit_pvalue(counts, exact_sequences(sharp_base, short_ids, half, decoder.eos, length)) < ALPHA
    assert sum(t == 1 for t in taus) / RUNS > 0.02  # every draft token rejected
    assert sum(t >= 2 for t in taus) / RUNS > (0.2 if which == "self" else 0.0)  # and drafts accepted
    if which == "self":
        assert sum(t >= 3 for t in taus) / RUNS > 0.05  # depth-2 drafts accepted too


def test_a_broken_contract_is_detected(sharp_base, short_ids, monkeypatch):
    """Negative control: the draft's deterministic top-k, declared as drawn from q. With q = p (the sharp
    base as its own draft at the sampling temperature) the first child is always accepted: the second
    token is always the base's argmax, and the same chi-square test rejects the output."""
    monkeypatch.setattr(proposer_module, "draw_order",
                        lambda q, k, generator: torch.topk(q, min(k, int((q > 0).sum()))).indices)
    s, length = CASES["t1"]
    decoder = make_decoder(sharp_base, sharp_base, s.temperature, "t1")
    counts, taus = sample_runs(decoder, short_ids, length, RUNS)
    assert fit_pvalue(counts, exact_sequences(sharp_base, short_ids, s, decoder.eos, length)) < ALPHA
    assert min(taus) >= 2
