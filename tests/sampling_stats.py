"""The statistics behind the lossless-sampling tests (test_sampling.py, test_q_sampling.py,
test_standalone_sampling.py): exact base run probabilities, a chi-square fit, and `assert_follows_base`.

Many short generations from one Decoder and one seeded generator; the observed runs of new tokens (t1
from the prefill, the next ones from the first verify step) are compared with the exact joint base
distribution P(t1) P(t2 | t1) ... by a chi-square test.
"""

from __future__ import annotations

from collections import Counter

import torch

from specforge_het.inference.decoder import Decoder, Sampling

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


def assert_follows_base(counts: Counter, exact: dict[tuple[int, ...], float], length: int) -> None:
    """The observed token runs fit the exact base distribution (chi-square p > ALPHA), jointly and at
    each of the `length` positions."""
    p = fit_pvalue(counts, exact)
    assert p > ALPHA, f"observed token runs do not follow the base distribution (p = {p:.2g})"
    for pos in range(length):  # each position's marginal fits too
        assert fit_pvalue(marginal(counts, pos), marginal(exact, pos)) > ALPHA, pos
