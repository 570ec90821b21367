"""EagleV3's draft (EAGLE-3 style): fuse a low, a middle and a high base layer; unroll on its own outputs.

Input at position i: fc(cat(feature_low_i, feature_mid_i, feature_high_i)) as the hidden stream;
layer 0 is a FusedFirstLayer attending over cat(embed_norm(embed(token_{i+1})), hidden_norm(hidden))
(2 x draft width), as in EAGLE-3. Later draft steps feed the draft's own output hidden state
(bypassing fc). Logits: final norm + the draft's own head over the draft vocabulary.
"""

from __future__ import annotations

from specforge_het.algorithms.eagle_common import EagleDraft
from specforge_het.models.parts import FusedFirstLayer


class EagleV3Draft(EagleDraft):
    fc_bias = False

    def fc_in_features(self) -> int:
        return len(self.cfg.feature_layers) * self.cfg.base["hidden_size"]

    def adapt_layers(self) -> None:
        self.layers[0] = FusedFirstLayer(self.layers[0], self.family.norm_cls, self.cfg.hidden_size,
                                         self.cfg.rms_norm_eps)

    def input_from_base(self, input_ids, features):
        return self.fc(features)

    def input_from_self(self, input_ids, hidden_out):
        return hidden_out

    def logits(self, hidden_out):
        return self.lm_head(self.norm(hidden_out))
