"""The standalone draft is a whole pretrained HF causal LM (a models.base.BaseModel with its tokenizer),
loaded from `--standalone.draft_model`; it has no draft-folder class and reads no base features.
A trained one is an HF model folder too (distill.py saves it), so the same option loads it."""

from __future__ import annotations

from specforge_het.errors import ConfigError
from specforge_het.models.base import BaseModel
from specforge_het.models.build import add_lora

NO_DRAFT_MODEL = ("modeling.algorithm = standalone needs --standalone.draft_model "
                  "(an embedded name, a local folder or a Hub id of an HF causal LM).")


def load_draft_lm(options, base: BaseModel) -> BaseModel:
    """The draft LM of `options` (a StandaloneConfig) on the base's device, in the base's dtype unless set."""
    if not options.draft_model:
        raise ConfigError(NO_DRAFT_MODEL)
    draft = BaseModel.load(options.draft_model, options.draft_dtype or base.dtype, base.device)
    draft.model.eval()
    return draft


def load_trainable_lm(name: str, dtype: str, device, lora_rank: int = 0):
    """(the HF causal LM `name` to train, its tokenizer): every weight trainable, or with `lora_rank` LoRA
    adapters on its decoder layers (models/build.add_lora, as for drafts initialised from a small LM: the
    adapters and the layers' norms train, everything else stays frozen)."""
    if not name:
        raise ConfigError(NO_DRAFT_MODEL)
    try:
        lm = BaseModel.load(name, dtype, device)  # frozen, as every BaseModel
    except (OSError, ValueError) as exc:
        raise ConfigError(f"standalone.draft_model '{name}' does not load as an HF causal LM: {exc}") from None
    if lora_rank:
        add_lora(lm, lora_rank)  # lm.layers: the decoder layers of lm.model
    else:
        lm.model.requires_grad_(True)
    return lm.model.train(True), lm.tokenizer
