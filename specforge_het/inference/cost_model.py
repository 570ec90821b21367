"""Cost model for choosing a draft-tree shape: expected accept length and tokens per second.

Pure functions only (no model runs); the measurements come from `calibrate.py`.

Acceptance model: at depth d of the draft tree (d = 1: the root's children), given that the
path down to the parent was accepted, the base's token is the draft's rank-r candidate with
probability ``a[d][r]`` (ranks 0-based, independent of the path taken). A node's probability of
being accepted is then the product of ``a`` along its root path, and for any tree

    E[τ] = 1 + Σ over draft nodes of P(node accepted)        (the 1 is the bonus token)

because the accepted nodes form one root path and siblings exclude each other. The EAGLE-2
dynamic tree is simulated with the real `build_dynamic_tree`, fed these probabilities as the
draft's log-probs: the tree the decoder would build for a draft whose confidence matches its
measured acceptance.

Cost model: one speculative step costs
``verify(N) + head(min(N, τ + 1)) + draft(D, K) + update(τ)``: the base layers over the N tree
tokens (with the decoder's tree layout and cache roll-back), the base LM head on the rows the
acceptance rule reads (the decoder runs it on demand along the accepted path, plus about one
prefetched row), the draft's proposal (a fixed part plus one draft step per extra level, each
expanding K nodes), and the draft's update with the τ accepted tokens. Predicted speed-up = (E[τ] / step) / (1 / base-only step).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from specforge_het.inference.lookup_model import LookupStats, depth_mass, tau_with_lookup
from specforge_het.inference.tree import build_dynamic_tree, layout_from_parents

DEPTHS = tuple(range(1, 9))
TOP_KS = tuple(range(1, 9))
TOTALS = (4, 6, 8, 12, 16, 24, 32, 48, 64)
MIN_PROB = 1e-9  # keeps log-probs finite; a node this unlikely adds nothing to E[τ]


# ---------------------------------------------------------------- acceptance


@dataclass(frozen=True)
class Acceptance:
    """probs[d-1][r]: P(base token = draft's rank-r candidate at depth d | path to depth d-1 accepted)."""

    probs: tuple[tuple[float, ...], ...]  # [depths][ranks]
    source: str  # where the numbers come from, shown in reports
    samples: tuple[int, ...] = ()  # positions behind each depth's estimate (measured acceptance)

    def __post_init__(self):
        if not self.probs or not all(self.probs):
            raise ValueError("acceptance needs at least one depth with at least one rank")
        for d, row in enumerate(self.probs, start=1):
            if any(not 0.0 <= p <= 1.0 for p in row) or sum(row) > 1.0 + 1e-6:
                raise ValueError(f"acceptance at depth {d} must be probabilities in [0, 1] summing to <= 1, got {row}")

    def row(self, depth: int, k: int) -> list[float]:
        """Probabilities of ranks 0..k-1 at `depth` (1-based); deeper than measured reuses the last depth."""
        row = self.probs[min(depth, len(self.probs)) - 1]
        return [row[r] if r < len(row) else 0.0 for r in range(k)]

    def to_json(self) -> dict:
        return {"source": self.source, "probs": [list(r) for r in self.probs], "samples": list(self.samples)}

    @classmethod
    def from_json(cls, data: dict) -> Acceptance:
        return cls(tuple(tuple(float(p) for p in r) for r in data["probs"]), data["source"],
                   tuple(int(s) for s in data.get("samples", ())))


def acceptance_from_ranks(ranks: torch.Tensor, valid: torch.Tensor, max_rank: int, source: str,
                          prior_weight: float = 8.0) -> Acceptance:
    """Estimate per-depth, per-rank acceptance from ranks observed along true continuations.

    ranks [T, D]: for start position t, the rank of the base's token at depth d among the draft's
    candidates when fed the true path (0-based; >= max_rank = not among the top max_rank).
    valid [T, D]: whether the true token at that depth exists. Depth d counts a start only when
    depths 1..d-1 were hits (the path so far would be accepted). Deep depths have few such starts,
    so each depth's estimate is shrunk, with `prior_weight` pseudo-samples, towards the same
    depth's rank frequencies over every start (the draft fed the true path, hit or not).
    """
    if ranks.shape != valid.shape or ranks.dim() != 2:
        raise ValueError(f"ranks and valid must both be [T, D], got {tuple(ranks.shape)} and {tuple(valid.shape)}")
    hit = (ranks < max_rank) & valid  # [T, D]
    alive = torch.ones(ranks.shape[0], dtype=torch.bool)
    probs, samples = [], []
    for d in range(ranks.shape[1]):
        eligible = alive & valid[:, d]
        one_hot = torch.stack([ranks[:, d] == r for r in range(max_rank)], dim=1).double()  # [T, R]
        marginal = (one_hot * valid[:, d, None]).sum(0) / max(int(valid[:, d].sum()), 1)  # [R]
        n = int(eligible.sum())
        est = ((one_hot * eligible[:, None]).sum(0) + prior_weight * marginal) / (n + prior_weight)
        probs.append(tuple(round(float(p), 6) for p in est))
        samples.append(n)
        alive = alive & hit[:, d]
    return Acceptance(tuple(probs), source, tuple(samples))


def acceptance_from_training_log(rows: Sequence[dict], top_k: int, source: str, max_rank: int = 8) -> Acceptance:
    """Acceptance from the per-step top-1 / top-k accuracies a draft's training logged.

    Step i's accuracies (EagleV3's training-time test: the draft fed the true tokens) stand for
    depth i + 1; rank 0 gets the top-1 accuracy and ranks 1..top_k-1 share (top-k - top-1)
    evenly. The last evaluation row is used, else the last training row.
    """
    for prefix in ("eval_", "train_"):
        row = next((r for r in reversed(rows) if f"{prefix}top1_acc_0" in r), None)
        if row is not None:
            break
    else:
        raise ValueError(f"{source}: no top1_acc_0 accuracies found; measure acceptance instead "
                         "(--inference.auto_acceptance measure)")
    probs, i = [], 0
    while f"{prefix}top1_acc_{i}" in row:
        top1 = float(row[f"{prefix}top1_acc_{i}"])
        topk = max(float(row.get(f"{prefix}topk_acc_{i}", top1)), top1)
        rest = (topk - top1) / (top_k - 1) if top_k > 1 else 0.0
        probs.append(tuple([top1] + [rest if r < top_k else 0.0 for r in range(1, max_rank)]))
        i += 1
    return Acceptance(tuple(probs), f"{source} ({prefix}accuracies at step {row.get('step', '?')})")


# ---------------------------------------------------------------- expected accept length


@dataclass(frozen=True)
class TreeShape:
    kind: str  # chain | dynamic
    max_depth: int
    top_k: int
    total_tokens: int  # tree tokens verified per step, root included

    def describe(self) -> str:
        if self.kind == "chain":
            return f"chain (depth {self.max_depth})"
        return f"dynamic (depth {self.max_depth}, top_k {self.top_k}, tokens {self.total_tokens})"


def expected_tau_chain(acc: Acceptance, depth: int) -> float:
    """1 + Σ_d Π_{i<=d} a[i][0]: a chain of `depth` top-1 tokens."""
    tau, path = 1.0, 1.0
    for d in range(1, depth + 1):
        path *= acc.row(d, 1)[0]
        tau += path
    return tau


def dynamic_tree_probs(acc: Acceptance, depth: int, top_k: int, total_tokens: int) -> torch.Tensor:
    """Acceptance probability of every draft node of the EAGLE-2 tree build_dynamic_tree keeps. -> [N-1]"""
    return dynamic_tree_nodes(acc, depth, top_k, total_tokens)[0]


def dynamic_tree_nodes(acc: Acceptance, depth: int, top_k: int, total_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(acceptance probability [N-1], depth [N-1]) of every draft node of the tree build_dynamic_tree keeps."""
    def logp(d: int) -> torch.Tensor:
        return torch.tensor(acc.row(d, top_k), dtype=torch.float64).clamp_min(MIN_PROB).log()

    calls = [0]

    def step(tokens: torch.Tensor, parent_rows: torch.Tensor) -> torch.Tensor:
        calls[0] += 1  # call t expands the frontier at depth t: its children are at depth t + 1
        return logp(calls[0] + 1).expand(tokens.shape[0], top_k)

    _, parents, scores = build_dynamic_tree(step, logp(1), top_k, depth, total_tokens)
    return scores[1:].exp(), layout_from_parents(parents).depth[1:]


def expected_tau(acc: Acceptance, shape: TreeShape) -> float:
    if shape.kind == "chain":
        return expected_tau_chain(acc, shape.max_depth)
    return 1.0 + float(dynamic_tree_probs(acc, shape.max_depth, shape.top_k, shape.total_tokens).sum())


def expected_taus(acc: Acceptance, shapes: Sequence[TreeShape], lookup: LookupStats | None = None) -> list[float]:
    """expected_tau of every shape, one tree build per (depth, top_k); with `lookup`, the tree plus the
    prompt-lookup branch (lookup_model.py).

    A child's probability never exceeds its parent's and parents come first among equal
    scores, so the pruned tree of N tokens is the N - 1 most likely nodes of the largest tree:
    E[τ] for every N is a prefix sum (checked against per-N builds in the tests).
    """
    if lookup is not None:
        return _taus_with_lookup(acc, shapes, lookup)
    largest = _largest_trees(shapes)
    prefix = {key: torch.cat([torch.ones(1, dtype=torch.float64),
                              1.0 + dynamic_tree_probs(acc, *key, n).sort(descending=True, stable=True).values.cumsum(0)])
              for key, n in largest.items()}
    return [expected_tau_chain(acc, s.max_depth) if s.kind == "chain"
            else float(prefix[(s.max_depth, s.top_k)][s.total_tokens - 1]) for s in shapes]


def _largest_trees(shapes: Sequence[TreeShape]) -> dict[tuple[int, int], int]:
    """{(depth, top_k): the most tokens any dynamic shape asks of it}: one tree build each serves every N."""
    largest: dict[tuple[int, int], int] = {}
    for s in shapes:
        if s.kind != "chain":
            largest[(s.max_depth, s.top_k)] = max(largest.get((s.max_depth, s.top_k), 0), s.total_tokens)
    return largest


def _taus_with_lookup(acc: Acceptance, shapes: Sequence[TreeShape], lookup: LookupStats) -> list[float]:
    ranked = {}
    for key, n in _largest_trees(shapes).items():
        probs, depths = dynamic_tree_nodes(acc, *key, n)
        order = probs.sort(descending=True, stable=True).indices
        ranked[key] = (probs[order], depths[order])
    taus = []
    for s in shapes:
        if s.kind == "chain":
            mass = [math.prod(acc.row(d, 1)[0] for d in range(1, k + 1)) for k in range(1, s.max_depth + 1)]
        else:
            probs, depths = ranked[(s.max_depth, s.top_k)]
            mass = depth_mass(probs[: s.total_tokens - 1], depths[: s.total_tokens - 1], s.max_depth)
        taus.append(tau_with_lookup(mass, lookup))
    return taus


# ---------------------------------------------------------------- costs


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float:
    """Piecewise-linear through sorted (x, y) points; linear extrapolation from the end segments."""
    pts = sorted(points)
    if not pts:
        raise ValueError("no measured points to interpolate")
    if len(pts) == 1:
        return pts[0][1]
    i = 1
    while i < len(pts) - 1 and x > pts[i][0]:
        i += 1
    (x0, y0), (x1, y1) = pts[i - 1], pts[i]
    return max(y0 + (y1 - y0) * (x - x0) / (x1 - x0), 0.0)


def monotone(points: Sequence[tuple[int, float]]) -> tuple[tuple[int, float], ...]:
    """Least-squares non-decreasing fit (pool adjacent violators) of (x, y) points sorted by x.

    More tree tokens, wider draft steps or more committed tokens never cost less; a measured
    dip is timing noise (shared CPUs) and would steer the search towards it.
    """
    pts = sorted(points)
    blocks: list[list[float]] = []  # [sum, count]
    for _, y in pts:
        blocks.append([y, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    fitted = [b[0] / b[1] for b in blocks for _ in range(int(b[1]))]
    return tuple((x, y) for (x, _), y in zip(pts, fitted))


@dataclass(frozen=True)
class Costs:
    """Measured seconds on one device / dtype / thread count for one base + draft pair."""

    verify: tuple[tuple[int, float], ...]  # (tree tokens N, s): base layers + decoder bookkeeping, no LM head
    head: tuple[tuple[int, float], ...]  # (rows, s): the base LM head (+ argmax) on that many rows
    draft_fixed: tuple[tuple[int, float], ...]  # (top_k, s): a depth-1 proposal
    draft_step: tuple[tuple[int, float], ...]  # (top_k, s): each further draft step expanding top_k nodes
    update: tuple[tuple[int, float], ...]  # (accepted tokens, s): the draft's update after a verify
    base_step: float  # one base-only decoding step

    def draft(self, depth: int, top_k: int) -> float:
        return interpolate(self.draft_fixed, top_k) + (depth - 1) * interpolate(self.draft_step, top_k)

    def step(self, shape: TreeShape, tau: float, lookup: LookupStats | None = None) -> tuple[float, float, float]:
        """(verify with its head rows, draft, update) seconds of one speculative step; with `lookup`, the verify
        holds the branch's tokens too whenever it is proposed."""
        n = shape.total_tokens
        verify = interpolate(self.verify, n)
        if lookup is not None and lookup.proposed > 0:
            with_branch = interpolate(self.verify, n + lookup.mean_tokens)
            verify = (1.0 - lookup.proposed) * verify + lookup.proposed * with_branch
        verify += interpolate(self.head, min(n, tau + 1.0))
        return verify, self.draft(shape.max_depth, shape.top_k), interpolate(self.update, tau)

    def to_json(self) -> dict:
        return {"verify": [list(p) for p in self.verify], "head": [list(p) for p in self.head],
                "draft_fixed": [list(p) for p in self.draft_fixed],
                "draft_step": [list(p) for p in self.draft_step], "update": [list(p) for p in self.update],
                "base_step": self.base_step}

    @classmethod
    def from_json(cls, data: dict) -> Costs:
        def pts(key):
            return tuple((int(x), float(y)) for x, y in data[key])

        return cls(pts("verify"), pts("head"), pts("draft_fixed"), pts("draft_step"), pts("update"),
                   float(data["base_step"]))

    def smoothed(self) -> Costs:
        """Every curve made non-decreasing (see `monotone`)."""
        return Costs(monotone(self.verify), monotone(self.head), monotone(self.draft_fixed),
                     monotone(self.draft_step), monotone(self.update), self.base_step)


# ---------------------------------------------------------------- search


@dataclass(frozen=True)
class Candidate:
    shape: TreeShape
    tau: float
    verify_s: float
    draft_s: float
    update_s: float
    base_step_s: float

    @property
    def step_s(self) -> float:
        return self.verify_s + self.draft_s + self.update_s

    @property
    def tokens_per_s(self) -> float:
        return self.tau / self.step_s if self.step_s > 0 else math.inf

    @property
    def speedup(self) -> float:
        return self.tokens_per_s * self.base_step_s

    def to_json(self) -> dict:
        s = self.shape
        return {"tree": s.kind, "max_depth": s.max_depth, "top_k": s.top_k, "total_tokens": s.total_tokens,
                "expected_tau": round(self.tau, 4), "verify_ms": round(1e3 * self.verify_s, 3),
                "draft_ms": round(1e3 * self.draft_s, 3), "update_ms": round(1e3 * self.update_s, 3),
                "predicted_tokens_per_s": round(self.tokens_per_s, 3), "predicted_speedup": round(self.speedup, 4)}


def candidate_shapes(depths: Iterable[int] = DEPTHS, top_ks: Iterable[int] = TOP_KS,
                     totals: Iterable[int] = TOTALS) -> list[TreeShape]:
    """Chains for top_k 1; dynamic trees for top_k >= 2 with depth < total_tokens <= every candidate + root.

    A dynamic tree with total_tokens - 1 < depth keeps the same nodes as the one of depth
    total_tokens - 1 (a kept node needs its whole root path) at a higher draft cost: skipped.
    """
    shapes = []
    for k in sorted(set(top_ks)):
        for d in sorted(set(depths)):
            if k == 1:
                shapes.append(TreeShape("chain", d, 1, d + 1))
                continue
            most = 1 + k + (d - 1) * k * k
            shapes += [TreeShape("dynamic", d, k, n) for n in sorted(set(totals)) if d < n <= most]
    if not shapes:
        raise ValueError("no tree shapes to search: give depths >= 1, top_ks >= 1 and totals >= 2")
    return shapes


def evaluate(costs: Costs, acc: Acceptance, shape: TreeShape, tau: float | None = None,
             lookup: LookupStats | None = None) -> Candidate:
    tau = expected_taus(acc, [shape], lookup)[0] if tau is None else tau
    return Candidate(shape, tau, *costs.step(shape, tau, lookup), costs.base_step)


def search(costs: Costs, acc: Acceptance, shapes: Sequence[TreeShape] | None = None,
           lookup: LookupStats | None = None) -> list[Candidate]:
    """Every shape evaluated, best predicted tokens/s first (ties: the earlier, smaller shape); with `lookup`,
    each shape with the prompt-lookup branch merged in."""
    shapes = list(shapes) if shapes is not None else candidate_shapes()
    found = [evaluate(costs, acc, s, tau, lookup) for s, tau in zip(shapes, expected_taus(acc, shapes, lookup))]
    return sorted(found, key=lambda c: -c.tokens_per_s)
