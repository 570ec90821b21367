"""EAGLE-2 dynamic draft trees: stable top-k, expansion, pruning, and the expand-then-prune loop.

Pure and deterministic, in the tree convention of ``tree.py`` (node 0 = root, parents first).
Each piece has a host variant and one that reads nothing on the host (``on_device``), so a GPU
decoding step need not wait for the device while it builds a tree; both give the same tree.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def stable_topk_on_device(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`stable_topk` without reading anything on the host (no count of ties to size a second topk).

    Every value above the k-th is taken, and of the values equal to it the lowest indices, as
    many as are missing (a running count of ties along the row): exactly k per row, selected by
    a second topk over that 0/1 mask, then ordered by (value desc, index asc). Same result.
    """
    k = min(k, x.shape[-1])
    if k == 1:
        values, indices = torch.max(x, dim=-1, keepdim=True)
        return values, indices
    kth = torch.topk(x, k, dim=-1).values[..., -1:]  # [.., 1]
    above, tied = x > kth, x == kth
    missing = k - above.sum(-1, keepdim=True)  # ties to take, lowest index first
    take = above | (tied & (tied.cumsum(-1) <= missing))  # exactly k True per row
    indices = torch.sort(torch.topk(take.to(torch.float32), k, dim=-1).indices, dim=-1).values
    values, order = torch.sort(torch.gather(x, -1, indices), dim=-1, descending=True, stable=True)
    return values, torch.gather(indices, -1, order)


def _expand(
    frontier_scores: torch.Tensor, child_logprobs: torch.Tensor, top_k: int, topk=stable_topk
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EAGLE-2 expansion; returns cand_tokens, cand_scores, selected flat ids, scores."""
    if child_logprobs.dim() != 2 or frontier_scores.shape != child_logprobs.shape[:1]:
        raise ValueError(
            f"expected frontier_scores [K] and child_logprobs [K, V], got "
            f"{tuple(frontier_scores.shape)} and {tuple(child_logprobs.shape)}"
        )
    if not 1 <= top_k <= child_logprobs.shape[1]:
        raise ValueError(f"top_k must be in [1, V={child_logprobs.shape[1]}], got {top_k}")
    logp, cand_tokens = topk(child_logprobs, top_k)  # [K, top_k]
    cand_scores = frontier_scores[:, None] + logp  # [K, top_k]
    scores, flat = topk(cand_scores.flatten(), top_k)  # [top_k]
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


def prune_monotone(
    node_parents: torch.Tensor, node_scores: torch.Tensor, total_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`prune_tree` for EAGLE-2 candidates, without reading anything on the host.

    Valid when every candidate comes after its parent and scores no higher (cumulative
    log-probabilities, level by level, as `build_dynamic_tree` makes them): then the best
    ``total_tokens - 1`` by (score desc, index asc) already hold their ancestors, and index
    order is (depth, index) order. Same ``(keep [n], new_parents [n+1])`` as `prune_tree` there.
    """
    if total_tokens < 1:
        raise ValueError(f"total_tokens must be >= 1, got {total_tokens}")
    if node_parents.dim() != 1 or node_scores.shape != node_parents.shape:
        raise ValueError("node_parents and node_scores must both have shape [M]")
    m, device = node_parents.shape[0], node_parents.device
    budget = min(total_tokens - 1, m)
    root = torch.full((1,), -1, dtype=torch.long, device=device)
    if budget == 0:
        return torch.zeros(0, dtype=torch.long, device=device), root
    keep = torch.sort(stable_topk_on_device(node_scores, budget)[1]).values  # [n]
    slot = torch.zeros(m, dtype=torch.long, device=device)
    slot[keep] = torch.arange(1, budget + 1, device=device)  # candidate -> tree node
    par = node_parents[keep].to(torch.long)
    return keep, torch.cat([root, torch.where(par < 0, 0, slot[par.clamp_min(0)])])


def build_dynamic_tree(
    step_fn: StepFn,
    root_logprobs: torch.Tensor,
    top_k: int,
    max_depth: int,
    total_tokens: int,
    on_device: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the EAGLE-2 expand-then-prune loop.

    Level 1 is the root's top_k children. For each later level the builder calls
    ``step_fn(level_tokens [K], level_parent_ids [K]) -> child_logprobs [K, V]`` on the
    current frontier (K = top_k). Parent ids number the frontier nodes of earlier calls:
    row k of call t (1-based) has id ``(t - 1) * top_k + k`` and -1 is the root, so a
    caller can keep per-row draft hidden states in one growing buffer.
    All candidates are then pruned to ``total_tokens`` nodes (root included).
    ``on_device``: the same tree without reading anything on the host (`stable_topk_on_device`,
    `prune_monotone`; child log-probs must be <= 0, as log-softmax outputs are).
    Returns ``(tokens [N], parents [N], scores [N])`` with tokens[0] = -1, scores[0] = 0.
    """
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    topk, prune = (stable_topk_on_device, prune_monotone) if on_device else (stable_topk, prune_tree)
    device = root_logprobs.device
    zero = root_logprobs.new_zeros(1)
    cand_tok, cand_sc, flat, f_scores = _expand(zero, root_logprobs[None], top_k, topk)
    tokens, parents, scores = [cand_tok.flatten()], [torch.full_like(flat, -1)], [cand_sc.flatten()]
    f_tokens, f_cand = cand_tok.flatten()[flat], flat  # frontier tokens / candidate ids
    f_rows = torch.full_like(flat, -1)  # parent ids in step_fn numbering
    n_cand = top_k
    for call in range(1, max_depth):
        child_logprobs = step_fn(f_tokens, f_rows)  # [K, V]
        cand_tok, cand_sc, flat, f_scores = _expand(f_scores, child_logprobs, top_k, topk)
        tokens.append(cand_tok.flatten())
        parents.append(f_cand.repeat_interleave(top_k))
        scores.append(cand_sc.flatten())
        f_tokens, f_cand = cand_tok.flatten()[flat], n_cand + flat
        f_rows = (call - 1) * top_k + flat // top_k
        n_cand += cand_sc.numel()
    all_tokens, all_scores = torch.cat(tokens), torch.cat(scores)  # [M]
    keep, tree_parents = prune(torch.cat(parents), all_scores, total_tokens)
    root_tok = torch.full((1,), -1, dtype=all_tokens.dtype, device=device)
    out_tokens = torch.cat([root_tok, all_tokens[keep]])  # [N]
    out_scores = torch.cat([zero.to(all_scores.dtype), all_scores[keep]])  # [N]
    return out_tokens, tree_parents, out_scores
