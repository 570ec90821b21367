"""Training a standalone draft (distillation from the base) is not implemented yet: the draft is used as
it was pretrained."""

from __future__ import annotations

from specforge_het.errors import ConfigError

NOT_TRAINABLE = ("training a standalone draft (distillation from the base) is not implemented yet: "
                 "use it as pretrained with `python -m specforge_het.inference --modeling.algorithm standalone "
                 "--standalone.draft_model LM`, or train an eagle_v2 / eagle_v3 draft.")


def loss(draft, batch, tcfg, options):
    raise ConfigError(NOT_TRAINABLE)
