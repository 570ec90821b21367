"""Acceptance rules for verifying a draft tree against the base model (pure functions).

Notation: the draft tree uses the convention of ``tree.py`` (node 0 = root = the last
committed token; ``parents[0] == -1``). ``base_probs[i]`` / ``base_argmax[i]`` are the base
model's next-token distribution / argmax at node i, i.e. after the root-path ending in i.
Both rules return ``(path, bonus)``: ``path`` holds the accepted node indices starting
with the root 0, ``bonus`` is the token the base model contributes after the last one.
The tokens committed this step are ``tokens[path[1:]]`` followed by ``bonus``, i.e.
``len(path)`` tokens: the accept length tau of this step is ``len(path)`` (>= 1).

The rules (`greedy_accept`, `greedy_accept_on_device`, `tree_rejection_sample`) take tensors only.
Each host rule is a walk down the accepted nodes, `GreedyWalk` / `RejectionWalk`, fed the base's
output one node at a time: `walk.node` is the next node whose row the walk reads (None when done),
`walk.feed(row)` gives it, `walk.result()` is `(path, bonus)`. The rules here feed the walks from
the full tensors; the per-row LM head (inference/verify.py) feeds the same walks rows it computes
on demand. Same walk, same draws, same result.
"""

from __future__ import annotations

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


def _children(par: list[int]) -> list[list[int]]:
    """Children of every node, in node-index order."""
    children: list[list[int]] = [[] for _ in range(len(par))]
    for i in range(1, len(par)):
        children[par[i]].append(i)
    return children


def greedy_accept(tokens: torch.Tensor, parents: torch.Tensor, base_argmax: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Greedy verification: accept node i if its parent is accepted and
    ``tokens[i] == base_argmax[parents[i]]``.

    Picks the longest accepted root-path (ties: lowest node index). ``tokens[0]`` is
    ignored. ``tokens``, ``parents``, ``base_argmax`` [N]. Returns ``(path [tau], bonus)`` with
    ``bonus = base_argmax[path[-1]]``; the step commits ``len(path) == tau`` tokens (accepted drafts + bonus).
    """
    walk = GreedyWalk(tokens, parents)
    _check_node_tensor("base_argmax", base_argmax, len(walk.par), 1)
    top = base_argmax.tolist()
    while walk.node is not None:
        walk.feed(top[walk.node])
    return walk.result()


class GreedyWalk:
    """The walk of `greedy_accept`, fed the base's argmax one node at a time.

    `node` is the next node whose argmax the walk reads: the root first, then only nodes whose parent
    was read and holds this node's token as its argmax, each once (None when done); `feed(argmax)`
    gives it. The deepest node read is kept (ties: lowest index). ``tokens``, ``parents`` [N].
    """

    def __init__(self, tokens: torch.Tensor, parents: torch.Tensor) -> None:
        self.par = check_parents(parents)
        _check_node_tensor("tokens", tokens, len(self.par), 1)
        self._device, self._tok, self._children = tokens.device, tokens.tolist(), _children(self.par)
        self._tops: dict[int, int] = {}
        self._best, self._best_depth, self._stack = 0, 0, [(0, 0)]

    @property
    def node(self) -> int | None:
        return self._stack[-1][0] if self._stack else None

    def feed(self, argmax: int) -> None:
        if not self._stack:
            raise RuntimeError("the walk is done (walk.node is None): read walk.result()")
        node, depth = self._stack.pop()
        self._tops[node] = t = int(argmax)
        if depth > self._best_depth or (depth == self._best_depth and node < self._best):
            self._best, self._best_depth = node, depth
        self._stack.extend((c, depth + 1) for c in self._children[node] if self._tok[c] == t)

    def result(self) -> tuple[torch.Tensor, int]:
        """(path [tau] root first, bonus = the argmax at the path's last node)."""
        return _path_tensor(self._best, self.par, self._device), self._tops[self._best]


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
    walk = RejectionWalk(tokens, parents, generator, draft_probs)
    _check_node_tensor("base_probs", base_probs, len(walk.par), 2)
    if draft_probs is not None and draft_probs.shape != base_probs.shape:
        raise ValueError(f"draft_probs must have shape {tuple(base_probs.shape)}, got {tuple(draft_probs.shape)}")
    while walk.node is not None:
        walk.feed(base_probs[walk.node])
    return walk.result()


class RejectionWalk:
    """The walk of `tree_rejection_sample`, fed the base's probabilities one node at a time.

    `node` is the next node whose row [V] the walk reads: the root, then each accepted child, in
    order (None when done); `feed(probs)` tries that node's children and, when none is accepted,
    draws the bonus from the residual. The draws come from `generator` in the same order whatever
    feeds the walk, so one generator state gives the same path and bonus.
    """

    def __init__(self, tokens: torch.Tensor, parents: torch.Tensor, generator: torch.Generator,
                 draft_probs: torch.Tensor | None = None) -> None:
        self.par = check_parents(parents)
        _check_node_tensor("tokens", tokens, len(self.par), 1)
        if draft_probs is not None:
            _check_node_tensor("draft_probs", draft_probs, len(self.par), 2)
        self._device, self._tok, self._children = tokens.device, tokens.tolist(), _children(self.par)
        self._generator, self._draft_probs = generator, draft_probs
        self.node: int | None = 0
        self._path, self._bonus = [0], -1

    def feed(self, probs: torch.Tensor) -> None:
        cur = self.node
        if cur is None:
            raise RuntimeError("the walk is done (walk.node is None): read walk.result()")
        p = _normalise(probs.to(torch.promote_types(probs.dtype, torch.float32)))  # [V]
        q = None if self._draft_probs is None else _normalise(self._draft_probs[cur].to(p.dtype))  # [V]
        nxt, p = _try_candidates(self._children[cur], self._tok, p, q, self._generator)
        if nxt is not None:
            self._path.append(nxt)
        else:
            self._bonus = int(torch.multinomial(p, 1, generator=self._generator))
        self.node = nxt

    def result(self) -> tuple[torch.Tensor, int]:
        """(path [tau] root first, bonus drawn from the last node's residual)."""
        return torch.tensor(self._path, dtype=torch.long, device=self._device), self._bonus
