"""EagleV2's draft (EAGLE-1/2 style): regress the next base feature from (feature_i, embedding of token i+1).

Input at position i: fc(cat(embed(token_{i+1}), feature_i)), feature = the base's final normed
hidden state. The draft layers predict feature_{i+1}; with a different draft width the
`to_base` width adapter maps the prediction back to base width. Drafting feeds the predicted
feature back in. Token logits come from the base LM head (vocab = base) or from the draft's
own head over a reduced/foreign vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from specforge_het.algorithms.eagle_common import EagleDraft
from specforge_het.models.parts import width_adapter


class EagleV2Draft(EagleDraft):
    fc_bias = True

    def fc_in_features(self) -> int:
        return self.embed_width + self.cfg.base["hidden_size"]

    def add_output_adapters(self) -> None:
        hb, hd = self.cfg.base["hidden_size"], self.cfg.hidden_size
        self.to_base = width_adapter(hd, hb) if hd != hb else None

    def adapt_layers(self) -> None:
        if not self.cfg.first_input_norm:
            self.layers[0].input_layernorm = nn.Identity()  # EAGLE-1/2: no norm between fc and layer 0

    def predicted_feature(self, hidden_out: torch.Tensor) -> torch.Tensor:
        return self.to_base(hidden_out) if self.to_base is not None else hidden_out

    def base_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.base.head(hidden)

    def input_from_base(self, input_ids, features):
        return self.fc(torch.cat([self.embed(input_ids), features], dim=-1))

    def input_from_self(self, input_ids, hidden_out):
        return self.fc(torch.cat([self.embed(input_ids), self.predicted_feature(hidden_out)], dim=-1))

    def logits(self, hidden_out):
        if self.lm_head is None:
            return self.base_head(self.predicted_feature(hidden_out))
        return self.lm_head(hidden_out)
