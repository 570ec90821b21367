"""EagleV3 (EAGLE-3 style): fuse a low, a middle and a high base layer; unroll on the draft's own outputs.

Input at position i: fc(cat(feature_low_i, feature_mid_i, feature_high_i)) as the hidden
stream; layer 0 attends over cat(input_layernorm(embed(token_{i+1})), hidden_norm(hidden))
(2 x draft width), as in EAGLE-3. Later draft steps feed the draft's own output hidden state
(bypassing fc). Logits: final norm + the draft's own head over the draft vocabulary.
"""

from __future__ import annotations

from specforge_het.algorithms import register
from specforge_het.algorithms.base import DraftAlgorithm


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
