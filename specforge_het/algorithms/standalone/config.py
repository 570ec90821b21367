"""The standalone draft's knobs: the config section `standalone.*`."""

from __future__ import annotations

from dataclasses import dataclass

from specforge_het.config import _f


@dataclass
class StandaloneConfig:
    draft_model: str = _f("", "the draft LM: an embedded name (smollm2-135m-instruct), a local folder or a Hub id "
                              "of any HF causal LM, of any family and tokenizer")
    draft_dtype: str = _f("", "the draft LM's dtype; '' = the base's")
