"""Host verification strategies (inference/verify.py) and the acceptance walks they drive.

* the walks fed per node beside the per-row strategy (`greedy_walk`, `rejection_walk`: accept.py's
  `GreedyWalk` / `RejectionWalk` over a lookup) == the tensor rules, and read only nodes on accepted
  paths; `TreeRows` batches a node with its first-child chain;
* `PerRowHead` == `AllRows` (greedy: the same path and bonus; sampling: the same draws from one
  generator state, with and without draft q), while running the LM head on fewer rows;
* `FastPaths.verifier` names the strategy `--inference.fast_paths` picked.
"""

from __future__ import annotations

import random

import torch

from specforge_het.inference.accept import greedy_accept, sampling_probs, tree_rejection_sample
from specforge_het.inference.fast_paths import FastPaths
from specforge_het.inference.verify import AllRows, PerRowHead, TreeRows, greedy_walk, rejection_walk

# ---------------------------------------------------------------- the walks over a lookup


def _random_tree(rng: random.Random, n: int) -> list[int]:
    return [-1] + [rng.randrange(i) for i in range(1, n)]


def _recording(values, calls: list[int]):
    """node -> values[node], noting every node asked for."""
    def row(i: int):
        calls.append(i)
        return values[i]
    return row


def test_greedy_walk_equals_greedy_accept_and_reads_only_accepted_nodes() -> None:
    rng = random.Random(0)
    for trial in range(300):
        n = rng.randrange(1, 14)
        parents = torch.tensor(_random_tree(rng, n))
        tokens = torch.tensor([rng.randrange(3) for _ in range(n)])  # 3 tokens: many matches, some ties
        argmax = torch.tensor([rng.randrange(3) for _ in range(n)])
        calls: list[int] = []
        lazy = greedy_walk(tokens, parents, _recording(argmax.tolist(), calls))
        full = greedy_accept(tokens, parents, argmax)
        assert lazy[0].tolist() == full[0].tolist() and lazy[1] == full[1], trial
        assert calls[0] == 0 and len(set(calls)) == len(calls)
        for i in calls[1:]:  # read only where the parent was read and its argmax is this token
            p = int(parents[i])
            assert p in calls and int(tokens[i]) == int(argmax[p])


def test_rejection_walk_equals_tree_rejection_sample() -> None:
    rng = random.Random(1)
    for trial in range(100):
        n = rng.randrange(1, 10)
        parents = torch.tensor(_random_tree(rng, n))
        tokens = torch.tensor([rng.randrange(5) for _ in range(n)])
        probs = torch.softmax(torch.randn(n, 5, generator=torch.Generator().manual_seed(trial)) * 2, -1)
        q = torch.softmax(torch.randn(n, 5, generator=torch.Generator().manual_seed(1000 + trial)), -1)
        for draft_probs in (None, q):
            calls: list[int] = []
            a = rejection_walk(tokens, parents, _recording(probs, calls), torch.Generator().manual_seed(trial),
                               draft_probs=draft_probs)
            b = tree_rejection_sample(tokens, parents, probs, torch.Generator().manual_seed(trial), draft_probs)
            assert a[0].tolist() == b[0].tolist() and a[1] == b[1], trial
            assert calls == a[0].tolist()  # exactly the sampled path, in order


def test_tree_rows_batches_first_child_chains() -> None:
    seen: list[list[int]] = []

    def fn(rows):
        seen.append(list(rows))
        return [10 * r for r in rows]

    chain = [-1, 0, 1, 2, 3]
    rows = TreeRows(fn, chain, prefetch_root=False)
    assert rows(0) == 0 and seen == [[0]]
    assert rows(1) == 10 and seen[-1] == [1, 2, 3, 4]
    assert rows(3) == 30 and len(seen) == 2  # already computed
    seen.clear()
    assert TreeRows(fn, chain, prefetch_root=True)(0) == 0 and seen == [[0, 1, 2, 3, 4]]
    seen.clear()
    tree = TreeRows(fn, [-1, 0, 0, 1, 1, 2], prefetch_root=False)
    tree(0), tree(2), tree(1)
    assert seen == [[0], [2, 5], [1, 3]]


# ---------------------------------------------------------------- the strategies


class _Head:
    """A linear LM head over V = 6 tokens that counts the rows it is run on."""

    def __init__(self, seed: int):
        self.w = torch.randn(8, 6, generator=torch.Generator().manual_seed(seed)) * 3
        self.rows = 0

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        self.rows += hidden.shape[0]
        return hidden @ self.w


def _case(rng: random.Random, trial: int, head: _Head):
    """A random tree whose tokens often follow the head's argmax (long accepted paths)."""
    n = rng.randrange(1, 12)
    parents = torch.tensor(_random_tree(rng, n))
    hidden = torch.randn(n, 8, generator=torch.Generator().manual_seed(trial))
    argmax = (hidden @ head.w).argmax(-1)
    tokens = torch.tensor([int(argmax[p]) if p >= 0 and rng.random() < 0.7 else rng.randrange(6)
                           for p in parents.tolist()])
    return tokens, parents, hidden


def test_per_row_head_equals_all_rows_greedy_on_fewer_rows() -> None:
    rng, per_row, all_rows = random.Random(2), PerRowHead(), AllRows()
    lazy_head, full_head = _Head(0), _Head(0)
    for trial in range(200):
        tokens, parents, hidden = _case(rng, trial, full_head)
        got = per_row.greedy(lazy_head, tokens, parents, hidden)
        want = all_rows.greedy(full_head, tokens, parents, hidden)
        assert got[0].tolist() == want[0].tolist() and got[1] == want[1], trial
    assert full_head.rows > lazy_head.rows > 0


def test_per_row_head_equals_all_rows_sampling() -> None:
    rng, per_row, all_rows = random.Random(3), PerRowHead(), AllRows()
    head = _Head(1)

    def probs(logits):
        return sampling_probs(logits, 0.8, top_p=0.9, top_k=4)

    for trial in range(100):
        tokens, parents, hidden = _case(rng, trial, head)
        q = torch.softmax(torch.randn(len(tokens), 6, generator=torch.Generator().manual_seed(trial)), -1)
        for draft_probs in (None, q):
            got = per_row.sample(head, probs, tokens, parents, hidden, torch.Generator().manual_seed(trial),
                                 draft_probs)
            want = all_rows.sample(head, probs, tokens, parents, hidden, torch.Generator().manual_seed(trial),
                                   draft_probs)
            assert got[0].tolist() == want[0].tolist() and got[1] == want[1], trial


def test_per_row_head_prefetches_the_root_chain_after_accepted_roots() -> None:
    """The root's row comes alone while the root's child is rarely accepted, with its best chain once it
    often is (the running share crosses one half)."""
    head, strategy = _Head(4), PerRowHead()
    hidden = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    parents = torch.tensor([-1, 0, 1, 2])  # a chain
    argmax = (hidden @ head.w).argmax(-1)
    right = torch.tensor([0, int(argmax[0]), int(argmax[1]), int(argmax[2])])  # every draft accepted
    wrong = right.clone()
    wrong[1] = (right[1] + 1) % 6
    head.rows = 0
    strategy.greedy(head, wrong, parents, hidden)
    assert head.rows == 1 and strategy.root_accept_rate == 0.0  # the root alone, rejected
    for _ in range(3):
        path, _ = strategy.greedy(head, right, parents, hidden)
        assert path.tolist() == [0, 1, 2, 3]
    assert strategy.root_accept_rate >= 0.5
    calls: list[int] = []
    counting = lambda h: calls.append(h.shape[0]) or head(h)  # noqa: E731
    strategy.greedy(counting, right, parents, hidden)
    assert calls == [4]  # root and its whole chain in one head call


def test_fast_paths_name_the_verifier() -> None:
    cpu = torch.device("cpu")
    assert isinstance(FastPaths.resolve("auto", cpu).verifier(), PerRowHead)
    assert isinstance(FastPaths.resolve("off", cpu).verifier(), AllRows)
    assert isinstance(FastPaths.resolve("auto", torch.device("meta")).verifier(), AllRows)  # an accelerator
    one = FastPaths.resolve("auto", cpu)
    assert one.verifier() is not one.verifier()  # each decoder keeps its own statistics
