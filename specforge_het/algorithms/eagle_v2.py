"""EagleV2 (EAGLE-1/2 style): regress the next base feature from (feature_i, embedding of token i+1).

Input at position i: fc(cat(embed(token_{i+1}), feature_i)), feature = the base's final normed
hidden state. The draft layers predict feature_{i+1}; with a different draft width the
`to_base` width adapter maps the prediction back to base width. Drafting feeds the predicted
feature back in. Token logits come from the base LM head (vocab = base) or from the draft's
own head over a reduced/foreign vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from specforge_het.algorithms import register
from specforge_het.algorithms.base import DraftAlgorithm
from specforge_het.algorithms.common import TrainBatch
from specforge_het.algorithms.targets import head_loss
from specforge_het.models.base import LAST


@register("eagle_v2")
class EagleV2(DraftAlgorithm):
    fc_bias = True

    def default_feature_layers(self, num_base_layers: int) -> list[int]:
        return [LAST]

    def fc_in_features(self, draft) -> int:
        return draft.embed_width + draft.cfg.base["hidden_size"]

    def input_from_base(self, draft, input_ids, features):
        return draft.fc(torch.cat([draft.embed(input_ids), features], dim=-1))

    def input_from_self(self, draft, input_ids, hidden_out):
        return draft.fc(torch.cat([draft.embed(input_ids), draft.predicted_feature(hidden_out)], dim=-1))

    def logits(self, draft, hidden_out):
        if draft.lm_head is None:
            return draft.base_head(draft.predicted_feature(hidden_out))
        return draft.lm_head(hidden_out)

    def loss(self, draft, batch: TrainBatch, tcfg) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """vloss_w · SmoothL1(predicted, next feature) + ploss_w · loss against the base distribution.

        Draft position i reads (feature_i + noise, token_{i+1}) and predicts feature_{i+1} and the base's
        distribution at i+1; positions count where token i+1 is an assistant token. Returns (loss summed
        over positions, positions N, counters); the trainer divides by N (or num_items_in_batch).
        """
        feats = batch.features
        if tcfg.feature_noise > 0:
            feats = feats + (torch.rand_like(feats) - 0.5) * tcfg.feature_noise
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
        loss = tcfg.vloss_w * vloss + tcfg.ploss_w * ploss
        n = float(mask.sum())
        counters = {"tokens": n, "n_0": n, "hit1_0": float(hit1.sum()), "hitk_0": float(hitk.sum()),
                    "nin_0": float(inv.sum()), "ce_0": float(per_row[inv].sum()),
                    "sum_vloss": float(vloss.detach()), "sum_ploss": float(ploss.detach())}
        return loss, mask.sum(), counters
