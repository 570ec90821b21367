"""Proposals that carry draft probabilities q (inference/protocol.py): children SAMPLED from q and
verified with SpecInfer's rule with q. Greedy ignores q (output = base-only greedy); sampling stays
lossless (chi-square against the exact base distribution, with a broken contract as the negative
control); and the q rule accepts more than the deterministic-candidate rule on the same candidates."""

from __future__ import annotations

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
    exact_sequences,
    fit_pvalue,
    marginal,
    sample_runs,
)

from specforge_het.algorithms.build import build_draft
from specforge_het.inference.decoder import Decoder, Sampling
from specforge_het.inference.lookup import LookupProposer
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.inference.protocol import Proposal, Proposer
from specforge_het.testing import OracleProposer, QSampleProposer, model_q

Q_TEMPERATURE = 1.5  # the draft: the sharp base blurred (its top token less likely than the base's)
SHAPES = {
    "chain4": TreeSpec("chain", max_depth=4),
    "tree_k2_d3": TreeSpec("static", static_tree="tree_k2_d3"),
    "eagle1_small": TreeSpec("static", static_tree="eagle1_small"),
}


def q_proposer(base, shape: str, seed: int, temperature: float = Q_TEMPERATURE, **kw) -> QSampleProposer:
    parents = SHAPES[shape].fixed_shape()[0]
    return QSampleProposer(model_q(base, temperature), parents, torch.Generator().manual_seed(seed), **kw)


# ---------------------------------------------------------------- the protocol


def test_every_proposer_implements_the_protocol(bases):
    base = bases["llama"]
    draft = build_draft(draft_modeling(**DRAFT_KINDS["eagle_v3_reduced"]), base, seed=0).eval()
    for proposer in (DraftProposer(draft, SHAPES["chain4"]), OracleProposer(base, SHAPES["chain4"]),
                     LookupProposer(None, 4), q_proposer(base, "chain4", 0)):
        assert isinstance(proposer, Proposer), type(proposer)


def test_q_proposal_follows_the_contract(sharp_base, short_ids):
    """Tree shape as asked, children of a node distinct, q rows normalised over the base vocabulary."""
    proposer = q_proposer(sharp_base, "eagle1_small", 0)
    proposer.start(short_ids[0], 5, None)
    p = proposer.propose()
    assert isinstance(p, Proposal) and p.tokens[0] == 5
    assert p.parents.tolist() == SHAPES["eagle1_small"].fixed_shape()[0].tolist()
    assert p.draft_probs.shape == (p.size, sharp_base.vocab_size)
    torch.testing.assert_close(p.draft_probs.sum(-1), torch.ones(p.size))
    par, tok = p.parents.tolist(), p.tokens.tolist()
    for node in range(p.size):
        kids = [tok[i] for i in range(1, p.size) if par[i] == node]
        assert len(set(kids)) == len(kids)
    plain = q_proposer(sharp_base, "chain4", 0, declare=False)
    plain.start(short_ids[0], 5, None)
    assert plain.propose().draft_probs is None


def test_lookup_drops_q_only_when_its_branch_adds_nodes(sharp_base):
    proposer = LookupProposer(q_proposer(sharp_base, "chain4", 0), num_tokens=3, max_ngram=2)
    proposer.start(torch.tensor([7, 8, 9, 1, 2, 3, 7]), 8, None)  # "7 8" came before: the branch is [9, 1, 2]
    merged, added = proposer.propose(), proposer.branch_nodes
    assert merged.draft_probs is None and added > 0 and merged.size == 5 + added
    proposer.start(torch.tensor([1, 2, 3, 4]), 5, None)  # nothing to look up
    inner = proposer.propose()
    assert inner.draft_probs is not None and inner.size == 5 and proposer.branch_nodes == added


def test_draft_probs_of_the_wrong_shape_are_refused(sharp_base, short_ids):
    v = sharp_base.vocab_size
    wrong = q_proposer(sharp_base, "chain4", 0, declared=lambda ctx: torch.full((v + 1,), 1.0 / (v + 1)))
    with pytest.raises(ValueError, match=r"draft_probs must have shape \[N, V_base\]"):
        Decoder(sharp_base, wrong, Sampling(1.0), torch.Generator().manual_seed(0)).generate(short_ids, 4)
    assert len(Decoder(sharp_base, wrong).generate(short_ids, 4).tokens) == 4  # greedy never reads q


# ---------------------------------------------------------------- greedy: q is ignored


@pytest.mark.parametrize("fast_paths", ["auto", "off"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_greedy_with_sampled_drafts_equals_base_only(bases, tok_a, family, shape, fast_paths):
    """float32 tiny bases; the draft samples from the base at temperature 0.25, so it often proposes the argmax."""
    base = bases[family]
    ids = tok_a("Explain how a transformer layer works, step by step.", return_tensors="pt").input_ids
    ref = Decoder(base, fast_paths=fast_paths).generate(ids, 32)
    res = Decoder(base, q_proposer(base, shape, 1, temperature=0.25), fast_paths=fast_paths).generate(ids, 32)
    assert res.tokens == ref.tokens
    assert res.mean_accept_length > 1.2  # drafts were accepted: the comparison covers verified tokens


# ---------------------------------------------------------------- sampling: lossless with q


LOSSLESS = {  # name -> (sampling case, tree shape, fast paths, lookup branch on top)
    "t1_tree": ("t1", "tree_k2_d3", "auto", False),
    "t1_chain_all_rows": ("t1", "chain4", "off", False),
    "filtered_tree": ("t0.8_topk5_topp0.9", "tree_k2_d3", "auto", False),
    "t1_tree_lookup": ("t1", "tree_k2_d3", "auto", True),
}


@pytest.mark.parametrize("name", list(LOSSLESS))
def test_q_sampling_is_lossless(sharp_base, short_ids, tok_a, name):
    case, shape, fast_paths, lookup = LOSSLESS[name]
    s, length = CASES[case]
    proposer = q_proposer(sharp_base, shape, SEED + 1)
    if lookup:  # merged proposals lose q where the branch adds nodes, keep it elsewhere
        short_ids = tok_a(LOOKUP_PROMPT, return_tensors="pt").input_ids
        proposer = LookupProposer(proposer, num_tokens=3, max_ngram=1)
    decoder = Decoder(sharp_base, proposer, s, torch.Generator().manual_seed(SEED), fast_paths)
    exact = exact_sequences(sharp_base, short_ids, s, decoder.eos, length)
    counts, taus = sample_runs(decoder, short_ids, length, RUNS)
    assert_follows_base(counts, exact, length)
    assert sum(t >= 2 for t in taus) / RUNS > 0.2  # sampled draft tokens accepted
    assert sum(t == 1 for t in taus) / RUNS > 0.02  # and every one rejected
    if lookup:
        assert proposer.branch_nodes > RUNS // 5


def test_a_broken_contract_is_detected(sharp_base, short_ids):
    """Negative control: children drawn from the blurred q but declared as drawn from the base's own
    distribution. SpecInfer's rule then accepts the first child always: the output follows q, and the
    same chi-square test rejects it."""
    s, length = CASES["t1"]
    declared = model_q(sharp_base, s.temperature)
    proposer = q_proposer(sharp_base, "tree_k2_d3", SEED + 1, declared=declared)
    decoder = Decoder(sharp_base, proposer, s, torch.Generator().manual_seed(SEED))
    counts, taus = sample_runs(decoder, short_ids, length, RUNS)
    assert min(taus) >= 2  # the first child is always accepted
    exact = exact_sequences(sharp_base, short_ids, s, decoder.eos, length)
    p = fit_pvalue(counts, exact)  # ~2e-9 here
    assert p < ALPHA, f"the broken contract went undetected (p = {p:.2g})"
    assert fit_pvalue(marginal(counts, 1), marginal(exact, 1)) < ALPHA  # the drafted position, ~5e-66


# ---------------------------------------------------------------- the q rule accepts more


def test_q_rule_accepts_more_than_the_deterministic_rule(sharp_base, short_ids):
    """Same q, same tree, seeded: SpecInfer's rule with q accepts a drawn child with min(1, p/q), the
    deterministic rule with p only; mean accept length over many steps is clearly higher with q."""
    s = Sampling(1.0)

    def tau(declare: bool) -> float:
        proposer = q_proposer(sharp_base, "tree_k2_d3", SEED + 2, declare=declare)
        decoder = Decoder(sharp_base, proposer, s, torch.Generator().manual_seed(SEED))
        lengths = [a for _ in range(10) for a in decoder.generate(short_ids, 12).accept_lengths]
        return sum(lengths) / len(lengths)

    with_q, without_q = tau(True), tau(False)  # ~2.8 and ~1.2 (q: the base at temperature 1.5)
    assert with_q > without_q + 0.8, (with_q, without_q)
