"""Draft-tree layouts, static tree shapes and EAGLE-2 dynamic tree construction.

Convention: a draft tree of N nodes in topological order. Node 0 is the root, i.e. the
last committed token (already decided, not yet in the base KV cache); nodes 1..N-1 are
draft tokens. ``parents[0] == -1`` and ``0 <= parents[i] < i`` for i >= 1.
All functions are pure and deterministic; new tensors live on the input's device.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

TreePath = tuple[int, ...]
StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TreeLayout:
    """Everything the base model needs to verify a draft tree in one forward."""

    parents: torch.Tensor  # [N] long, parents[0] == -1
    depth: torch.Tensor  # [N] long, root 0
    attn_mask: torch.Tensor  # [N, N] bool, [i, j] True iff j is ancestor-or-self of i
    position_offsets: torch.Tensor  # [N] long, absolute position = prefix_len + offset
    paths: torch.Tensor  # [P, D+1] long, root->leaf node indices per leaf, -1 padded

    @property
    def num_nodes(self) -> int:
        """Number of tree nodes N (root included)."""
        return int(self.parents.shape[0])


def check_parents(parents: torch.Tensor) -> list[int]:
    """Validate a parents array in the TreeLayout convention; return it as a list."""
    if parents.dim() != 1 or parents.numel() == 0:
        raise ValueError(f"parents must be a non-empty 1-D tensor, got shape {tuple(parents.shape)}")
    if parents.dtype.is_floating_point or parents.dtype.is_complex or parents.dtype == torch.bool:
        raise ValueError(f"parents must be an integer tensor, got dtype {parents.dtype}")
    par = [int(p) for p in parents.tolist()]
    if par[0] != -1:
        raise ValueError(f"parents[0] must be -1 (the root), got {par[0]}")
    for i, p in enumerate(par[1:], start=1):
        if not 0 <= p < i:
            raise ValueError(f"parents[{i}] = {p} must be in [0, {i}) (topological order)")
    return par


def layout_from_parents(parents: torch.Tensor) -> TreeLayout:
    """Build depth, ancestor mask, position offsets and root->leaf paths from parents."""
    par = check_parents(parents)
    n, device = len(par), parents.device
    depth = [0] * n
    mask = torch.zeros(n, n, dtype=torch.bool)  # [N, N], built on CPU then moved
    mask[0, 0] = True
    for i in range(1, n):
        depth[i] = depth[par[i]] + 1
        mask[i] = mask[par[i]]
        mask[i, i] = True
    has_child = set(par[1:])
    leaves = [i for i in range(n) if i not in has_child]
    paths = torch.full((len(leaves), max(depth) + 1), -1, dtype=torch.long)  # [P, D+1]
    for row, leaf in enumerate(leaves):
        chain = _root_path(leaf, par)
        paths[row, : len(chain)] = torch.tensor(chain, dtype=torch.long)
    depth_t = torch.tensor(depth, dtype=torch.long, device=device)
    return TreeLayout(
        parents=parents.to(device=device, dtype=torch.long),
        depth=depth_t,
        attn_mask=mask.to(device),
        position_offsets=depth_t.clone(),
        paths=paths.to(device),
    )


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


def stable_topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k along the last dim, ties broken by the lower index (deterministic).

    O(V) topk for the candidates (every value tied with the k-th included), then a stable sort
    of those few only: a full sort of a 32k-row draft vocabulary per draft step is wasted work.
    """
    k = min(k, x.shape[-1])
    if k == 1:  # chains: max returns the first maximal index, which is the tie rule
        values, indices = torch.max(x, dim=-1, keepdim=True)
        return values, indices
    kth = torch.topk(x, k, dim=-1).values[..., -1:]
    kk = int((x >= kth).sum(-1).max())
    values, indices = torch.topk(x, kk, dim=-1)  # [.., kk] every candidate, ties in any order
    indices, order = torch.sort(indices, dim=-1)  # by index ...
    values = torch.gather(values, -1, order)
    values, order = torch.sort(values, dim=-1, descending=True, stable=True)  # ... then by value
    return values[..., :k], torch.gather(indices, -1, order)[..., :k]



def _expand(
    frontier_scores: torch.Tensor, child_logprobs: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EAGLE-2 expansion; returns cand_tokens, cand_scores, selected flat ids, scores."""
    if child_logprobs.dim() != 2 or frontier_scores.shape != child_logprobs.shape[:1]:
        raise ValueError(
            f"expected frontier_scores [K] and child_logprobs [K, V], got "
            f"{tuple(frontier_scores.shape)} and {tuple(child_logprobs.shape)}"
        )
    if not 1 <= top_k <= child_logprobs.shape[1]:
        raise ValueError(f"top_k must be in [1, V={child_logprobs.shape[1]}], got {top_k}")
    logp, cand_tokens = stable_topk(child_logprobs, top_k)  # [K, top_k]
    cand_scores = frontier_scores[:, None] + logp  # [K, top_k]
    scores, flat = stable_topk(cand_scores.flatten(), top_k)  # [top_k]
    return cand_tokens, cand_scores, flat, scores


def expand_frontier(
    frontier_scores: torch.Tensor, child_logprobs: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One EAGLE-2 expansion step over a frontier of K nodes.

    Each frontier node proposes its top_k children by log-prob; a candidate's score is
    frontier_score + child log-prob. The next frontier is the top_k candidates overall
    (ties: lower flat index in the [K, top_k] candidate grid).
    Returns ``(parent_slot [top_k], tokens [top_k], scores [top_k],
    cand_tokens [K, top_k], cand_scores [K, top_k])``.
    """
    cand_tokens, cand_scores, flat, scores = _expand(frontier_scores, child_logprobs, top_k)
    return flat // top_k, cand_tokens.flatten()[flat], scores, cand_tokens, cand_scores


def _candidate_depths(par: list[int]) -> list[int]:
    """Depth of each candidate (root children have depth 1); rejects cycles."""
    m = len(par)
    depth = [0] * m
    for i in range(m):
        chain, a = [], i
        while a != -1 and depth[a] == 0:
            chain.append(a)
            if len(chain) > m:
                raise ValueError("node_parents contains a cycle")
            a = par[a]
        d = 0 if a == -1 else depth[a]
        for c in reversed(chain):
            d += 1
            depth[c] = d
    return depth


def prune_tree(
    node_parents: torch.Tensor, node_scores: torch.Tensor, total_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the best ``total_tokens - 1`` candidates, closed under ancestors.

    Candidates are visited by descending score (ties: lower index); each is kept together
    with its not-yet-kept ancestors if they all fit in the budget, else skipped.
    ``node_parents[i]`` indexes the candidate list (-1 = root). Returns
    ``(keep [n], new_parents [n+1])``: kept ids in topological order (depth, then id);
    kept candidate ``keep[j]`` becomes tree node j + 1 and ``new_parents[0] == -1``.
    """
    if total_tokens < 1:
        raise ValueError(f"total_tokens must be >= 1, got {total_tokens}")
    if node_parents.dim() != 1 or node_scores.shape != node_parents.shape:
        raise ValueError("node_parents and node_scores must both have shape [M]")
    par = [int(p) for p in node_parents.tolist()]
    m = len(par)
    for i, p in enumerate(par):
        if not -1 <= p < m or p == i:
            raise ValueError(f"node_parents[{i}] = {p} must be -1 or another index in [0, {m})")
    depth = _candidate_depths(par)
    budget = total_tokens - 1
    order = torch.sort(node_scores, descending=True, stable=True).indices.tolist()
    kept: set[int] = set()
    for c in order:
        if len(kept) >= budget:
            break
        missing, a = [], c
        while a != -1 and a not in kept:
            missing.append(a)
            a = par[a]
        if len(kept) + len(missing) <= budget:
            kept.update(missing)
    keep = sorted(kept, key=lambda c: (depth[c], c))
    slot = {c: j + 1 for j, c in enumerate(keep)}
    new_parents = [-1] + [0 if par[c] == -1 else slot[par[c]] for c in keep]
    device = node_parents.device
    return (
        torch.tensor(keep, dtype=torch.long, device=device),
        torch.tensor(new_parents, dtype=torch.long, device=device),
    )


def build_dynamic_tree(
    step_fn: StepFn,
    root_logprobs: torch.Tensor,
    top_k: int,
    max_depth: int,
    total_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the EAGLE-2 expand-then-prune loop.

    Level 1 is the root's top_k children. For each later level the builder calls
    ``step_fn(level_tokens [K], level_parent_ids [K]) -> child_logprobs [K, V]`` on the
    current frontier (K = top_k). Parent ids number the frontier nodes of earlier calls:
    row k of call t (1-based) has id ``(t - 1) * top_k + k`` and -1 is the root, so a
    caller can keep per-row draft hidden states in one growing buffer.
    All candidates are then pruned to ``total_tokens`` nodes (root included).
    Returns ``(tokens [N], parents [N], scores [N])`` with tokens[0] = -1, scores[0] = 0.
    """
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    device = root_logprobs.device
    zero = root_logprobs.new_zeros(1)
    cand_tok, cand_sc, flat, f_scores = _expand(zero, root_logprobs[None], top_k)
    tokens, parents, scores = [cand_tok.flatten()], [torch.full_like(flat, -1)], [cand_sc.flatten()]
    f_tokens, f_cand = cand_tok.flatten()[flat], flat  # frontier tokens / candidate ids
    f_rows = torch.full_like(flat, -1)  # parent ids in step_fn numbering
    n_cand = top_k
    for call in range(1, max_depth):
        child_logprobs = step_fn(f_tokens, f_rows)  # [K, V]
        cand_tok, cand_sc, flat, f_scores = _expand(f_scores, child_logprobs, top_k)
        tokens.append(cand_tok.flatten())
        parents.append(f_cand.repeat_interleave(top_k))
        scores.append(cand_sc.flatten())
        f_tokens, f_cand = cand_tok.flatten()[flat], n_cand + flat
        f_rows = (call - 1) * top_k + flat // top_k
        n_cand += cand_sc.numel()
    all_tokens, all_scores = torch.cat(tokens), torch.cat(scores)  # [M]
    keep, tree_parents = prune_tree(torch.cat(parents), all_scores, total_tokens)
    root_tok = torch.full((1,), -1, dtype=all_tokens.dtype, device=device)
    out_tokens = torch.cat([root_tok, all_tokens[keep]])  # [N]
    out_scores = torch.cat([zero.to(all_scores.dtype), all_scores[keep]])  # [N]
    return out_tokens, tree_parents, out_scores


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
