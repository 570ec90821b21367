"""Sampling through the decoder is lossless: the tokens of speculative decoding follow the base
model's (temperature / top-k / top-p filtered) distribution exactly, whatever the draft proposes.

Statistical test (tests/sampling_stats.py): many short generations from one Decoder and one seeded
generator; the observed runs of new tokens are compared with the exact joint base distribution by a
chi-square test.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import DRAFT_KINDS, draft_modeling
from sampling_stats import (
    ALPHA,
    CASES,
    LOOKUP_PROMPT,
    RUNS,
    SEED,
    assert_follows_base,
    chi2_pvalue,
    exact_sequences,
    fit_pvalue,
    marginal,
    sample_runs,
)

from specforge_het.algorithms.build import build_draft
from specforge_het.inference.decoder import Decoder, Sampling
from specforge_het.inference.lookup import LookupProposer
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.testing import OracleProposer


def test_chi2_pvalue_helper():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    assert chi2_pvalue(torch.tensor([50, 30, 20, 0]), probs) == pytest.approx(1.0)
    assert chi2_pvalue(torch.tensor([49, 30, 20, 1]), probs) == 0.0  # impossible outcome
    # 2 bins, stat = (60-50)^2/50 * 2 = 4, df 1: p = P(chi2_1 > 4) = 0.0455
    assert chi2_pvalue(torch.tensor([60, 40]), torch.tensor([0.5, 0.5])) == pytest.approx(0.0455, abs=1e-4)


def test_assert_follows_base_can_fail():
    exact = {(0, 1): 0.5, (0, 2): 0.2, (1,): 0.3}  # (1,): a run that ended in an EOS
    assert_follows_base(Counter({(0, 1): 500, (0, 2): 200, (1,): 300}), exact, 2)
    with pytest.raises(AssertionError, match="do not follow the base distribution"):
        assert_follows_base(Counter({(0, 1): 300, (0, 2): 200, (1,): 500}), exact, 2)
    with pytest.raises(AssertionError):  # one run of probability 0: p = 0
        assert_follows_base(Counter({(0, 1): 500, (0, 2): 200, (1,): 300, (0, 3): 1}), exact, 2)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def random_draft(sharp_base):
    return build_draft(draft_modeling(**DRAFT_KINDS["eagle_v3_reduced"]), sharp_base, seed=0).eval()


def make_proposer(name: str, base, draft):
    if name == "random_draft":  # a dynamic tree of 7 draft tokens the base rarely agrees with
        return DraftProposer(draft, TreeSpec("dynamic", max_depth=3, top_k=3, total_tokens=8))
    if name == "lookup":  # the same tree plus the prompt-lookup branch (tokens copied from the context)
        return LookupProposer(make_proposer("random_draft", base, draft), num_tokens=3, max_ngram=1)
    # the base's own best 2 children, their best 2 children ...: the draft tokens are often accepted
    return OracleProposer(base, TreeSpec("static", static_tree="tree_k2_d3"))


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("proposer", ["random_draft", "oracle", "lookup"])
@pytest.mark.parametrize("case", list(CASES))
def test_speculative_sampling_is_lossless(sharp_base, short_ids, tok_a, random_draft, case, proposer):
    s, length = CASES[case]
    if proposer == "lookup":  # a prompt whose tokens come back, so the lookup branch is proposed
        short_ids = tok_a(LOOKUP_PROMPT, return_tensors="pt").input_ids
    decoder = Decoder(sharp_base, make_proposer(proposer, sharp_base, random_draft), s,
                      torch.Generator().manual_seed(SEED))
    exact = exact_sequences(sharp_base, short_ids, s, decoder.eos, length)
    top1 = max(marginal(exact, 0).values())
    assert 0.05 < top1 < 0.6  # an informative first-token distribution
    counts, taus = sample_runs(decoder, short_ids, length, RUNS)
    assert sum(counts.values()) == RUNS
    assert_follows_base(counts, exact, length)
    # negative controls: the same statistic rejects the base distribution at half the temperature,
    # and (with a filter) the distribution without top-p
    wrongs = [Sampling(s.temperature / 2, s.top_p, s.top_k)] + ([Sampling(s.temperature, 1.0, s.top_k)] if s.top_p < 1 else [])
    for wrong in wrongs:
        assert fit_pvalue(counts, exact_sequences(sharp_base, short_ids, wrong, decoder.eos, length)) < ALPHA, wrong
    # both branches of the acceptance rule were taken
    assert sum(t == 1 for t in taus) / RUNS > 0.05  # every draft token rejected
    if proposer == "lookup":  # the branch was proposed (the tiny base often repeats a context token)
        assert decoder.proposer.branch_nodes > RUNS // 5
    if proposer == "oracle":
        assert sum(t >= 2 for t in taus) / RUNS > 0.2  # a draft token accepted
        assert sum(t >= length for t in taus) / RUNS > 0.05  # all tested tokens but the first from drafts


def test_base_only_sampling_matches_reference(sharp_base, short_ids):
    """Control for the harness: base-only sampling fits the same exact distribution."""
    s, length = CASES["t0.8_topk5_topp0.9"]
    decoder = Decoder(sharp_base, None, s, torch.Generator().manual_seed(SEED))
    counts, taus = sample_runs(decoder, short_ids, length, RUNS)
    assert fit_pvalue(counts, exact_sequences(sharp_base, short_ids, s, decoder.eos, length)) > ALPHA
    assert set(taus) <= {0, 1}


def test_sampling_is_reproducible_with_a_seeded_generator(sharp_base, short_ids, random_draft):
    def run(seed: int) -> list[list[int]]:
        decoder = Decoder(sharp_base, make_proposer("random_draft", sharp_base, random_draft), Sampling(1.0),
                          torch.Generator().manual_seed(seed))
        return [decoder.generate(short_ids, 6).tokens for _ in range(5)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_sampling_needs_an_explicit_generator(sharp_base, random_draft):
    for proposer in (None, make_proposer("random_draft", sharp_base, random_draft)):
        with pytest.raises(ValueError, match="Generator"):
            Decoder(sharp_base, proposer, Sampling(temperature=1.0))
    Decoder(sharp_base, None, Sampling(temperature=0.0))  # greedy needs none


def test_sampling_with_a_two_layer_draft_is_lossless(sharp_base, short_ids):
    """A 2-layer draft (--modeling.draft_num_layers 2; --modeling.grow_layers makes drafts of the same shape) keeps
    the base's distribution: its two KV caches roll back with the accepted path."""
    s, length = CASES["t1"]
    draft = build_draft(draft_modeling(**DRAFT_KINDS["eagle_v3_reduced"], draft_num_layers=2), sharp_base, seed=1).eval()
    assert len(draft.layers) == 2
    decoder = Decoder(sharp_base, make_proposer("random_draft", sharp_base, draft), s, torch.Generator().manual_seed(SEED))
    counts, taus = sample_runs(decoder, short_ids, length, RUNS)
    assert_follows_base(counts, exact_sequences(sharp_base, short_ids, s, decoder.eos, length), length)
    assert fit_pvalue(counts, exact_sequences(sharp_base, short_ids, Sampling(0.5), decoder.eos, length)) < ALPHA
