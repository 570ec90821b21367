"""EagleV2's loss: vloss_w · SmoothL1(predicted, next feature) + ploss_w · loss against the base distribution."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from specforge_het.algorithms.common import TrainBatch
from specforge_het.algorithms.targets import head_loss


def feature_loss(draft, batch: TrainBatch, tcfg, options) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Draft position i reads (feature_i + noise, token_{i+1}) and predicts feature_{i+1} and the base's
    distribution at i+1; positions count where token i+1 is an assistant token. Returns (loss summed
    over positions, positions N, counters); the trainer divides by N (or num_items_in_batch).
    """
    feats = batch.features
    if options.feature_noise > 0:
        feats = feats + (torch.rand_like(feats) - 0.5) * options.feature_noise
    ids = batch.input_ids[:, 1:]
    s = ids.shape[1]
    pos = torch.arange(s, device=ids.device)[None].expand(ids.shape[0], s)
    hidden = draft(ids, draft.input_from_base(ids, feats[:, :-1]), pos)
    mask, tg = batch.target_mask, batch.targets
    pred = draft.predicted_feature(hidden[mask])
    target_feat = batch.last_features[:, 1:][mask]
    vloss = F.smooth_l1_loss(pred.float(), target_feat.float(), reduction="none").mean(-1).sum()
    rows = tg.index[mask]
    if draft.lm_head is None:  # the base head reads the predicted feature (frozen weight)
        x, weight, cap = pred, batch.base_weight, batch.softcap
    else:
        x, weight, cap = hidden[mask], draft.lm_head.weight, None
    want = tg.top1[rows]
    inv = want >= 0
    ploss, per_row, hit1, hitk = head_loss(x, weight, tg.probs, rows, inv.float(), want, getattr(tcfg, "loss", "ce"),
                                           cap, getattr(tcfg, "loss_chunk", 1024), tcfg.top_k_accuracy)
    loss = options.vloss_w * vloss + options.ploss_w * ploss
    n = float(mask.sum())
    counters = {"tokens": n, "n_0": n, "hit1_0": float(hit1.sum()), "hitk_0": float(hitk.sum()),
                "nin_0": float(inv.sum()), "ce_0": float(per_row[inv].sum()),
                "sum_vloss": float(vloss.detach()), "sum_ploss": float(ploss.detach())}
    return loss, mask.sum(), counters
