"""The decoder's port: what every proposer (a trained draft, prompt lookup, a standalone draft LM,
a test oracle) implements, and the `Proposal` it hands to verification.

The decoder calls, for one generation:

    proposer.start(prompt_ids, root, features)      after the base prefill
    loop:
        proposal = proposer.propose()               a tree below the root (the last committed token)
        ... the base verifies the tree, acceptance picks a path and a bonus token ...
        proposer.update(next_tokens, features)      the committed tokens [accepted..., bonus]

Alignment (as in EAGLE): `features` are the base's outputs at the positions *before* each of
`next_tokens` (the root's position first), taken from `feature_layers`; a proposer without base
features (`feature_layers == ()`) receives None.

Sampling. Without `draft_probs` the tree's tokens are deterministic candidates and acceptance
uses the rule that is exact for any candidate list fixed before verification. With
`draft_probs`, row i is the draft distribution q over *base ids* from which node i's children
were drawn, without replacement and in the order they appear in `tokens`; acceptance then uses
SpecInfer's multi-round rejection with q (accept.py, `tree_rejection_sample`), which accepts more
often and is exact only under that contract. Rows of leaves are ignored. Greedy decoding ignores
`draft_probs`. The decoder checks the shape [N, V_base] (V_base = the base's LM head rows).

Optional hooks (inference/fast_paths.py calls them where a proposer has them; none is needed):

    proposer.fast_path_modules() -> tuple[nn.Module, ...]
        the modules the proposer runs; the decoder's fast paths (packed CPU linears) are applied
        to them for the duration of one generation, as to the base (`proposer_modules`).
    proposer.use_fast_paths(fast: FastPaths) -> None
        the decoder's strategy, handed over before each generation (`tell_proposer`); with
        `fast.on_device` a proposer should build its trees without host reads.

A wrapping proposer (inference/lookup.py) forwards both to the proposer it wraps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Proposal:
    tokens: torch.Tensor  # [N] base ids; tokens[0] is the root (the last committed token)
    parents: torch.Tensor  # [N] parent node index; parents[0] = -1, parents[i] < i
    draft_probs: torch.Tensor | None = None  # [N, V_base] q per node (see the module text), or None

    def __iter__(self):  # `tokens, parents = proposal` keeps working where q is not needed
        return iter((self.tokens, self.parents))

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])


@runtime_checkable
class Proposer(Protocol):
    feature_layers: tuple[int, ...]  # base layers whose outputs `start`/`update` receive; () = none

    def depth(self) -> int:
        """Deepest node below the root any proposal can have (the decoder reserves that many positions)."""
        ...

    def start(self, prompt_ids: torch.Tensor, root: int, features: torch.Tensor | None) -> None:
        """A new generation: prompt_ids [n] base ids, root the first generated token, features [n, F*H] or None."""
        ...

    def propose(self) -> Proposal:
        """A draft tree below the current root."""
        ...

    def update(self, next_tokens: torch.Tensor, features: torch.Tensor | None) -> None:
        """Commit next_tokens [m] (accepted tokens, then the bonus token); features [m, F*H] or None."""
        ...
