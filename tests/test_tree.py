"""Tests for draft-tree layouts, static shapes and EAGLE-2 dynamic tree construction."""

from __future__ import annotations

import pytest
import torch

from specforge_het.inference.tree import (
    STATIC_TREES,
    UnknownTreeError,
    build_dynamic_tree,
    chain_parents,
    expand_frontier,
    layout_from_parents,
    prune_tree,
    static_parents,
    static_tree_spec,
)

T, F = True, False


def _long(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def test_layout_two_level_tree() -> None:
    #     0
    #    / \
    #   1   2
    #  / \
    # 3   4
    lay = layout_from_parents(_long([-1, 0, 0, 1, 1]))
    assert lay.num_nodes == 5
    assert lay.parents.tolist() == [-1, 0, 0, 1, 1]
    assert lay.depth.tolist() == [0, 1, 1, 2, 2]
    assert lay.position_offsets.tolist() == [0, 1, 1, 2, 2]
    assert lay.attn_mask.dtype == torch.bool
    assert lay.attn_mask.tolist() == [
        [T, F, F, F, F],
        [T, T, F, F, F],
        [T, F, T, F, F],
        [T, T, F, T, F],
        [T, T, F, F, T],
    ]
    assert lay.paths.tolist() == [[0, 2, -1], [0, 1, 3], [0, 1, 4]]


def test_layout_two_chains() -> None:
    # 0 -> 1 -> 2 and 0 -> 3 -> 4
    lay = layout_from_parents(_long([-1, 0, 1, 0, 3]))
    assert lay.depth.tolist() == [0, 1, 2, 1, 2]
    assert lay.position_offsets.tolist() == [0, 1, 2, 1, 2]
    assert lay.attn_mask.tolist() == [
        [T, F, F, F, F],
        [T, T, F, F, F],
        [T, T, T, F, F],
        [T, F, F, T, F],
        [T, F, F, T, T],
    ]
    assert lay.paths.tolist() == [[0, 1, 2], [0, 3, 4]]


def test_layout_root_only_and_chain() -> None:
    lay = layout_from_parents(chain_parents(0))
    assert lay.num_nodes == 1
    assert lay.attn_mask.tolist() == [[T]]
    assert lay.paths.tolist() == [[0]]
    chain = chain_parents(3)
    assert chain.dtype == torch.long and chain.tolist() == [-1, 0, 1, 2]
    lay = layout_from_parents(chain)
    assert lay.attn_mask.tolist() == [
        [T, F, F, F],
        [T, T, F, F],
        [T, T, T, F],
        [T, T, T, T],
    ]
    assert lay.paths.tolist() == [[0, 1, 2, 3]]


@pytest.mark.parametrize(
    ("parents", "match"),
    [
        (_long([0, 0]), "parents\\[0\\] must be -1"),
        (_long([-1, 1]), "parents\\[1\\] = 1"),
        (_long([-1, 0, 3, 0]), "parents\\[2\\] = 3"),
        (_long([-1, -1]), "parents\\[1\\] = -1"),
        (torch.tensor([-1.0, 0.0]), "integer"),
        (_long([[-1, 0]]), "1-D"),
        (_long([]), "non-empty"),
    ],
)
def test_layout_validation(parents: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        layout_from_parents(parents)


def test_chain_parents_rejects_negative() -> None:
    with pytest.raises(ValueError):
        chain_parents(-1)


def test_static_parents_literal() -> None:
    # given out of order: nodes are sorted by (depth, path)
    parents, ranks = static_parents([(1,), (0,), (0, 0), (1, 0), (0, 1)])
    # node: root, (0,), (1,), (0,0), (0,1), (1,0)
    assert parents.tolist() == [-1, 0, 0, 1, 1, 2]
    assert ranks.tolist() == [-1, 0, 1, 0, 1, 0]


@pytest.mark.parametrize(("name", "num_nodes", "max_depth"), [
    ("chain4", 5, 4), ("tree_k2_d3", 10, 3), ("eagle1_small", 17, 4),
])  # fmt: skip
def test_static_trees_are_valid(name: str, num_nodes: int, max_depth: int) -> None:
    parents, _ = static_parents(static_tree_spec(name))
    lay = layout_from_parents(parents)
    assert lay.num_nodes == num_nodes
    assert int(lay.depth.max()) == max_depth
    assert static_tree_spec(name) is STATIC_TREES[name]


def test_static_chain4_is_a_chain() -> None:
    parents, ranks = static_parents(static_tree_spec("chain4"))
    assert parents.tolist() == chain_parents(4).tolist()
    assert ranks.tolist() == [-1, 0, 0, 0, 0]


@pytest.mark.parametrize(
    ("paths", "match"),
    [
        ([(0, 0)], "missing its prefix \\(0,\\)"),
        ([(0,), (0,)], "duplicates"),
        ([(0,), (-1,)], "ranks >= 0"),
        ([()], "non-empty"),
    ],
)
def test_static_parents_validation(paths: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        static_parents(paths)


def test_static_tree_spec_unknown_name() -> None:
    with pytest.raises(ValueError, match="Did you mean 'chain4'") as info:
        static_tree_spec("chain_4")
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, UnknownTreeError)
    assert "eagle1_small" in str(info.value)


def test_expand_frontier_literal() -> None:
    frontier_scores = torch.tensor([-0.5, -0.5], dtype=torch.float64)  # [K=2]
    child_logprobs = torch.tensor(  # [K=2, V=5], dyadic values so sums are exact
        [[-1.0, -0.25, -3.0, -0.25, -2.0], [-0.125, -4.0, -0.5, -5.0, -6.0]],
        dtype=torch.float64,
    )
    slot, tokens, scores, cand_tokens, cand_scores = expand_frontier(frontier_scores, child_logprobs, 2)
    # row 0 ties on tokens 1 and 3 (lower index first); row 1 proposes 0 and 2
    assert cand_tokens.tolist() == [[1, 3], [0, 2]]
    assert cand_scores.tolist() == [[-0.75, -0.75], [-0.625, -1.0]]
    # best overall is row 1's token 0; then the tie at flat ids 0 / 1 goes to flat id 0
    assert slot.tolist() == [1, 0]
    assert tokens.tolist() == [0, 1]
    assert scores.tolist() == [-0.625, -0.75]


def test_expand_frontier_validation() -> None:
    with pytest.raises(ValueError, match="top_k"):
        expand_frontier(torch.zeros(1), torch.zeros(1, 3), 4)
    with pytest.raises(ValueError, match="expected frontier_scores"):
        expand_frontier(torch.zeros(2), torch.zeros(1, 3), 1)


def test_prune_tree_tie_needs_ancestor_closure() -> None:
    # candidate 0 is a child of candidate 1 with the same score; a plain (stable)
    # top-1 would keep candidate 0 without its parent.
    node_parents = _long([1, -1, -1])
    node_scores = torch.tensor([-0.5, -0.5, -0.75])
    keep, parents = prune_tree(node_parents, node_scores, total_tokens=2)
    assert keep.tolist() == [1] and parents.tolist() == [-1, 0]
    keep, parents = prune_tree(node_parents, node_scores, total_tokens=3)
    assert keep.tolist() == [1, 0] and parents.tolist() == [-1, 0, 1]


@pytest.mark.parametrize(
    ("total_tokens", "expected_keep", "expected_parents"),
    [
        (1, [], [-1]),
        (4, [0, 1, 2], [-1, 0, 0, 1]),
        (5, [0, 1, 2, 4], [-1, 0, 0, 1, 2]),
        (100, [0, 1, 2, 3, 4, 5], [-1, 0, 0, 1, 1, 2, 2]),
    ],
)
def test_prune_tree_literal(total_tokens: int, expected_keep: list, expected_parents: list) -> None:
    node_parents = _long([-1, -1, 0, 0, 1, 1])
    node_scores = torch.tensor([-0.5, -1.0, -0.75, -1.5, -1.25, float("-inf")])
    keep, parents = prune_tree(node_parents, node_scores, total_tokens)
    assert keep.tolist() == expected_keep
    assert parents.tolist() == expected_parents


def test_prune_tree_validation() -> None:
    with pytest.raises(ValueError, match="cycle"):
        prune_tree(_long([1, 0]), torch.zeros(2), 3)
    with pytest.raises(ValueError, match="node_parents\\[0\\] = 5"):
        prune_tree(_long([5]), torch.zeros(1), 3)
    with pytest.raises(ValueError, match="total_tokens"):
        prune_tree(_long([-1]), torch.zeros(1), 0)


# child log-probs of the fake draft model, keyed by the frontier token. [V=4, V=4]
_FAKE_DRAFT = torch.tensor(
    [
        [-3.0, -0.5, -1.0, -4.0],
        [-0.25, -5.0, -6.0, -2.0],
        [-1.0, -1.0, -1.0, -1.0],
        [-2.0, -2.0, -2.0, -2.0],
    ],
    dtype=torch.float64,
)


@pytest.mark.parametrize(
    ("total_tokens", "tokens", "parents", "scores"),
    [
        (5, [-1, 0, 1, 1, 0], [-1, 0, 0, 1, 3], [0.0, -1.0, -2.0, -1.5, -1.75]),
        (7, [-1, 0, 1, 1, 2, 0, 0], [-1, 0, 0, 1, 1, 2, 3], [0.0, -1.0, -2.0, -1.5, -2.0, -2.25, -1.75]),
    ],
)
def test_build_dynamic_tree_fake_draft(total_tokens: int, tokens: list, parents: list, scores: list) -> None:
    calls: list[tuple[list, list]] = []

    def step_fn(level_tokens: torch.Tensor, level_parent_ids: torch.Tensor) -> torch.Tensor:
        calls.append((level_tokens.tolist(), level_parent_ids.tolist()))
        return _FAKE_DRAFT[level_tokens]  # [K, V]

    root_logprobs = torch.tensor([-1.0, -2.0, -3.0, -4.0], dtype=torch.float64)
    out = build_dynamic_tree(step_fn, root_logprobs, top_k=2, max_depth=3, total_tokens=total_tokens)
    # call 1: the root's children (tokens 0, 1); call 2: both best grandchildren hang
    # off row 0 of call 1 (token 0), so their parent ids are 0.
    assert calls == [([0, 1], [-1, -1]), ([1, 2], [0, 0])]
    assert out[0].tolist() == tokens
    assert out[1].tolist() == parents
    assert out[2].tolist() == scores
    layout_from_parents(out[1])  # a valid tree


def test_build_dynamic_tree_depth_one() -> None:
    def step_fn(level_tokens: torch.Tensor, level_parent_ids: torch.Tensor) -> torch.Tensor:
        raise AssertionError("no draft forward is needed for depth 1")

    root_logprobs = torch.tensor([-2.0, -1.0, -3.0, -0.5])
    tokens, parents, scores = build_dynamic_tree(step_fn, root_logprobs, top_k=3, max_depth=1, total_tokens=10)
    assert tokens.tolist() == [-1, 3, 1, 0]
    assert parents.tolist() == [-1, 0, 0, 0]
    assert scores.tolist() == [0.0, -0.5, -1.0, -2.0]


def test_stable_topk_equals_full_stable_sort_with_ties():
    from specforge_het.inference.tree import stable_topk

    gen = torch.Generator().manual_seed(0)
    for shape, k in [((50,), 5), ((3, 200), 7), ((4, 9), 9), ((1000,), 1)]:
        x = torch.randint(0, 6, shape, generator=gen).float()  # many ties
        x[..., 0] = float("-inf")
        ref_v, ref_i = torch.sort(x, dim=-1, descending=True, stable=True)
        v, i = stable_topk(x, k)
        assert torch.equal(v, ref_v[..., :k]) and torch.equal(i, ref_i[..., :k])
