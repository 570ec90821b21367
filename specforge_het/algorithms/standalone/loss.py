"""The standalone draft's distillation loss: KL(base ‖ draft) on the base's next-token distribution at the
positions where the two can be compared (align.py), over the vocabulary they share (vocab.py).

At a compared position the base's distribution is restricted to the shared base ids and renormalised, and the
draft's to the shared draft ids (the same tokens, in the same order) and renormalised: the two distributions
the proposer's choice depends on, since it proposes shared tokens only. With one tokenizer that is the whole
vocabulary at every answer position. `--standalone.ce_weight` adds a plain cross-entropy on the base's answer
as the draft spells it (every draft position inside the answer text, over the draft's whole vocabulary).

The draft side runs the fused, chunked head loss of algorithms/targets.py (no [N, V] logits stored); its soft
cross-entropy minus the base's entropy is the KL (same gradients). `--training.loss tv` / `ce+tv` / `ce+top1` work too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from specforge_het.algorithms.targets import Targets, head_loss


@dataclass
class DistillBatch:
    """What the loss needs, built from a padded batch of base rows by DistillModule.make_batch (distill.py)."""

    draft_ids: torch.Tensor  # [B, U] each row as the draft spells it, right-padded
    draft_mask: torch.Tensor  # [B, U] 1 = token
    compared: torch.Tensor  # [M, 2] (row, draft position) of each compared position, in the order of `targets`
    targets: Targets  # the base's distribution over the shared vocabulary there: probs [M, S], top1 [M] (-1 = not shared)
    shared: torch.Tensor  # [S] the draft ids of the shared vocabulary (the columns of targets.probs)
    answer: torch.Tensor  # [K, 2] (row, draft position) whose next draft token is an answer token
    answer_labels: torch.Tensor  # [K] that next draft token
    answer_tokens: torch.Tensor  # () answer positions in base tokens: what the trainer divides the loss by


def draft_hidden(draft, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The draft LM's final normed hidden states [B, U, H] (its body, without the LM head)."""
    return draft.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state


def softcap_of(draft) -> float | None:
    return getattr(draft.config, "final_logit_softcapping", None)


def shared_kl(x: torch.Tensor, weight: torch.Tensor, targets: Targets, kind: str, softcap: float | None,
              chunk: int, k: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Σ over rows of KL(p ‖ q) (kind "ce"; "tv" / "ce+tv" add total variation): p = targets.probs, q = softmax of
    x [M, H] @ weight [S, H].T (the draft's head rows of the shared vocabulary). Returns (loss, counters)."""
    m = x.shape[0]
    rows = torch.arange(m, device=x.device)
    loss, per_row, hit1, hitk = head_loss(x, weight, targets.probs, rows, torch.ones(m, device=x.device),
                                          targets.top1, kind, softcap, chunk, k)
    if "ce" in kind:  # soft cross-entropy - H(p) = KL(p ‖ q)
        entropy = -torch.special.xlogy(targets.probs.float(), targets.probs.float()).sum(-1)
        loss, per_row = loss - entropy.sum(), per_row - entropy
    counters = {"n_0": float(m), "nin_0": float(m), "hit1_0": float(hit1.sum()), "hitk_0": float(hitk.sum()),
                "ce_0": float(per_row.sum()), "sum_kl": float(loss.detach()), "sum_compared": float(m)}
    return loss, counters


def answer_ce(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Σ -log q(label) over rows: x [K, H] against the draft's whole head weight [Vd, H]."""
    logits = F.linear(x, weight).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, labels, reduction="sum")


def distill_loss(draft, batch: DistillBatch, tcfg, options) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(loss summed over positions, answer positions N, counters) of one batch; `draft` the HF causal LM trained.

    Counters as finalize_metrics reads them: step 0 is the compared positions (top-1 agreement with the base,
    `ce_0` their mean KL); `kl`, `answer_ce` and `compared` (the share of answer positions compared) per answer
    position."""
    hidden = draft_hidden(draft, batch.draft_ids, batch.draft_mask)
    head = draft.get_output_embeddings().weight
    cap = softcap_of(draft)
    x = hidden[batch.compared[:, 0], batch.compared[:, 1]]
    loss, counters = shared_kl(x, head.index_select(0, batch.shared), batch.targets, getattr(tcfg, "loss", "ce"),
                               cap, getattr(tcfg, "loss_chunk", 1024), getattr(tcfg, "top_k_accuracy", 4))
    if options.ce_weight > 0 and batch.answer.shape[0]:
        ce = answer_ce(hidden[batch.answer[:, 0], batch.answer[:, 1]], head, batch.answer_labels, cap)
        loss = loss + options.ce_weight * ce
        counters["sum_answer_ce"] = float(ce.detach())
    counters["tokens"] = float(batch.answer_tokens)
    return loss, batch.answer_tokens, counters
