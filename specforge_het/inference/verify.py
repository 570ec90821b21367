"""Host verification: the base's outputs at the draft-tree nodes and the acceptance rule over them, as
named strategies. The decoder's caller picks one through `--inference.fast_paths` (`FastPaths.verifier`).

* `AllRows` (`off`, and sampling on an accelerator): the LM head over all N tree rows in one call;
  the tensor rules of accept.py read the argmax [N] or the sampling probabilities [N, V].
* `PerRowHead` (`auto` on a CPU): the LM head only on the rows the acceptance walk reads (the
  accepted path, ~tau rows instead of N), computed on demand by `TreeRows` while `greedy_walk` /
  `rejection_walk` (here: accept.py's `GreedyWalk` / `RejectionWalk` fed per node) walk the tree.
  On a CPU a head call costs about its rows, and the host walks the tree anyway; on an accelerator
  the extra host reads would cost more than the rows.

Both give the same path and bonus: greedy, the same argmaxes; sampling, the same probabilities per
row and the same random draws, so one generator state gives the same tokens (tests/test_verify.py).
Greedy acceptance on the device (no host reads) is the device strategy's, in the decoder.

`head(hidden [R, H]) -> logits [R, V]` is the base's LM head, `probs(logits) -> [R, V]` the decoder's
sampling transform (temperature, top-k, top-p).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from specforge_het.inference.accept import GreedyWalk, RejectionWalk, greedy_accept, tree_rejection_sample

Rows = Callable[[torch.Tensor], torch.Tensor]  # [R, ...] -> [R, V]
Accepted = tuple[torch.Tensor, int]  # (path [tau], bonus)


class Verifier(Protocol):
    name: str

    def greedy(self, head: Rows, tokens: torch.Tensor, parents: torch.Tensor, hidden: torch.Tensor) -> Accepted:
        """Greedy acceptance from the verify hidden states [N, H] of the tree `tokens`, `parents` [N]."""
        ...

    def sample(self, head: Rows, probs: Rows, tokens: torch.Tensor, parents: torch.Tensor, hidden: torch.Tensor,
               generator: torch.Generator, draft_probs: torch.Tensor | None = None) -> Accepted:
        """Lossless tree rejection sampling (`tree_rejection_sample`; `draft_probs` q [N, V] or None)."""
        ...


class AllRows:
    """The LM head over every tree row at once; the acceptance rules read tensors."""

    name = "all_rows"

    def greedy(self, head: Rows, tokens: torch.Tensor, parents: torch.Tensor, hidden: torch.Tensor) -> Accepted:
        return greedy_accept(tokens, parents, head(hidden).argmax(-1))

    def sample(self, head: Rows, probs: Rows, tokens: torch.Tensor, parents: torch.Tensor, hidden: torch.Tensor,
               generator: torch.Generator, draft_probs: torch.Tensor | None = None) -> Accepted:
        return tree_rejection_sample(tokens, parents, probs(head(hidden)), generator, draft_probs=draft_probs)


class PerRowHead:
    """The LM head on the rows the acceptance walk reads, a node with its first-child chain per call.

    Keeps a running share of steps whose root's child was accepted: above one half, the root's row is
    computed together with its whole best chain (likely all read), else alone (likely the only one)."""

    name = "per_row_head"

    def __init__(self) -> None:
        self.root_accept_rate = 0.0

    def greedy(self, head: Rows, tokens: torch.Tensor, parents: torch.Tensor, hidden: torch.Tensor) -> Accepted:
        rows = self._rows(lambda r: head(hidden[r]).argmax(-1).tolist(), parents)
        return self._seen(greedy_walk(tokens, parents, rows))

    def sample(self, head: Rows, probs: Rows, tokens: torch.Tensor, parents: torch.Tensor, hidden: torch.Tensor,
               generator: torch.Generator, draft_probs: torch.Tensor | None = None) -> Accepted:
        rows = self._rows(lambda r: probs(head(hidden[r])), parents)
        return self._seen(rejection_walk(tokens, parents, rows, generator, draft_probs=draft_probs))

    def _rows(self, fn, parents: torch.Tensor) -> TreeRows:
        return TreeRows(fn, parents.tolist(), prefetch_root=self.root_accept_rate >= 0.5)

    def _seen(self, accepted: Accepted) -> Accepted:
        self.root_accept_rate += 0.25 * (float(len(accepted[0]) > 1) - self.root_accept_rate)
        return accepted


class TreeRows:
    """Base outputs at draft-tree nodes, computed on first use, so the LM head runs only on rows the
    acceptance rule reads (the accepted path, ~tau rows) instead of all N tree nodes.

    A request for node i computes i together with its first-child chain (the draft's best
    continuation, likely needed next) in one head call; for the root, the chain only when
    `prefetch_root`. `fn(rows: list[int])` -> one output per row, in order. -> output of `fn` per node.
    """

    def __init__(self, fn, parents: list[int], prefetch_root: bool):
        self.fn, self.prefetch_root = fn, prefetch_root
        self.first_child = [-1] * len(parents)
        for i in range(len(parents) - 1, 0, -1):
            self.first_child[parents[i]] = i
        self.done: dict[int, object] = {}

    def __call__(self, node: int):
        if node not in self.done:
            rows, c = [node], self.first_child[node]
            while c >= 0 and c not in self.done and (node != 0 or self.prefetch_root):
                rows.append(c)
                c = self.first_child[c]
            for r, value in zip(rows, self.fn(rows)):
                self.done[r] = value
        return self.done[node]


# ---------------------------------------------------------------- the walks, fed per node


def greedy_walk(tokens: torch.Tensor, parents: torch.Tensor, top: Callable[[int], int]) -> Accepted:
    """`greedy_accept` with the base's argmax read per node, ``top(node)``: called once for each node on an
    accepted path (the root first) and for no other, so the LM head runs on those rows only."""
    walk = GreedyWalk(tokens, parents)
    while walk.node is not None:
        walk.feed(top(walk.node))
    return walk.result()


def rejection_walk(tokens: torch.Tensor, parents: torch.Tensor, row: Callable[[int], Any], generator: torch.Generator,
                   draft_probs: torch.Tensor | None = None) -> Accepted:
    """`tree_rejection_sample` with the base's probabilities read per node, ``row(node) -> [V]``: called
    once for each node on the sampled path, in order, and for no other. Same random draws, so the same
    tokens for one generator state."""
    walk = RejectionWalk(tokens, parents, generator, draft_probs)
    while walk.node is not None:
        walk.feed(row(walk.node))
    return walk.result()
