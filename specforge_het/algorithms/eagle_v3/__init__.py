"""EagleV3 (EAGLE-3 style): low/mid/high base features, a fused first layer, training-time test.

config.py  EagleV3Config (section `eagle_v3.*`: ttt_steps, ttt_decay)
model.py   EagleV3Draft
loss.py    the training-time-test unroll (lean TTT attention where the layers allow it)
The draft class and the loss are imported on use, so registering the algorithm (every command line does,
before it resolves its config) imports neither torch nor transformers.
"""

from __future__ import annotations

from specforge_het.algorithms.eagle_v3.config import EagleV3Config
from specforge_het.algorithms.registry import DraftAlgorithm, register
from specforge_het.errors import ConfigError


@register("eagle_v3")
class EagleV3(DraftAlgorithm):
    Config = EagleV3Config
    config_moved_from = "training"  # --training.<knob> is a deprecated alias of --eagle_v3.<knob>
    embeds_at_draft_width = True  # the fused first layer reads token embeddings at draft width

    @property
    def draft_cls(self) -> type:
        from specforge_het.algorithms.eagle_v3.model import EagleV3Draft

        return EagleV3Draft

    def default_feature_layers(self, num_base_layers: int) -> list[int]:
        # HF hidden_states indices, as EAGLE-3 uses them: 2, L//2, L-3 (outputs of blocks 1, L/2-1, L-4).
        n = num_base_layers
        return sorted({min(2, n), max(n // 2, 1), max(n - 3, 1)})

    def check(self, options: EagleV3Config) -> None:
        if options.ttt_steps < 1:
            raise ConfigError(f"{self.name}.ttt_steps must be >= 1.")
        if options.reachable_k < 0:
            raise ConfigError(f"{self.name}.reachable_k must be >= 0 (0 = off, k = the tree's top-k), got "
                              f"{options.reachable_k}.")

    def training_warnings(self, tcfg) -> list[str]:
        if not tcfg.fsdp:
            return []
        return ["under FSDP each draft layer is its own FSDP unit, so EagleV3's unroll runs the layers' own forward "
                "with a [s, (j+1)s] mask: the split TTT attention and --training.gradient_checkpointing are not used "
                "(more activation memory). DDP or DeepSpeed ZeRO-2 keep them."]

    def loss(self, draft, batch, tcfg, options):
        from specforge_het.algorithms.eagle_v3.loss import ttt_loss

        return ttt_loss(draft, batch, tcfg, options)


__all__ = ["EagleV3", "EagleV3Config"]
