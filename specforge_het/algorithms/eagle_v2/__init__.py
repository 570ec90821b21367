"""EagleV2 (EAGLE-1/2 style): the last normed base feature + the next token's embedding, feature regression.

config.py  EagleV2Config (section `eagle_v2.*`: vloss_w, ploss_w, feature_noise)
model.py   EagleV2Draft
loss.py    feature regression + soft cross-entropy
The draft class and the loss are imported on use, so registering the algorithm (every command line does,
before it resolves its config) imports neither torch nor transformers.
"""

from __future__ import annotations

from specforge_het.algorithms.eagle_v2.config import EagleV2Config
from specforge_het.algorithms.registry import DraftAlgorithm, register
from specforge_het.errors import ConfigError

LAST = -1  # the final normed base state (models.base.LAST)


@register("eagle_v2")
class EagleV2(DraftAlgorithm):
    Config = EagleV2Config
    config_moved_from = "training"  # --training.<knob> is a deprecated alias of --eagle_v2.<knob>
    own_head_for_base_vocab = False  # vocab = base: the base LM head reads the predicted feature

    @property
    def draft_cls(self) -> type:
        from specforge_het.algorithms.eagle_v2.model import EagleV2Draft

        return EagleV2Draft

    def default_feature_layers(self, num_base_layers: int) -> list[int]:
        return [LAST]

    def check(self, options: EagleV2Config) -> None:
        if options.feature_noise < 0 or options.vloss_w < 0 or options.ploss_w < 0:
            raise ConfigError(f"{self.name}.feature_noise, vloss_w and ploss_w must be >= 0.")

    def loss(self, draft, batch, tcfg, options):
        from specforge_het.algorithms.eagle_v2.loss import feature_loss

        return feature_loss(draft, batch, tcfg, options)


__all__ = ["EagleV2", "EagleV2Config"]
