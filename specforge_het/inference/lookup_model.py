"""The prompt-lookup branch in the cost model: how often it is proposed, how far it matches, what it costs.

Pure functions only; `calibrate.measure_lookup` feeds them the base's own answers.

With the branch on (`inference/lookup.py`), a step verifies the draft tree plus up to L tokens copied from
the context, and accepts the longer of the two matches. Let a_k be the probability that the draft tree's
accepted path reaches depth k (the sum of the acceptance probabilities of its depth-k nodes: accepted nodes
form one root path) and b_k the probability that the branch is proposed and its first k tokens are the base's.
Taking the two as independent,

    E[τ] = 1 + Σ_k (a_k + b_k - a_k · b_k)

(a_k alone is the tree's E[τ] - 1). Independence overstates E[τ] somewhat: both tend to be right on the same
easy, repetitive text. The verify then holds N + (the branch's length, when proposed) tokens, an upper
bound: branch tokens the tree already drafted are not added twice (`tree.merge_chain`).
Both numbers are measured along true continuations, as the draft's acceptance is: at every answer position,
the branch the decoder would propose there, compared with the tokens that really followed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest

import torch

from specforge_het.inference.lookup import lookup_continuation


@dataclass(frozen=True)
class LookupStats:
    """Prompt lookup measured on answers: reach[k-1] = P(branch proposed and its first k tokens are the truth)."""

    reach: tuple[float, ...]  # k = 1..num_tokens
    proposed: float  # share of positions where a branch is proposed
    mean_tokens: float  # mean branch length when proposed (tokens it adds to a verify, at most)
    positions: int
    source: str

    def __post_init__(self):
        if any(not 0.0 <= p <= 1.0 for p in (*self.reach, self.proposed)) or self.mean_tokens < 0:
            raise ValueError(f"lookup stats must be probabilities and a length >= 0, got {self}")

    def to_json(self) -> dict:
        return {"reach": list(self.reach), "proposed": self.proposed, "mean_tokens": self.mean_tokens,
                "positions": self.positions, "source": self.source}

    @classmethod
    def from_json(cls, data: dict) -> LookupStats:
        return cls(tuple(float(p) for p in data["reach"]), float(data["proposed"]), float(data["mean_tokens"]),
                   int(data["positions"]), data["source"])


def lookup_stats(answers: Sequence[tuple[Sequence[int], Sequence[int]]], max_ngram: int, num_tokens: int,
                 source: str) -> LookupStats:
    """Lookup along true continuations. answers: (prompt ids, answer ids) pairs. At answer position t (the root:
    answer[t] is known) the branch is `lookup_continuation(prompt + answer[:t+1])`; its first k tokens count
    as a hit when they equal answer[t+1 : t+1+k]. reach[k-1] is over the positions with k true tokens left."""
    hits = torch.zeros(num_tokens, dtype=torch.float64)
    seen = torch.zeros(num_tokens, dtype=torch.float64)
    positions = proposed = branch_tokens = 0
    for prompt, answer in answers:
        context = list(prompt)
        for t in range(len(answer) - 1):
            context.append(int(answer[t]))
            truth = answer[t + 1: t + 1 + num_tokens]
            branch = lookup_continuation(context, max_ngram, num_tokens)
            positions += 1
            seen[: len(truth)] += 1
            if not branch:
                continue
            proposed += 1
            branch_tokens += len(branch)
            run = 0
            while run < min(len(branch), len(truth)) and branch[run] == truth[run]:
                run += 1
            hits[:run] += 1
    if positions == 0:
        raise ValueError("lookup stats need answers of 2+ tokens")
    reach = (hits / seen.clamp(min=1)).tolist()
    return LookupStats(tuple(round(p, 6) for p in reach), round(proposed / positions, 6),
                       round(branch_tokens / max(proposed, 1), 4), positions, source)


def depth_mass(probs: torch.Tensor, depths: torch.Tensor, max_depth: int) -> list[float]:
    """a_k for k = 1..max_depth: the summed acceptance probability of a tree's depth-k nodes."""
    mass = torch.zeros(max_depth + 1, dtype=torch.float64).index_add_(0, depths.long(), probs.double())
    return mass[1:].tolist()


def tau_with_lookup(mass: Sequence[float], stats: LookupStats | None) -> float:
    """E[τ] = 1 + Σ_k (a_k + b_k - a_k b_k); without stats, the tree's own 1 + Σ a_k."""
    reach = stats.reach if stats is not None else ()
    return 1.0 + sum(a + b - a * b for a, b in zip_longest(mass, reach, fillvalue=0.0))
