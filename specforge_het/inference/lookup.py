"""Prompt lookup merged into the draft tree: a draft-free branch copied from the context.

After the latest earlier occurrence of the context's last n tokens (n = max_ngram down to 1),
the tokens that followed it are proposed as one more root path of the tree (``merge_chain``).
Repetitive text (code, quoting the prompt, a base model looping) is accepted in long runs
there, where a small draft is unsure. The branch is a set of deterministic candidates, so
greedy output and the sampled distribution are unchanged (accept.py handles both; see
`LookupProposer` for an inner proposal's draft probabilities).
Without an inner proposer this is plain prompt-lookup decoding in our decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specforge_het.config import ConfigError
from specforge_het.inference.fast_paths import proposer_modules, tell_proposer
from specforge_het.inference.protocol import Proposal
from specforge_het.inference.tree import merge_chain


def check_lookup_config(inf) -> None:
    """Refuse bad `inference.lookup_*` values before any model is loaded."""
    if inf.lookup_tokens < 0:
        raise ConfigError(f"inference.lookup_tokens must be >= 0 (0 = off), got {inf.lookup_tokens}.")
    if inf.lookup_ngram < 1:
        raise ConfigError(f"inference.lookup_ngram must be >= 1 (the longest n-gram matched), got {inf.lookup_ngram}.")


def lookup_continuation(context: Sequence[int], max_ngram: int, num_tokens: int) -> list[int]:
    """Up to ``num_tokens`` tokens that followed the latest earlier match of the context's
    last n tokens, trying n = max_ngram down to 1; [] when nothing matches. (Pure.)"""
    if max_ngram < 1 or num_tokens < 1:
        return []
    ctx = context if isinstance(context, list) else list(context)  # the proposer's list: no copy per step
    size = len(ctx)
    for n in range(min(max_ngram, size - 1), 0, -1):
        pattern = ctx[size - n:]
        first = pattern[0]
        for start in range(size - n - 1, -1, -1):  # latest match first; the suffix itself excluded
            if ctx[start] == first and ctx[start:start + n] == pattern:
                return ctx[start + n: start + n + num_tokens]
    return []


class LookupProposer:
    """Wraps a proposer (or none) and adds the prompt-lookup branch to every tree it proposes.

    Draft probabilities: an inner proposal's `draft_probs` promise that every node's children were
    drawn from its row q (inference/protocol.py). Lookup children are not, so when the branch adds
    nodes the merged proposal carries no `draft_probs` (acceptance then takes the deterministic-
    candidate rule, exact for any candidate list); when the branch only follows drafted nodes (or
    found nothing) the inner proposal is returned unchanged, q included.
    """

    def __init__(self, inner, num_tokens: int, max_ngram: int = 3, device: torch.device | str = "cpu"):
        if num_tokens < 1 or max_ngram < 1:
            raise ValueError(f"prompt lookup needs num_tokens >= 1 and max_ngram >= 1, got {num_tokens}, {max_ngram}")
        self.inner, self.num_tokens, self.max_ngram, self.device = inner, num_tokens, max_ngram, device
        self.feature_layers = () if inner is None else inner.feature_layers
        self.tree = getattr(inner, "tree", None)
        self.context: list[int] = []
        self.branch_nodes = 0  # lookup tokens added to trees so far, over all generations (not already drafted)

    def fast_path_modules(self) -> tuple:
        """The inner proposer's modules (the lookup branch itself runs none)."""
        return proposer_modules(self.inner)

    def use_fast_paths(self, fast) -> None:
        """Hand the decoder's strategy on to the inner proposer."""
        tell_proposer(self.inner, fast)

    def depth(self) -> int:
        return max(self.num_tokens, 0 if self.inner is None else self.inner.depth())

    def start(self, prompt_ids: torch.Tensor, root: int, features: torch.Tensor | None) -> None:
        self.context = prompt_ids.tolist() + [int(root)]
        if self.inner is not None:
            self.inner.start(prompt_ids, root, features)

    def update(self, next_tokens: torch.Tensor, features: torch.Tensor | None) -> None:
        self.context.extend(next_tokens.tolist())
        if self.inner is not None:
            self.inner.update(next_tokens, features)

    def propose(self) -> Proposal:
        if self.inner is None:
            inner = Proposal(torch.tensor([self.context[-1]], device=self.device), torch.tensor([-1], device=self.device))
        else:
            inner = self.inner.propose()
        chain = lookup_continuation(self.context, self.max_ngram, self.num_tokens)
        tokens, parents = merge_chain(inner.tokens, inner.parents, chain)
        added = tokens.shape[0] - inner.size
        if not added:
            return inner
        self.branch_nodes += added
        return Proposal(tokens, parents)  # lookup children were not drawn from q: no draft_probs
