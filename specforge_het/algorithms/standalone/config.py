"""The standalone draft's knobs: the config section `standalone.*`."""

from __future__ import annotations

from dataclasses import dataclass

from specforge_het.config import _f


@dataclass
class StandaloneConfig:
    draft_model: str = _f("", "the draft LM: an embedded name (smollm2-135m-instruct), a local folder or a Hub id "
                              "of any HF causal LM, of any family and tokenizer; training: the LM to distil into")
    draft_dtype: str = _f("", "the draft LM's dtype; '' = the base's (training: '' = modeling.draft_dtype or modeling.dtype)")
    ce_weight: float = _f(0.0, "training: weight of a plain cross-entropy on the base's answers as the draft spells "
                               "them, added to the KL on the shared boundaries (helps a draft with another tokenizer)")
