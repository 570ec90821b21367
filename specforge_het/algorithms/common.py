"""Pure helpers shared by the algorithms' losses: the training batch, count-weighted metrics,
simulated accept length, and the plain (reference) forms of targets, soft cross-entropy and the
EAGLE-3 training-time-test mask (the trainer uses the lean forms in targets.py / ttt_attention.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from specforge_het.algorithms.targets import Targets


@dataclass
class TrainBatch:
    """What a loss needs; built by the trainer (online: from the base; offline: from stored features).

    Positions are in the shifted frame of the draft (draft position i reads token i+1): `targets`
    holds the base distribution for positions 1..T-1 of the sequence where `target_mask` is set.
    """

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T] 1 = token, 0 = right padding
    loss_mask: torch.Tensor  # [B, T] 1 = assistant token the base produced
    features: torch.Tensor  # [B, T, F*Hb] at the draft's feature layers
    targets: Targets  # base distribution over the draft vocabulary, index [B, T-1]
    last_features: torch.Tensor | None = None  # [B, T, Hb] final normed base state (EagleV2 regression target)
    base_weight: torch.Tensor | None = None  # base LM head [Vb, Hb] (a draft without its own head reads it)
    softcap: float | None = None  # the base head's final logit softcapping

    @property
    def target_mask(self) -> torch.Tensor:
        """[B, T-1] positions with a loss: assistant token and not padding (shifted frame)."""
        return target_mask(self.attention_mask, self.loss_mask)


def target_mask(attention_mask: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    return (loss_mask[:, 1:] * attention_mask[:, 1:]).bool()


def finalize_metrics(sums: dict[str, float]) -> dict[str, float]:
    """Count-weighted metrics from summed counters (over micro-batches, accumulation and log steps).

    Counters: n_j (positions of unroll step j, base top-1 outside the draft vocabulary included),
    hit1_j / hitk_j (draft top-1 / top-k equals the base top-1), nin_j and ce_j (loss rows and their
    summed per-row loss), tokens, and `sum_*` (per-token means of other loss terms).
    Accuracy counts out-of-vocabulary positions as misses, as EAGLE-3 / SpecForge do.
    """
    out: dict[str, float] = {}
    accs = []
    j = 0
    while f"n_{j}" in sums:
        n = sums[f"n_{j}"]
        top1 = sums[f"hit1_{j}"] / n if n else 0.0
        out[f"top1_acc_{j}"] = top1
        out[f"topk_acc_{j}"] = sums[f"hitk_{j}"] / n if n else 0.0
        out[f"ce_{j}"] = sums[f"ce_{j}"] / sums[f"nin_{j}"] if sums.get(f"nin_{j}") else 0.0
        accs.append(top1)
        j += 1
    tokens = sums.get("tokens", 0.0)
    for k, v in sums.items():
        if k.startswith("sum_"):
            out[k[4:]] = v / tokens if tokens else 0.0
    out["sim_accept_length"] = simulated_accept_length(accs)
    out["tokens"] = tokens
    return out


def shift_left(x: torch.Tensor, n: int, fill=0) -> torch.Tensor:
    """x[:, n:] padded on the right with `fill` to keep the length. [B, S, ...] -> [B, S, ...]"""
    if n == 0:
        return x
    pad = torch.full_like(x[:, :n], fill)
    return torch.cat([x[:, n:], pad], dim=1)


def draft_targets(draft, target_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Base distribution restricted to the draft vocabulary.

    Returns (probs [.., Vd], valid [..] bool: the base's top-1 is proposable, base top-1 as draft row [..]).
    With a reduced/foreign vocabulary the base logits are gathered at d2t and renormalised (EAGLE-3).
    """
    top1 = target_logits.argmax(-1)
    if draft.vocab is None:
        return torch.softmax(target_logits.float(), -1), torch.ones_like(top1, dtype=torch.bool), top1
    rows = draft.vocab.base_to_draft_rows()[top1]  # -1 where not proposable
    probs = torch.softmax(target_logits[..., draft.vocab.d2t].float(), -1)
    return probs, rows >= 0, rows.clamp(min=0)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of -Σ p log q. logits/target [.., V], mask [..]."""
    per = -(target_probs * torch.log_softmax(logits.float(), -1)).sum(-1)
    m = mask.float()
    return (per * m).sum() / m.sum().clamp(min=1.0)


def masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    per = F.smooth_l1_loss(pred.float(), target.float(), reduction="none").mean(-1)
    m = mask.float()
    return (per * m).sum() / m.sum().clamp(min=1.0)


def accuracy(logits: torch.Tensor, target_rows: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[float, float, int]:
    """(top-1, top-k accuracy, count) of draft logits against the base's top-1 (as draft rows)."""
    m = mask.bool()
    n = int(m.sum())
    if n == 0:
        return 0.0, 0.0, 0
    lg, tgt = logits[m], target_rows[m]
    top1 = (lg.argmax(-1) == tgt).float().mean().item()
    topk = (lg.topk(min(k, lg.shape[-1]), -1).indices == tgt[:, None]).any(-1).float().mean().item()
    return top1, topk, n


def simulated_accept_length(top1_by_step: list[float]) -> float:
    """1 + Σ_j Π_{m<=j} acc_m: the expected τ of a chain if step accuracies were independent."""
    total, run = 1.0, 1.0
    for acc in top1_by_step:
        run *= acc
        total += run
    return total


def ttt_mask(s: int, step: int, key_valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """EAGLE-3 training-time-test mask for unroll step `step` over sequences of length s.

    Queries are the s positions of this step; keys are step 0 (the real prefix: causal, padding
    masked) followed by steps 1..step (only the same position: the query's own earlier draft
    outputs). key_valid [B, s] -> additive mask [B, 1, s, (step+1)*s].
    """
    b = key_valid.shape[0]
    causal = torch.ones(s, s, dtype=torch.bool, device=key_valid.device).tril()
    first = causal[None] & key_valid[:, None, :].bool()  # [B, s, s]
    eye = torch.eye(s, dtype=torch.bool, device=key_valid.device)[None].expand(b, s, s)
    allowed = torch.cat([first] + [eye] * step, dim=-1)
    return torch.zeros(allowed.shape, dtype=dtype, device=key_valid.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min)[:, None]
