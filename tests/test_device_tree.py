"""The device strategy's pure pieces give what their host counterparts give: stable top-k, EAGLE-2
pruning and tree building, tree layouts, greedy acceptance (random inputs, many ties)."""

from __future__ import annotations

import random

import pytest
import torch

from specforge_het.inference.accept import greedy_accept, greedy_accept_on_device
from specforge_het.inference.tree import (
    build_dynamic_tree,
    layout_from_parents,
    layout_on_device,
    prune_monotone,
    prune_tree,
    stable_topk,
    stable_topk_on_device,
)


def _random_parents(rng: random.Random, n: int) -> torch.Tensor:
    return torch.tensor([-1] + [rng.randrange(i) for i in range(1, n)])


def test_stable_topk_on_device_equals_host_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    for shape, k in [((50,), 5), ((3, 200), 7), ((4, 9), 9), ((1000,), 1), ((6, 40), 3), ((2, 5), 8)]:
        for levels in (2, 6, 1000):
            x = torch.randint(0, levels, shape, generator=gen).float()  # many ties
            x[..., 0] = float("-inf")
            v, i = stable_topk_on_device(x, k)
            ref_v, ref_i = stable_topk(x, k)
            assert torch.equal(v, ref_v) and torch.equal(i, ref_i), (shape, k, levels)


def test_stable_topk_on_device_all_ties_takes_lowest_indices() -> None:
    v, i = stable_topk_on_device(torch.zeros(2, 10), 4)
    assert i.tolist() == [[0, 1, 2, 3]] * 2 and v.tolist() == [[0.0] * 4] * 2


def _eagle_candidates(rng: random.Random, gen: torch.Generator, top_k: int, depth: int):
    """Candidates as build_dynamic_tree makes them: level by level, cumulative log-probs (ties often)."""
    parents, scores = [-1] * top_k, [float(-rng.randrange(3)) for _ in range(top_k)]
    frontier = list(range(top_k))
    for _ in range(1, depth):
        new = []
        for f in frontier:
            for _ in range(top_k):
                parents.append(f)
                scores.append(scores[f] - rng.randrange(3))  # log-prob <= 0, ties frequent
                new.append(len(parents) - 1)
        frontier = rng.sample(new, top_k)
    return torch.tensor(parents), torch.tensor(scores)


def test_prune_monotone_equals_prune_tree() -> None:
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    for trial in range(200):
        node_parents, node_scores = _eagle_candidates(rng, gen, rng.randint(1, 4), rng.randint(1, 4))
        total = rng.randint(1, node_parents.numel() + 3)
        keep, parents = prune_monotone(node_parents, node_scores, total)
        ref_keep, ref_parents = prune_tree(node_parents, node_scores, total)
        assert keep.tolist() == ref_keep.tolist() and parents.tolist() == ref_parents.tolist(), trial


def test_prune_monotone_validation() -> None:
    with pytest.raises(ValueError, match="total_tokens"):
        prune_monotone(torch.tensor([-1]), torch.zeros(1), 0)
    with pytest.raises(ValueError, match="shape"):
        prune_monotone(torch.tensor([-1, 0]), torch.zeros(3), 2)


@pytest.mark.parametrize(("top_k", "max_depth", "total_tokens"), [(1, 4, 5), (2, 3, 6), (3, 4, 10), (4, 5, 16), (4, 2, 40)])
def test_build_dynamic_tree_on_device_equals_host(top_k: int, max_depth: int, total_tokens: int) -> None:
    gen = torch.Generator().manual_seed(top_k * 100 + max_depth)
    table = torch.log_softmax(torch.randint(0, 4, (30, 30), generator=gen).float(), -1)  # tied log-probs

    def step(tokens: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return table[tokens]

    for root in range(30):
        host = build_dynamic_tree(step, table[root], top_k, max_depth, total_tokens)
        dev = build_dynamic_tree(step, table[root], top_k, max_depth, total_tokens, on_device=True)
        assert all(torch.equal(a, b) for a, b in zip(host, dev)), root


def test_layout_on_device_equals_host_layout() -> None:
    rng = random.Random(1)
    trees = [torch.tensor([-1]), torch.arange(-1, 40)] + [_random_parents(rng, rng.randint(2, 70)) for _ in range(100)]
    for parents in trees:
        dev, host = layout_on_device(parents), layout_from_parents(parents)
        assert torch.equal(dev.attn_mask, host.attn_mask)
        assert torch.equal(dev.depth, host.depth) and torch.equal(dev.position_offsets, host.position_offsets)
        assert torch.equal(dev.parents, host.parents)
    assert layout_on_device(torch.tensor([-1, 0, 0, 1, 1])).paths.tolist() == [[0, 2, -1], [0, 1, 3], [0, 1, 4]]


def test_greedy_accept_on_device_equals_greedy_accept() -> None:
    rng = random.Random(2)
    gen = torch.Generator().manual_seed(2)
    for trial in range(300):
        n = rng.randint(1, 30)
        parents = _random_parents(rng, n)
        tokens = torch.randint(0, 3, (n,), generator=gen)  # few values: many matches and ties
        argmax = torch.randint(0, 3, (n,), generator=gen)
        lay = layout_on_device(parents)
        order, tau, bonus = greedy_accept_on_device(tokens, parents, lay.attn_mask, lay.depth, argmax)
        path, ref_bonus = greedy_accept(tokens, parents, argmax)
        assert order[: int(tau)].tolist() == path.tolist() and int(bonus) == ref_bonus, trial
        assert sorted(order.tolist()) == list(range(n))


def test_greedy_accept_on_device_literal_and_validation() -> None:
    #     0 -> 1 -> 3,   0 -> 2 -> 4: both depth-2 paths match; the lower node index (3) wins
    parents = torch.tensor([-1, 0, 0, 1, 2])
    tokens = torch.tensor([9, 5, 5, 7, 7])
    argmax = torch.tensor([5, 7, 7, 8, 6])
    lay = layout_from_parents(parents)
    order, tau, bonus = greedy_accept_on_device(tokens, parents, lay.attn_mask, lay.depth, argmax)
    assert order[: int(tau)].tolist() == [0, 1, 3] and int(bonus) == 8
    with pytest.raises(ValueError, match="attn_mask"):
        greedy_accept_on_device(tokens, parents, lay.attn_mask[:4], lay.depth, argmax)
    with pytest.raises(ValueError, match="base_argmax"):
        greedy_accept_on_device(tokens, parents, lay.attn_mask, lay.depth, argmax[:3])
