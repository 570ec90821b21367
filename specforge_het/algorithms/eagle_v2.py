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
