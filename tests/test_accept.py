"""Tests for sampling_probs, greedy_accept and lossless tree rejection sampling."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from specforge_het.inference.accept import (
    GreedyWalk,
    RejectionWalk,
    greedy_accept,
    sampling_probs,
    tree_rejection_sample,
)

V = 6
DRAWS = 20_000
ALPHA = 1e-3
# tree used by the statistical tests: the root has 3 candidates, node 1 has 2.
#       0
#     / | \
#    1  2  3
#   / \
#  4   5
PARENTS = torch.tensor([-1, 0, 0, 0, 1, 1])


def _long(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def _probs(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ---------------------------------------------------------------- sampling_probs


def test_sampling_probs_temperature() -> None:
    logits = _probs([0.5, 0.25, 0.125, 0.125]).log()
    assert torch.allclose(sampling_probs(logits, 1.0), _probs([0.5, 0.25, 0.125, 0.125]))
    # T = 0.5 squares the probabilities: [1/4, 1/16, 1/64, 1/64] / (11/32)
    assert torch.allclose(sampling_probs(logits, 0.5), _probs([8 / 11, 2 / 11, 1 / 22, 1 / 22]))


def test_sampling_probs_top_k() -> None:
    logits = _probs([0.3, 0.4, 0.1, 0.2]).log()
    assert torch.allclose(sampling_probs(logits, 1.0, top_k=2), _probs([3 / 7, 4 / 7, 0, 0]))
    assert torch.allclose(sampling_probs(logits, 1.0, top_k=3), _probs([3 / 9, 4 / 9, 0, 2 / 9]))
    assert torch.allclose(sampling_probs(logits, 1.0, top_k=4), _probs([0.3, 0.4, 0.1, 0.2]))
    # ties with the k-th largest logit are all kept
    tied = _probs([0.5, 0.25, 0.125, 0.125]).log()
    assert torch.allclose(sampling_probs(tied, 1.0, top_k=3), _probs([0.5, 0.25, 0.125, 0.125]))


def test_sampling_probs_top_p() -> None:
    logits = _probs([[0.2, 0.4, 0.1, 0.3], [0.25, 0.25, 0.25, 0.25]]).log()  # [2, V]
    out = sampling_probs(logits, 1.0, top_p=0.5)
    # row 0: 0.4 + 0.3 is the smallest set reaching 0.5; row 1: ties keep lower index
    assert torch.allclose(out, _probs([[0, 4 / 7, 0, 3 / 7], [0.5, 0.5, 0, 0]]))
    assert torch.allclose(sampling_probs(logits[0], 1.0, top_p=0.1), _probs([0, 1, 0, 0]))
    assert torch.allclose(sampling_probs(logits[0], 1.0, top_p=0.75), _probs([2 / 9, 4 / 9, 0, 3 / 9]))


def test_sampling_probs_combined() -> None:
    logits = _probs([0.4, 0.3, 0.2, 0.1]).log()
    # T = 0.5 -> [16, 9, 4, 1] / 30; top-k 3 -> [16, 9, 4] / 29; top-p 0.8 -> [16, 9] / 25
    assert torch.allclose(sampling_probs(logits, 0.5, top_k=3, top_p=0.9), _probs([16 / 29, 9 / 29, 4 / 29, 0]))
    assert torch.allclose(sampling_probs(logits, 0.5, top_k=3, top_p=0.8), _probs([16 / 25, 9 / 25, 0, 0]))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 0.0},
        {"temperature": -1.0},
        {"temperature": 1.0, "top_p": 0.0},
        {"temperature": 1.0, "top_p": 1.5},
        {"temperature": 1.0, "top_k": -1},
    ],
)
def test_sampling_probs_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        sampling_probs(torch.zeros(4), **kwargs)


# ---------------------------------------------------------------- greedy_accept
# tree: 0 -> {1: 5, 2: 7}, 1 -> {3: 3, 4: 4}, 2 -> {5: 9}   (node: token)
GREEDY_PARENTS = _long([-1, 0, 0, 1, 1, 2])
GREEDY_TOKENS = _long([1, 5, 7, 3, 4, 9])


@pytest.mark.parametrize(
    ("tokens", "base_argmax", "path", "bonus"),
    [
        (GREEDY_TOKENS, [2, 0, 0, 0, 0, 0], [0], 2),  # nothing accepted: tau = 1
        (GREEDY_TOKENS, [7, 0, 9, 0, 0, 11], [0, 2, 5], 11),  # full path, tau = 3
        (GREEDY_TOKENS, [5, 4, 9, 0, 8, 0], [0, 1, 4], 8),  # branch choice under node 1
        (GREEDY_TOKENS, [5, 6, 9, 0, 0, 12], [0, 1], 6),  # shallow branch accepted
        (_long([1, 5, 5, 3, 4, 9]), [5, 3, 9, 10, 0, 11], [0, 1, 3], 10),  # tie: lowest index
    ],
)
def test_greedy_accept(tokens: torch.Tensor, base_argmax: list, path: list, bonus: int) -> None:
    got_path, got_bonus = greedy_accept(tokens, GREEDY_PARENTS, _long(base_argmax))
    assert got_path.dtype == torch.long
    assert got_path.tolist() == path and got_bonus == bonus


def test_greedy_accept_validation() -> None:
    with pytest.raises(ValueError, match="parents"):
        greedy_accept(_long([1, 2]), _long([0, 0]), _long([0, 0]))
    with pytest.raises(ValueError, match="base_argmax"):
        greedy_accept(_long([1, 2]), _long([-1, 0]), _long([0]))


def test_rejection_sample_point_masses_match_greedy() -> None:
    base_argmax = _long([5, 4, 9, 0, 8, 0])
    base_probs = torch.nn.functional.one_hot(base_argmax, 16).double()  # [N, 16]
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        path, bonus = tree_rejection_sample(GREEDY_TOKENS, GREEDY_PARENTS, base_probs, gen)
        assert path.tolist() == [0, 1, 4] and bonus == 8


def test_acceptance_takes_tensors_only() -> None:
    """accept.py's rules and walks take tensors (and ints, a generator): the walk fed per node from a
    function lives beside the per-row strategy (inference/verify.py)."""
    import inspect

    from specforge_het.inference import accept

    members = [f for _, f in inspect.getmembers(accept, inspect.isfunction) if f.__module__ == accept.__name__]
    for cls in (accept.GreedyWalk, accept.RejectionWalk):
        members += [f for _, f in inspect.getmembers(cls, inspect.isfunction)]
    assert len(members) > 8
    for f in members:
        for param in inspect.signature(f).parameters.values():
            assert "Callable" not in str(param.annotation), (f.__qualname__, param.name)


def test_walks_fed_row_by_row_equal_the_rules() -> None:
    base_argmax = _long([5, 4, 9, 0, 8, 0])
    walk = GreedyWalk(GREEDY_TOKENS, GREEDY_PARENTS)
    read = []
    while walk.node is not None:
        read.append(walk.node)
        walk.feed(int(base_argmax[walk.node]))
    path, bonus = walk.result()
    assert (path.tolist(), bonus) == (greedy_accept(GREEDY_TOKENS, GREEDY_PARENTS, base_argmax)[0].tolist(), 8)
    assert read[0] == 0 and set(read) <= {0, 1, 4}
    probs = torch.softmax(torch.randn(6, 16, generator=torch.Generator().manual_seed(0)), -1)
    walk2 = RejectionWalk(GREEDY_TOKENS, GREEDY_PARENTS, torch.Generator().manual_seed(1))
    while walk2.node is not None:
        walk2.feed(probs[walk2.node])
    want = tree_rejection_sample(GREEDY_TOKENS, GREEDY_PARENTS, probs, torch.Generator().manual_seed(1))
    assert walk2.result()[0].tolist() == want[0].tolist() and walk2.result()[1] == want[1]
    with pytest.raises(RuntimeError, match="the walk is done"):
        walk.feed(0)
    with pytest.raises(RuntimeError, match="the walk is done"):
        walk2.feed(probs[0])


# ---------------------------------------------------------------- statistical tests


def chi2_pvalue(counts: Counter, probs: torch.Tensor) -> float:
    """Chi-square goodness-of-fit p-value of token counts against probs [V]."""
    observed = torch.tensor([counts.get(v, 0) for v in range(probs.numel())], dtype=torch.float64)
    support = probs > 0
    assert observed[~support].sum() == 0, "a token with zero base probability was committed"
    expected = probs[support].double() * observed.sum()
    stat = ((observed[support] - expected) ** 2 / expected).sum()
    dof = torch.tensor((int(support.sum()) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(dof, stat / 2))  # chi-square survival function


def _random_probs(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.softmax(0.8 * torch.randn(*shape, V, generator=gen, dtype=torch.float64), dim=-1)


def _base_model() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """p0 [V] at the root, P1 [V, V] after one token, P2 [2, V] for the depth-2 nodes."""
    gen = torch.Generator().manual_seed(1234)
    p0, p1, p2 = _random_probs(gen), _random_probs(gen, V), _random_probs(gen, 2)
    p0[4] = 0.0  # candidate 4 has zero base probability at the root
    p1[2, 3] = 0.0  # ... and candidate 3 below token 2
    return p0 / p0.sum(), p1 / p1.sum(-1, keepdim=True), p2


def _collect(samples: list[list[int]]) -> tuple[Counter, dict[int, Counter]]:
    """First committed token counts and second-token counts keyed by the first."""
    first, second = Counter(), {}
    for committed in samples:
        first[committed[0]] += 1
        if len(committed) > 1:
            second.setdefault(committed[0], Counter())[committed[1]] += 1
    return first, second


def _committed(tokens: torch.Tensor, path: torch.Tensor, bonus: int) -> list[int]:
    return tokens[path[1:]].tolist() + [bonus]


def _run_deterministic(draft_probs: torch.Tensor | None) -> tuple[Counter, dict[int, Counter]]:
    p0, p1, p2 = _base_model()
    tokens = _long([0, 2, 4, 2, 0, 3])  # duplicate candidate 2, zero-probability 4 and 3
    base_probs = torch.stack([p0, p1[2], p1[4], p1[2], p2[0], p2[1]])  # [N, V]
    gen = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(DRAWS):
        path, bonus = tree_rejection_sample(tokens, PARENTS, base_probs, gen, draft_probs)
        samples.append(_committed(tokens, path, bonus))
    return _collect(samples)


def test_rejection_sample_deterministic_candidates_are_lossless() -> None:
    p0, p1, _ = _base_model()
    first, second = _run_deterministic(None)
    assert chi2_pvalue(first, p0) > ALPHA
    assert set(second) == {2}  # only node 1 (token 2) has children
    assert sum(second[2].values()) > 1000
    assert chi2_pvalue(second[2], p1[2]) > ALPHA


def test_rejection_sample_negative_control_is_rejected() -> None:
    """Treating fixed candidates as if drawn from a uniform q is biased: must be caught."""
    p0, _, _ = _base_model()
    uniform = torch.full((6, V), 1.0 / V, dtype=torch.float64)
    first, _ = _run_deterministic(uniform)
    assert chi2_pvalue(first, p0) < ALPHA


def test_rejection_sample_draft_candidates_are_lossless() -> None:
    p0, p1, p2 = _base_model()
    gen = torch.Generator().manual_seed(7)
    q0, q1 = _random_probs(gen), _random_probs(gen, V)  # draft distributions
    q0[4] += 0.3  # often proposes the zero-probability token 4
    q0 = q0 / q0.sum()
    # candidates sampled without replacement from the draft, all trials at once
    root_kids = torch.multinomial(q0.expand(DRAWS, V), 3, generator=gen)  # [D, 3]
    grand_kids = torch.multinomial(q1[root_kids[:, 0]], 2, generator=gen)  # [D, 2]
    all_tokens = torch.cat([torch.zeros(DRAWS, 1, dtype=torch.long), root_kids, grand_kids], 1)  # [D, N]
    uniform = torch.full((2, V), 1.0 / V, dtype=torch.float64)
    samples = []
    for tokens in all_tokens:
        kids = tokens[1:4]
        base_probs = torch.cat([p0[None], p1[kids], p2])  # [N, V]
        draft_probs = torch.cat([q0[None], q1[kids], uniform])  # [N, V]
        path, bonus = tree_rejection_sample(tokens, PARENTS, base_probs, gen, draft_probs)
        samples.append(_committed(tokens, path, bonus))
    first, second = _collect(samples)
    assert chi2_pvalue(first, p0) > ALPHA
    checked = [y for y, c in second.items() if sum(c.values()) >= 500]
    assert len(checked) >= 3
    for y in checked:
        assert chi2_pvalue(second[y], p1[y]) > ALPHA, f"second token given first = {y}"


def test_chi2_pvalue_detects_always_accepting_first_candidate() -> None:
    """The wrong rule 'always accept the first candidate' commits token 2 every time."""
    p0, _, _ = _base_model()
    assert chi2_pvalue(Counter({2: DRAWS}), p0) < ALPHA
    exact = Counter({v: round(float(p0[v]) * DRAWS) for v in range(V)})
    assert math.isclose(chi2_pvalue(exact, p0), 1.0, abs_tol=1e-3)
