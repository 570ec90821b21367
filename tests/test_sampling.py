"""Sampling through the decoder is lossless: the tokens of speculative decoding follow the base
model's (temperature / top-k / top-p filtered) distribution exactly, whatever the draft proposes.

Statistical test: many short generations from one Decoder and one seeded generator; the observed
runs of new tokens (t1 from the prefill, the next ones from the first verify step) are compared
with the exact joint base distribution P(t1) P(t2 | t1) ... by a chi-square test.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import DRAFT_KINDS, draft_modeling, ids_fixture

from specforge_het.algorithms.build import build_draft
from specforge_het.inference.decoder import Decoder, Sampling
from specforge_het.inference.lookup import LookupProposer
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.testing import OracleProposer

PROMPT = "Hello"
LOOKUP_PROMPT = "x = a + b; y = a + b"  # the tiny base's first token is one of the prompt's about a third of the time
RUNS = 800
ALPHA = 1e-3
SEED = 1234
# case -> (sampling, number of new tokens whose joint distribution is tested)
CASES = {
    "t1": (Sampling(temperature=1.0), 2),
    "t0.8_topk5_topp0.9": (Sampling(temperature=0.8, top_p=0.9, top_k=5), 3),
}


def reference_probs(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Temperature, then top-k (ties with the k-th kept), then top-p (smallest prefix reaching
    top_p), in float64 -- written independently of the library. [..., V] -> [..., V]"""
    x = logits.double() / s.temperature
    if s.top_k:
        kth = torch.topk(x, s.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    p = torch.softmax(x, dim=-1)
    if s.top_p < 1:
        sorted_p, order = torch.sort(p, dim=-1, descending=True, stable=True)
        keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < s.top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        p = p * keep
        p = p / p.sum(-1, keepdim=True)
    return p


def exact_sequences(base, ids: torch.Tensor, s: Sampling, eos: set[int], length: int) -> dict[tuple[int, ...], float]:
    """Exact probability of every possible run of `length` new tokens (shorter when it ends in
    an EOS), enumerating all contexts of non-zero probability: {tokens: probability}."""
    done: dict[tuple[int, ...], float] = {}
    live: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(length):
        prefixes = list(live)
        batch = torch.cat([ids.repeat(len(prefixes), 1), torch.tensor(prefixes, dtype=torch.long).view(len(prefixes), -1)], 1)
        probs = reference_probs(base.features(batch, ()).logits[:, -1], s)  # [P, V]
        nxt: dict[tuple[int, ...], float] = {}
        for prefix, row in zip(prefixes, probs):
            for t in torch.nonzero(row).flatten().tolist():
                seq, p = prefix + (t,), live[prefix] * float(row[t])
                (done if t in eos else nxt)[seq] = p
        live = nxt
    return {**done, **live}


def fit_pvalue(observed: Counter, exact: dict[tuple[int, ...], float]) -> float:
    """Chi-square p-value of observed token runs against exact run probabilities."""
    keys = sorted(set(exact) | set(observed))
    return chi2_pvalue(torch.tensor([observed.get(k, 0) for k in keys]), torch.tensor([exact.get(k, 0.0) for k in keys]))


def marginal(runs: dict | Counter, pos: int) -> dict[tuple[int, ...], float]:
    """Distribution of the token at `pos` (runs that stopped earlier: key ())."""
    out: dict[tuple[int, ...], float] = {}
    for seq, p in runs.items():
        key = seq[pos: pos + 1]
        out[key] = out.get(key, 0) + p
    return out


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson chi-square goodness of fit; cells expected < min_expected are pooled into one bin.
    Any observation in a zero-probability cell gives p = 0."""
    counts, probs = counts.flatten().double(), probs.flatten().double()
    if counts[probs == 0].sum() > 0:
        return 0.0
    expected = probs / probs.sum() * counts.sum()
    big = expected >= min_expected
    obs, exp = counts[big], expected[big]
    pooled_obs, pooled_exp = counts[~big].sum(), expected[~big].sum()
    if pooled_exp >= min_expected:
        obs, exp = torch.cat([obs, pooled_obs[None]]), torch.cat([exp, pooled_exp[None]])
    elif pooled_exp > 0:  # too small for a bin of its own: fold it into the smallest bin
        i = int(exp.argmin())
        obs[i], exp[i] = obs[i] + pooled_obs, exp[i] + pooled_exp
    assert obs.numel() >= 2, "nothing to test: fewer than 2 bins"
    stat = float(((obs - exp) ** 2 / exp).sum())
    df = obs.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def test_chi2_pvalue_helper():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    assert chi2_pvalue(torch.tensor([50, 30, 20, 0]), probs) == pytest.approx(1.0)
    assert chi2_pvalue(torch.tensor([49, 30, 20, 1]), probs) == 0.0  # impossible outcome
    # 2 bins, stat = (60-50)^2/50 * 2 = 4, df 1: p = P(chi2_1 > 4) = 0.0455
    assert chi2_pvalue(torch.tensor([60, 40]), torch.tensor([0.5, 0.5])) == pytest.approx(0.0455, abs=1e-4)


# ---------------------------------------------------------------- fixtures


prompt_ids = ids_fixture(PROMPT)


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


def sample_runs(decoder: Decoder, ids: torch.Tensor, length: int, runs: int) -> tuple[Counter, list[int]]:
    """Counts of the generated token runs over `runs` generations, and the first verify step's
    accept length per run (0 when there was none)."""
    counts: Counter = Counter()
    taus = []
    for _ in range(runs):
        res = decoder.generate(ids, length)
        counts[tuple(res.tokens)] += 1
        taus.append(res.accept_lengths[0] if res.accept_lengths else 0)
    return counts, taus


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("proposer", ["random_draft", "oracle", "lookup"])
@pytest.mark.parametrize("case", list(CASES))
def test_speculative_sampling_is_lossless(sharp_base, prompt_ids, tok_a, random_draft, case, proposer):
    s, length = CASES[case]
    if proposer == "lookup":  # a prompt whose tokens come back, so the lookup branch is proposed
        prompt_ids = tok_a(LOOKUP_PROMPT, return_tensors="pt").input_ids
    decoder = Decoder(sharp_base, make_proposer(proposer, sharp_base, random_draft), s,
                      torch.Generator().manual_seed(SEED))
    exact = exact_sequences(sharp_base, prompt_ids, s, decoder.eos, length)
    top1 = max(marginal(exact, 0).values())
    assert 0.05 < top1 < 0.6  # an informative first-token distribution
    counts, taus = sample_runs(decoder, prompt_ids, length, RUNS)
    assert sum(counts.values()) == RUNS

    p = fit_pvalue(counts, exact)
    assert p > ALPHA, f"observed token runs do not follow the base distribution (p = {p:.2g})"
    for pos in range(length):  # each position's marginal fits too
        assert fit_pvalue(marginal(counts, pos), marginal(exact, pos)) > ALPHA, pos
    # negative controls: the same statistic rejects the base distribution at half the temperature,
    # and (with a filter) the distribution without top-p
    wrongs = [Sampling(s.temperature / 2, s.top_p, s.top_k)] + ([Sampling(s.temperature, 1.0, s.top_k)] if s.top_p < 1 else [])
    for wrong in wrongs:
        assert fit_pvalue(counts, exact_sequences(sharp_base, prompt_ids, wrong, decoder.eos, length)) < ALPHA, wrong
    # both branches of the acceptance rule were taken
    assert sum(t == 1 for t in taus) / RUNS > 0.05  # every draft token rejected
    if proposer == "lookup":  # the branch was proposed (the tiny base often repeats a context token)
        assert decoder.proposer.branch_nodes > RUNS // 5
    if proposer == "oracle":
        assert sum(t >= 2 for t in taus) / RUNS > 0.2  # a draft token accepted
        assert sum(t >= length for t in taus) / RUNS > 0.05  # all tested tokens but the first from drafts


def test_base_only_sampling_matches_reference(sharp_base, prompt_ids):
    """Control for the harness: base-only sampling fits the same exact distribution."""
    s, length = CASES["t0.8_topk5_topp0.9"]
    decoder = Decoder(sharp_base, None, s, torch.Generator().manual_seed(SEED))
    counts, taus = sample_runs(decoder, prompt_ids, length, RUNS)
    assert fit_pvalue(counts, exact_sequences(sharp_base, prompt_ids, s, decoder.eos, length)) > ALPHA
    assert set(taus) <= {0, 1}


def test_sampling_is_reproducible_with_a_seeded_generator(sharp_base, prompt_ids, random_draft):
    def run(seed: int) -> list[list[int]]:
        decoder = Decoder(sharp_base, make_proposer("random_draft", sharp_base, random_draft), Sampling(1.0),
                          torch.Generator().manual_seed(seed))
        return [decoder.generate(prompt_ids, 6).tokens for _ in range(5)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_sampling_needs_an_explicit_generator(sharp_base, random_draft):
    for proposer in (None, make_proposer("random_draft", sharp_base, random_draft)):
        with pytest.raises(ValueError, match="Generator"):
            Decoder(sharp_base, proposer, Sampling(temperature=1.0))
    Decoder(sharp_base, None, Sampling(temperature=0.0))  # greedy needs none
