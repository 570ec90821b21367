"""EagleV3's loss: the training-time test (TTT), k draft steps unrolled on the draft's own hidden states."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from specforge_het.algorithms.common import TrainBatch, shift_left, ttt_mask
from specforge_het.algorithms.targets import compute_dtype, head_loss
from specforge_het.algorithms.ttt_attention import ttt_layer
from specforge_het.models.cache import HFCache


def ttt_loss(draft, batch: TrainBatch, tcfg, options) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Σ_j decay^j · loss_j over options.ttt_steps unroll steps.

    Step j at position i reads token_{i+1+j} and the draft's step-(j-1) output at i, attends to the
    real prefix (step 0, causal) and its own earlier steps at i, and predicts the base's
    distribution at i+1+j (over the draft vocabulary). No feature loss.

    `options.reachable_k` k > 0: step j at position i carries loss only where steps 0..j-1 there had the
    base's token in their top-k (`reachable`); accuracy still counts every position.

    Returns (loss summed over positions, positions N, counters). Divided by N (or by HF's
    num_items_in_batch under gradient accumulation), every step is normalised by all positions
    of the sequence, as in EAGLE-3 / SpecForge; positions whose base top-1 the draft cannot
    propose carry no loss but count as misses in the accuracy.
    """
    ids = batch.input_ids[:, 1:]
    mask, tg = batch.target_mask, batch.targets
    xs, tidx, roww, want = [], [], [], []
    for j, hidden in enumerate(_unroll(draft, ids, batch, tcfg, options.ttt_steps)):
        m_j = shift_left(mask, j, False)
        rows = shift_left(tg.index, j, -1)[m_j]
        xs.append(draft.norm(hidden[m_j]))
        tidx.append(rows)
        want.append(tg.top1[rows])
        roww.append((tg.top1[rows] >= 0).float() * options.ttt_decay ** j)
    k = getattr(options, "reachable_k", 0)
    if k > 0:
        masks = [shift_left(mask, j, False) for j in range(len(xs))]
        roww = [w * r for w, r in zip(roww, reachable(xs, want, draft.lm_head.weight, masks, k))]
    loss, per_row, hit1, hitk = head_loss(
        torch.cat(xs), draft.lm_head.weight, tg.probs, torch.cat(tidx), torch.cat(roww), torch.cat(want),
        getattr(tcfg, "loss", "ce"), None, getattr(tcfg, "loss_chunk", 1024), tcfg.top_k_accuracy)
    counters: dict[str, float] = {"tokens": float(mask.sum())}
    a = 0
    for j, x in enumerate(xs):
        e = a + x.shape[0]
        inv = torch.cat(want)[a:e] >= 0
        counters.update({f"n_{j}": float(e - a), f"hit1_{j}": float(hit1[a:e].sum()),
                         f"hitk_{j}": float(hitk[a:e].sum()), f"nin_{j}": float(inv.sum()),
                         f"ce_{j}": float(per_row[a:e][inv].sum())})
        a = e
    return loss, mask.sum(), counters


@torch.no_grad()
def reachable(xs: list[torch.Tensor], want: list[torch.Tensor], weight: torch.Tensor, masks: list[torch.Tensor],
              k: int, chunk: int = 1024) -> list[torch.Tensor]:
    """Per unroll step j, [n_j] bool over its rows (positions `masks[j]` [B, S]): True where every earlier step
    at that position had the base's token `want` among the draft's top-k (x @ weight.T). A position an
    earlier step has no row at (its target is not a loss position) does not cut it."""
    out, reach = [], torch.ones_like(masks[0])
    head = weight.detach().to(compute_dtype(xs[0]))
    for j, (x, w, m) in enumerate(zip(xs, want, masks)):
        out.append(reach[m])
        if j + 1 < len(xs) and x.shape[0] > 0:
            with torch.autocast(x.device.type, enabled=False):  # the products head_loss ranks, in its dtype
                hit = torch.cat([((x[a:a + chunk].detach().to(head.dtype) @ head.T).topk(min(k, head.shape[0]), -1)
                                  .indices == w[a:a + chunk, None]).any(-1) for a in range(0, x.shape[0], chunk)])
            step = torch.ones_like(reach)
            step[m] = hit
            reach = reach & step
    return out


def _unroll(draft, ids: torch.Tensor, batch: TrainBatch, tcfg, steps: int):
    """The draft's output hidden state [B, S, Hd] of each unroll step 0..steps-1."""
    b, s = ids.shape
    key_valid = batch.attention_mask[:, 1:]
    hidden = draft.input_from_base(ids, batch.features[:, :-1])
    lean = draft.lean()
    kv: list[list] = [[] for _ in draft.layers]
    cache = None if lean else HFCache()
    ckpt = bool(getattr(tcfg, "gradient_checkpointing", False)) and torch.is_grad_enabled()
    for j in range(steps):
        tok = shift_left(ids, j, fill=0)
        pos = (torch.arange(s, device=ids.device) + j)[None].expand(b, s)
        if lean:
            hidden = lean_step(draft, tok, hidden, pos, kv, ckpt)
        else:
            hidden = draft(tok, hidden, pos, ttt_mask(s, j, key_valid, hidden.dtype), cache)
        yield hidden


def lean_step(draft, tok, hidden, pos, kv, ckpt: bool) -> torch.Tensor:
    """One unroll step through every draft layer with the split TTT attention (ttt_attention.py)."""
    cos, sin = draft.family.rotary_call(draft.rotary, hidden, pos)
    emb = draft.embed(tok)
    for i, layer in enumerate(draft.layers):
        past = tuple(kv[i])
        if ckpt:
            hidden, new = checkpoint(ttt_layer, layer, hidden, emb, cos, sin, past, use_reentrant=False)
        else:
            hidden, new = ttt_layer(layer, hidden, emb, cos, sin, past)
        kv[i].append(new)
    return hidden
