"""Acceptance rules for verifying a draft tree against the base model (pure functions).

Notation: the draft tree uses the convention of ``tree.py`` (node 0 = root = the last
committed token; ``parents[0] == -1``). ``base_probs[i]`` / ``base_argmax[i]`` are the base
model's next-token distribution / argmax at node i, i.e. after the root-path ending in i.
Both rules return ``(path, bonus)``: ``path`` holds the accepted node indices starting
with the root 0, ``bonus`` is the token the base model contributes after the last one.
The tokens committed this step are ``tokens[path[1:]]`` followed by ``bonus``, i.e.
``len(path)`` tokens: the accept length tau of this step is ``len(path)`` (>= 1).

The rules (`greedy_accept`, `greedy_accept_on_device`, `tree_rejection_sample`) take tensors.
Each host rule is a walk down the accepted nodes; `greedy_walk` and `rejection_walk` are those
same walks reading the base's output per node from a function, for the strategy that computes
it on demand (the per-row LM head, inference/verify.py). Same walk, same draws, same result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from specforge_het.inference.tree import check_parents


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """Temperature, then top-k (0 = off), then top-p (1.0 = off); renormalised.

    Top-k keeps every token tied with the k-th largest logit. Top-p keeps the smallest
    prefix of the sorted distribution whose mass reaches ``top_p`` (always the argmax).
    Greedy decoding is not handled here: ``temperature`` must be > 0. -> [..., V]
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy_accept for greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    x = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # [..., V]
    if 0 < top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]  # [..., 1]
        x = x.masked_fill(x < kth, float("-inf"))
    probs = torch.softmax(x, dim=-1)  # [..., V]
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        mass_before = sorted_p.cumsum(dim=-1) - sorted_p  # [..., V]
        keep = torch.zeros_like(probs, dtype=torch.bool)
        keep.scatter_(-1, order, mass_before < top_p)
        probs = probs * keep
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def _check_node_tensor(name: str, t: torch.Tensor, n: int, ndim: int) -> None:
    """Raise ValueError unless ``t`` has ``ndim`` dims and leading size ``n``."""
    if t.dim() != ndim or t.shape[0] != n:
        raise ValueError(f"{name} must have {ndim} dim(s) and leading size N={n}, got {tuple(t.shape)}")


def _path_tensor(node: int, par: list[int], device: torch.device) -> torch.Tensor:
    """Root-to-node path as a LongTensor. -> [depth + 1]"""
    chain = []
    while node != -1:
        chain.append(node)
        node = par[node]
    return torch.tensor(chain[::-1], dtype=torch.long, device=device)


NodeRows = Callable[[int], Any]  # node index -> the base's output at that node, computed on demand


def greedy_accept(tokens: torch.Tensor, parents: torch.Tensor, base_argmax: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Greedy verification: accept node i if its parent is accepted and
    ``tokens[i] == base_argmax[parents[i]]``.

    Picks the longest accepted root-path (ties: lowest node index). ``tokens[0]`` is
    ignored. ``tokens``, ``parents``, ``base_argmax`` [N]. Returns ``(path [tau], bonus)`` with
    ``bonus = base_argmax[path[-1]]``; the step commits ``len(path) == tau`` tokens (accepted drafts + bonus).
    """
    par = check_parents(parents)
    _check_node_tensor("tokens", tokens, len(par), 1)
    _check_node_tensor("base_argmax", base_argmax, len(par), 1)
    return _greedy(tokens, par, base_argmax.tolist().__getitem__)


def greedy_walk(tokens: torch.Tensor, parents: torch.Tensor, top: Callable[[int], int]) -> tuple[torch.Tensor, int]:
    """`greedy_accept` with the base's argmax read per node, ``top(node)``: called once for each node on an
    accepted path (the root first) and for no other, so a strategy that computes the base's outputs on
    demand runs the LM head on those rows only (the per-row head, inference/verify.py)."""
    par = check_parents(parents)
    _check_node_tensor("tokens", tokens, len(par), 1)
    return _greedy(tokens, par, top)


def _greedy(tokens: torch.Tensor, par: list[int], top: Callable[[int], int]) -> tuple[torch.Tensor, int]:
    """The greedy walk over accepted nodes: each evaluated once, the deepest kept (ties: lowest index)."""
    n, tok = len(par), tokens.tolist()
    children: list[list[int]] = [[] for _ in range(n)]
    for i in range(1, n):
        children[par[i]].append(i)
    tops: dict[int, int] = {}
    best, best_depth, stack = 0, 0, [(0, 0)]
    while stack:
        node, depth = stack.pop()
        tops[node] = t = int(top(node))
        if depth > best_depth or (depth == best_depth and node < best):
            best, best_depth = node, depth
        stack.extend((c, depth + 1) for c in children[node] if tok[c] == t)
    return _path_tensor(best, par, tokens.device), tops[best]


def greedy_accept_on_device(
    tokens: torch.Tensor, parents: torch.Tensor, attn_mask: torch.Tensor, depth: torch.Tensor,
    base_argmax: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`greedy_accept` without reading anything on the host, given the tree's layout.

    Node i is accepted iff every node on its root path (the root aside) holds the base's argmax at
    its parent; the path kept is the deepest accepted node's (ties: lowest node index), as in
    `greedy_accept`. ``tokens``, ``parents``, ``depth``, ``base_argmax`` [N]; ``attn_mask`` [N, N]
    (ancestor-or-self). Returns ``(order [N], tau, bonus)``: ``order[:tau]`` is the accepted path,
    root first (the other nodes follow it), ``tau`` and ``bonus = base_argmax[path[-1]]`` are 0-d.
    """
    n = tokens.shape[0]
    for name, t in (("parents", parents), ("depth", depth), ("base_argmax", base_argmax)):
        _check_node_tensor(name, t, n, 1)
    if attn_mask.shape != (n, n):
        raise ValueError(f"attn_mask must have shape ({n}, {n}), got {tuple(attn_mask.shape)}")
    idx = torch.arange(n, device=tokens.device)
    match = (tokens == base_argmax[parents.clamp_min(0)]) | (idx == 0)  # [N] node holds its parent's argmax
    accepted = ~(attn_mask & ~match[None, :]).any(-1)  # [N] its whole root path matches
    best = torch.where(accepted, depth * n + (n - 1 - idx), -1).argmax()  # deepest, then lowest index
    on_path = attn_mask[best]  # [N] ancestors-or-self of best: the path in index order
    order = torch.argsort(torch.where(on_path, idx, idx + n))
    return order, on_path.sum(), base_argmax[best]


def _normalise(p: torch.Tensor) -> torch.Tensor:
    """p / sum(p). -> [V]"""
    return p / p.sum()


def _try_candidates(
    kids: list[int],
    tok: list[int],
    p: torch.Tensor,
    q: torch.Tensor | None,
    generator: torch.Generator,
) -> tuple[int | None, torch.Tensor]:
    """Visit the children of one node; return (accepted child or None, residual p [V])."""
    for c in kids:
        x = tok[c]
        u = float(torch.rand((), generator=generator, device=p.device))
        px = float(p[x])
        if q is None:  # deterministic candidate: q is a point mass on x
            if u < px:  # p is kept normalised, so this is p(x) / sum(p)
                return c, p
            rest = p.clone()
            rest[x] = 0.0
            if float(rest.sum()) <= 0.0:  # only reachable through rounding
                break
            p = _normalise(rest)
            continue
        qx = float(q[x])
        ratio = px / qx if qx > 0.0 else float(px > 0.0)
        if u < ratio:
            return c, p
        residual = (p - q).clamp_min(0.0)  # [V]
        if float(residual.sum()) <= 0.0:  # p == q up to rounding: drop x instead
            residual = p.clone()
            residual[x] = 0.0
        if float(residual.sum()) > 0.0:
            p = _normalise(residual)
        q = q.clone()
        q[x] = 0.0
        if float(q.sum()) <= 0.0:
            break
        q = _normalise(q)
    return None, p


def tree_rejection_sample(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    base_probs: torch.Tensor,
    generator: torch.Generator,
    draft_probs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Lossless multi-candidate (recursive) rejection sampling over a draft tree.

    From the root, with residual p = base_probs[cur], children are tried in node-index
    order. ``draft_probs is None``: children are deterministic candidates; accept x with
    probability p(x) / sum(p), else zero p(x) and renormalise. Otherwise children were
    sampled without replacement from q = draft_probs[cur]: accept x with probability
    min(1, p(x) / q(x)), else p <- norm(max(p - q, 0)) and q <- norm(q with q(x) = 0).
    On acceptance move to the child; when no child is accepted the bonus token is drawn
    from the residual p. The committed tokens are distributed exactly as the base model.
    ``tokens [N]``, ``parents [N]``, ``base_probs [N, V]``, ``draft_probs [N, V]``.
    Returns ``(path [tau], bonus)`` as in :func:`greedy_accept`.
    """
    par = check_parents(parents)
    _check_node_tensor("tokens", tokens, len(par), 1)
    _check_node_tensor("base_probs", base_probs, len(par), 2)
    if draft_probs is not None and draft_probs.shape != base_probs.shape:
        raise ValueError(f"draft_probs must have shape {tuple(base_probs.shape)}, got {tuple(draft_probs.shape)}")
    return _rejection(tokens, par, base_probs.__getitem__, generator, draft_probs)


def rejection_walk(tokens: torch.Tensor, parents: torch.Tensor, row: NodeRows, generator: torch.Generator,
                   draft_probs: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """`tree_rejection_sample` with the base's probabilities read per node, ``row(node) -> [V]``: called
    once for each node on the sampled path, in order, and for no other (the per-row head,
    inference/verify.py). Same random draws, so the same tokens for one generator state."""
    par = check_parents(parents)
    _check_node_tensor("tokens", tokens, len(par), 1)
    if draft_probs is not None:
        _check_node_tensor("draft_probs", draft_probs, len(par), 2)
    return _rejection(tokens, par, row, generator, draft_probs)


def _rejection(tokens: torch.Tensor, par: list[int], row: NodeRows, generator: torch.Generator,
               draft_probs: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """The walk of `tree_rejection_sample` from the root down the accepted children."""
    n = len(par)
    children: list[list[int]] = [[] for _ in range(n)]
    for i in range(1, n):
        children[par[i]].append(i)
    tok = tokens.tolist()
    path, cur = [0], 0
    while True:
        p = row(cur)  # [V]
        p = _normalise(p.to(torch.promote_types(p.dtype, torch.float32)))
        q = None if draft_probs is None else _normalise(draft_probs[cur].to(p.dtype))  # [V]
        nxt, p = _try_candidates(children[cur], tok, p, q, generator)
        if nxt is None:
            break
        path.append(nxt)
        cur = nxt
    bonus = int(torch.multinomial(p, 1, generator=generator))
    return torch.tensor(path, dtype=torch.long, device=tokens.device), bonus
