"""The standalone draft is a whole pretrained HF causal LM (a models.base.BaseModel with its tokenizer),
loaded from `--standalone.draft_model`; it has no draft-folder class and reads no base features."""

from __future__ import annotations

from specforge_het.errors import ConfigError
from specforge_het.models.base import BaseModel


def load_draft_lm(options, base: BaseModel) -> BaseModel:
    """The draft LM of `options` (a StandaloneConfig) on the base's device, in the base's dtype unless set."""
    if not options.draft_model:
        raise ConfigError("modeling.algorithm = standalone needs --standalone.draft_model "
                          "(an embedded name, a local folder or a Hub id of an HF causal LM).")
    draft = BaseModel.load(options.draft_model, options.draft_dtype or base.dtype, base.device)
    draft.model.eval()
    return draft
