"""Children drawn without replacement from the draft's q, and tree scores that keep SpecInfer's rule exact.

SpecInfer's rule (inference/accept.py) is exact when the children of a node were drawn from its q one
after the other without replacement, in the order listed. A dynamic tree also decides which children
to keep; that decision must not look at *which* token was drawn into a slot, or the kept children would
no longer be distributed as the draws were. So a drawn child's tree score is the log of the j-th
largest probability of its parent's q (j = its rank in the draw), never q of the token itself:

* scores fall with the rank, so the EAGLE-2 expand-then-prune loop (inference/dynamic_tree.py), which
  keeps the best scores, keeps a prefix of every node's draws, and lists them in draw order;
* a slot's score, and so whether it is kept, depends on its parent and the earlier draws only; what is
  drawn into it, and the subtree below it (ranked after it), cannot change that.
"""

from __future__ import annotations

import torch

RANK_STEP = 1e-9  # subtracted per rank, so equal probabilities still rank in draw order


def draw_order(q: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """min(k, |support of q|) indices drawn from q [S] without replacement, in the order drawn.

    Exponential races (Gumbel-top-k): with E_i ~ Exp(1), the indices by ascending E_i / q_i are
    successive draws without replacement; tokens with q = 0 are never drawn."""
    e = torch.empty(q.shape, dtype=torch.float64, device=generator.device).exponential_(generator=generator)
    keys = e.to(q.device) / q.double()  # inf where q == 0
    k = min(k, int((q > 0).sum()))
    return torch.topk(keys, k, largest=False, sorted=True).indices


def rank_scores(q: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Tree scores [S] (float64) of the tokens `order` [m] drawn from q [S]: the j-th drawn scores
    log(j-th largest q) - j * RANK_STEP, every token not drawn -inf."""
    m = order.shape[0]
    top = torch.topk(q.double(), m).values.log() - RANK_STEP * torch.arange(m, dtype=torch.float64, device=q.device)
    scores = torch.full(q.shape, float("-inf"), dtype=torch.float64, device=q.device)
    scores[order] = top
    return scores
