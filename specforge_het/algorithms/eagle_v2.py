"""EagleV2 (EAGLE-1/2 style): regress the next base feature from (feature_i, embedding of token i+1).

Input at position i: fc(cat(embed(token_{i+1}), feature_i)), feature = the base's final normed
hidden state. The draft layers predict feature_{i+1}; with a different draft width the
`to_base` width adapter maps the prediction back to base width. Drafting feeds the predicted
feature back in. Token logits come from the base LM head (vocab = base) or from the draft's
own head over a reduced/foreign vocabulary.
"""

from __future__ import annotations

import torch

from specforge_het.algorithms import register
from specforge_het.algorithms.base import DraftAlgorithm
from specforge_het.algorithms.common import (
    TrainBatch,
    accuracy,
    draft_targets,
    masked_smooth_l1,
    simulated_accept_length,
    soft_cross_entropy,
)
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

    def loss(self, draft, batch: TrainBatch, tcfg) -> tuple[torch.Tensor, dict[str, float]]:
        """vloss_w · SmoothL1(predicted, next feature) + ploss_w · soft CE against the base distribution.

        Draft position i reads (feature_i + noise, token_{i+1}) and predicts feature_{i+1} and the base's
        distribution at i+1; positions count where token i+1 is an assistant token.
        """
        feats = batch.features
        if tcfg.feature_noise > 0:
            feats = feats + (torch.rand_like(feats) - 0.5) * tcfg.feature_noise
        ids = batch.input_ids[:, 1:]
        s = ids.shape[1]
        pos = torch.arange(s, device=ids.device)[None].expand(ids.shape[0], s)
        hidden = draft(ids, draft.input_from_base(ids, feats[:, :-1]), pos)
        mask = (batch.loss_mask[:, 1:] * batch.attention_mask[:, 1:]).bool()
        target_feat = batch.last_features[:, 1:]
        vloss = masked_smooth_l1(draft.predicted_feature(hidden), target_feat, mask)
        probs, valid, rows = draft_targets(draft, batch.target_logits[:, 1:])
        logits = draft.logits(hidden)
        ploss = soft_cross_entropy(logits, probs, mask & valid)
        loss = tcfg.vloss_w * vloss + tcfg.ploss_w * ploss
        top1, topk, n = accuracy(logits, rows, mask & valid, tcfg.top_k_accuracy)
        metrics = {"vloss": vloss.item(), "ploss": ploss.item(), "top1_acc_0": top1, "topk_acc_0": topk,
                   "sim_accept_length": simulated_accept_length([top1 * (n > 0)]), "tokens": float(n)}
        return loss, metrics
