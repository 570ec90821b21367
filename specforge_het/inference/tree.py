"""Draft-tree layouts, static tree shapes and merging a chain into a tree (EAGLE-2 dynamic trees:
``dynamic_tree.py``, re-exported here).

Convention: a draft tree of N nodes in topological order. Node 0 is the root, i.e. the
last committed token (already decided, not yet in the base KV cache); nodes 1..N-1 are
draft tokens. ``parents[0] == -1`` and ``0 <= parents[i] < i`` for i >= 1.
All functions are pure and deterministic; new tensors live on the input's device.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

TreePath = tuple[int, ...]


@dataclass(frozen=True)
class TreeLayout:
    """Everything the base model needs to verify a draft tree in one forward."""

    parents: torch.Tensor  # [N] long, parents[0] == -1
    depth: torch.Tensor  # [N] long, root 0
    attn_mask: torch.Tensor  # [N, N] bool, [i, j] True iff j is ancestor-or-self of i
    position_offsets: torch.Tensor  # [N] long, absolute position = prefix_len + offset

    @property
    def num_nodes(self) -> int:
        """Number of tree nodes N (root included)."""
        return int(self.parents.shape[0])

    @property
    def paths(self) -> torch.Tensor:
        """Root->leaf node indices per leaf, -1 padded. -> [P, D+1] (computed on the host when asked;
        the decoder never needs them)."""
        return leaf_paths(self.parents)


def check_parents(parents: torch.Tensor) -> list[int]:
    """Validate a parents array in the TreeLayout convention; return it as a list."""
    if parents.dim() != 1 or parents.numel() == 0:
        raise ValueError(f"parents must be a non-empty 1-D tensor, got shape {tuple(parents.shape)}")
    if parents.dtype.is_floating_point or parents.dtype.is_complex or parents.dtype == torch.bool:
        raise ValueError(f"parents must be an integer tensor, got dtype {parents.dtype}")
    return check_parent_list(parents.tolist())


def check_parent_list(par: list[int]) -> list[int]:
    """Validate parents given as host ints (root -1 first, then topological order); return them."""
    par = [int(p) for p in par]
    if not par:
        raise ValueError("parents must be non-empty")
    if par[0] != -1:
        raise ValueError(f"parents[0] must be -1 (the root), got {par[0]}")
    for i, p in enumerate(par[1:], start=1):
        if not 0 <= p < i:
            raise ValueError(f"parents[{i}] = {p} must be in [0, {i}) (topological order)")
    return par


def layout_from_parents(parents: torch.Tensor) -> TreeLayout:
    """Build depth, ancestor mask and position offsets from parents, validated on the host."""
    par = check_parents(parents)
    n, device = len(par), parents.device
    depth = [0] * n
    mask = torch.zeros(n, n, dtype=torch.bool)  # [N, N], built on CPU then moved
    mask[0, 0] = True
    for i in range(1, n):
        depth[i] = depth[par[i]] + 1
        mask[i] = mask[par[i]]
        mask[i, i] = True
    depth_t = torch.tensor(depth, dtype=torch.long, device=device)
    return TreeLayout(
        parents=parents.to(device=device, dtype=torch.long),
        depth=depth_t,
        attn_mask=mask.to(device),
        position_offsets=depth_t.clone(),
    )


def layout_on_device(parents: torch.Tensor) -> TreeLayout:
    """The same layout as `layout_from_parents`, computed where `parents` lives without reading it on
    the host (no validation: `parents` must follow the convention, as the proposers' trees do).

    Ancestor sets by pointer jumping: after round r every node knows its ancestors up to 2^r levels
    up, so ceil(log2 N) rounds of gathers cover any depth.
    """
    n, device = parents.shape[0], parents.device
    parents = parents.to(torch.long)
    idx = torch.arange(n, device=device)
    mask = idx[:, None] == idx[None, :]  # [N, N] ancestor-or-self within 2^0 - 1 levels
    jump = parents.clamp_min(0)  # 2^r-th ancestor, the root its own
    for _ in range(max(n - 1, 1).bit_length()):
        mask = mask | mask[jump]
        jump = jump[jump]
    depth = mask.sum(-1) - 1
    return TreeLayout(parents=parents, depth=depth, attn_mask=mask, position_offsets=depth)


def leaf_paths(parents: torch.Tensor) -> torch.Tensor:
    """Root->leaf node indices of every leaf, -1 padded. -> [P, D+1] (on the host-validated tree)."""
    par = check_parents(parents)
    depth = [0] * len(par)
    for i in range(1, len(par)):
        depth[i] = depth[par[i]] + 1
    has_child = set(par[1:])
    leaves = [i for i in range(len(par)) if i not in has_child]
    paths = torch.full((len(leaves), max(depth) + 1), -1, dtype=torch.long)  # [P, D+1]
    for row, leaf in enumerate(leaves):
        chain = _root_path(leaf, par)
        paths[row, : len(chain)] = torch.tensor(chain, dtype=torch.long)
    return paths.to(parents.device)


def _root_path(node: int, par: Sequence[int]) -> list[int]:
    """Node indices from the root (0) down to ``node``."""
    chain = []
    while node != -1:
        chain.append(node)
        node = par[node]
    return chain[::-1]


def chain_parents(k: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Parents of a chain: the root followed by ``k`` draft tokens in a line. -> [k+1]"""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return torch.arange(-1, k, dtype=torch.long, device=device)


# Static tree shapes in Medusa / EAGLE-1 "choices" notation. A path (a, b, c) is the
# a-th best child of the root, then its b-th best child, then its c-th best child
# (0-based ranks). Every prefix of a path is present. Node counts include the root.
#   chain4       : 5 nodes, a single line of depth 4 (plain speculative decoding).
#   tree_k2_d3   : 10 nodes, two children per node near the top, depth 3.
#   eagle1_small : 17 nodes, 4 root children, 6 / 4 / 2 nodes at depths 2 / 3 / 4.
STATIC_TREES: dict[str, tuple[TreePath, ...]] = {
    "chain4": ((0,), (0, 0), (0, 0, 0), (0, 0, 0, 0)),
    "tree_k2_d3": (
        (0,), (1,),
        (0, 0), (0, 1), (1, 0), (1, 1),
        (0, 0, 0), (0, 0, 1), (0, 1, 0),
    ),
    "eagle1_small": (
        (0,), (1,), (2,), (3,),
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0),
        (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0),
        (0, 0, 0, 0), (0, 1, 0, 0),
    ),
}  # fmt: skip


class UnknownTreeError(KeyError, ValueError):
    """Unknown static tree name (both a KeyError and a ValueError)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def static_tree_spec(name: str) -> tuple[TreePath, ...]:
    """Look up a named static tree shape; unknown names raise UnknownTreeError."""
    if name in STATIC_TREES:
        return STATIC_TREES[name]
    valid = sorted(STATIC_TREES)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownTreeError(f"unknown static tree {name!r}; valid names: {valid}.{hint}")


def static_parents(
    paths: Sequence[Sequence[int]], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Parents and child ranks of a static tree given in choices notation.

    Nodes are ordered by (depth, path), so parents come first; node 0 is the root.
    Returns ``(parents [N], ranks [N])`` with ``ranks[0] == -1``.
    """
    norm = [tuple(int(r) for r in p) for p in paths]
    if len(set(norm)) != len(norm):
        raise ValueError("static tree paths contain duplicates")
    for p in norm:
        if len(p) == 0 or min(p) < 0:
            raise ValueError(f"invalid path {p}: paths must be non-empty with ranks >= 0")
    norm.sort(key=lambda p: (len(p), p))
    index: dict[TreePath, int] = {(): 0}
    parents, ranks = [-1], [-1]
    for i, p in enumerate(norm, start=1):
        if p[:-1] not in index:
            raise ValueError(f"path {p} is missing its prefix {p[:-1]}")
        index[p] = i
        parents.append(index[p[:-1]])
        ranks.append(p[-1])
    as_long = {"dtype": torch.long, "device": device}
    return torch.tensor(parents, **as_long), torch.tensor(ranks, **as_long)


def merge_chain(tokens: torch.Tensor, parents: torch.Tensor, chain: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Add the root path ``chain`` (tokens below the root) to a tree, sharing existing nodes.

    Walks down from the root: where a child of the current node already holds the next chain
    token the walk follows it, otherwise the rest of the chain is appended as new nodes, so
    siblings keep distinct tokens and the tree stays in topological order.
    ``tokens [N]`` (tokens[0] = root), ``parents [N]`` -> ``(tokens [N'], parents [N'])``.
    """
    par = check_parents(parents)
    tok = tokens.tolist()
    children: dict[tuple[int, int], int] = {(par[i], tok[i]): i for i in range(len(par) - 1, 0, -1)}
    node, new_tok, new_par = 0, [], []
    for t in chain:
        t = int(t)
        nxt = None if new_tok else children.get((node, t))
        if nxt is None:
            new_tok.append(t)
            new_par.append(node)
            node = len(par) + len(new_tok) - 1
        else:
            node = nxt
    if not new_tok:
        return tokens, parents
    return (torch.cat([tokens, tokens.new_tensor(new_tok)]), torch.cat([parents, parents.new_tensor(new_par)]))


# the EAGLE-2 dynamic tree lives in its own module; these names stay importable from here
from specforge_het.inference.dynamic_tree import (  # noqa: E402
    StepFn,
    build_dynamic_tree,
    expand_frontier,
    prune_monotone,
    prune_tree,
    stable_topk,
    stable_topk_on_device,
)

__all__ = [
    "STATIC_TREES", "StepFn", "TreeLayout", "TreePath", "UnknownTreeError", "build_dynamic_tree", "chain_parents",
    "check_parent_list", "check_parents", "expand_frontier", "layout_from_parents", "layout_on_device", "leaf_paths",
    "merge_chain", "prune_monotone", "prune_tree", "stable_topk", "stable_topk_on_device", "static_parents",
    "static_tree_spec",
]
