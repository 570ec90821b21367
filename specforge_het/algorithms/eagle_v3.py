"""EagleV3 (EAGLE-3 style): fuse a low, a middle and a high base layer; unroll on the draft's own outputs.

Input at position i: fc(cat(feature_low_i, feature_mid_i, feature_high_i)) as the hidden
stream; layer 0 attends over cat(input_layernorm(embed(token_{i+1})), hidden_norm(hidden))
(2 x draft width), as in EAGLE-3. Later draft steps feed the draft's own output hidden state
(bypassing fc). Logits: final norm + the draft's own head over the draft vocabulary.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from specforge_het.algorithms import register
from specforge_het.algorithms.base import DraftAlgorithm
from specforge_het.algorithms.common import (
    TrainBatch,
    accuracy,
    draft_targets,
    shift_left,
    simulated_accept_length,
    soft_cross_entropy,
    ttt_mask,
)


@register("eagle_v3")
class EagleV3(DraftAlgorithm):
    fc_bias = False
    fused_first_layer = True

    def default_feature_layers(self, num_base_layers: int) -> list[int]:
        # HF hidden_states indices, as EAGLE-3 uses them: 2, L//2, L-3 (outputs of blocks 1, L/2-1, L-4).
        n = num_base_layers
        return sorted({min(2, n), max(n // 2, 1), max(n - 3, 1)})

    def fc_in_features(self, draft) -> int:
        return len(draft.cfg.feature_layers) * draft.cfg.base["hidden_size"]

    def input_from_base(self, draft, input_ids, features):
        return draft.fc(features)

    def input_from_self(self, draft, input_ids, hidden_out):
        return hidden_out

    def logits(self, draft, hidden_out):
        return draft.lm_head(draft.norm(hidden_out))

    def loss(self, draft, batch: TrainBatch, tcfg) -> tuple[torch.Tensor, dict[str, float]]:
        """Training-time test: unroll k draft steps on the draft's own hidden states; Σ decay^j · CE.

        Step j at position i reads token_{i+1+j} and the draft's step-(j-1) output at i, attends to the
        real prefix (step 0, causal) and its own earlier steps at i, and predicts the base's
        distribution at i+1+j (over the draft vocabulary). No feature loss.
        """
        ids = batch.input_ids[:, 1:]
        b, s = ids.shape
        key_valid = batch.attention_mask[:, 1:]
        hidden = draft.input_from_base(ids, batch.features[:, :-1])
        probs, valid, rows = draft_targets(draft, batch.target_logits[:, 1:])
        mask = (batch.loss_mask[:, 1:] * key_valid).bool() & valid
        cache = DynamicCache()
        total = hidden.new_zeros(())
        metrics: dict[str, float] = {}
        accs = []
        for j in range(tcfg.ttt_steps):
            tok = shift_left(ids, j, fill=0)
            pos = (torch.arange(s, device=ids.device) + j)[None].expand(b, s)
            attn = ttt_mask(s, j, key_valid, hidden.dtype)
            hidden = draft(tok, hidden, pos, attn, cache)
            logits = draft.logits(hidden)
            m_j, p_j, r_j = shift_left(mask, j, False), shift_left(probs, j, 0.0), shift_left(rows, j, 0)
            ce = soft_cross_entropy(logits, p_j, m_j)
            total = total + (tcfg.ttt_decay ** j) * ce
            top1, topk, n = accuracy(logits, r_j, m_j, tcfg.top_k_accuracy)
            metrics.update({f"ce_{j}": ce.item(), f"top1_acc_{j}": top1, f"topk_acc_{j}": topk})
            accs.append(top1 if n else 0.0)
        metrics["sim_accept_length"] = simulated_accept_length(accs)
        metrics["tokens"] = float(mask.sum())
        return total, metrics
