"""The `standalone` draft: any small HF causal LM, of any family and tokenizer, as the draft, with no base
features (classic speculative decoding with trees).

config.py    StandaloneConfig (section `standalone.*`: draft_model, draft_dtype)
model.py     load_draft_lm: the draft is a whole pretrained LM, not a draft folder
loss.py      refuses: distillation training is not implemented yet
proposer.py  StandaloneProposer (context.py: re-spelled context, vocab.py: shared vocabulary, draws.py: sampling)
Nothing here imports torch on registration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from specforge_het.algorithms.registry import DraftAlgorithm, register
from specforge_het.algorithms.standalone.config import StandaloneConfig
from specforge_het.errors import ConfigError

if TYPE_CHECKING:
    from specforge_het.algorithms.standalone.context import DraftContext
    from specforge_het.algorithms.standalone.proposer import StandaloneProposer
    from specforge_het.algorithms.standalone.vocab import SharedVocab, same_tokenizer


@register("standalone")
class Standalone(DraftAlgorithm):
    Config = StandaloneConfig
    uses_draft_folder = False  # the draft LM comes from --standalone.draft_model

    @property
    def draft_cls(self) -> type:
        from specforge_het.algorithms.standalone.loss import NOT_TRAINABLE

        raise ConfigError(NOT_TRAINABLE)

    def default_feature_layers(self, num_base_layers: int) -> list[int]:
        return []  # reads no base features

    def loss(self, draft, batch, tcfg, options):
        from specforge_het.algorithms.standalone.loss import loss

        return loss(draft, batch, tcfg, options)

    def proposer(self, base, options, tree, temperature: float = 0.0, generator=None):
        from specforge_het.algorithms.standalone.model import load_draft_lm
        from specforge_het.algorithms.standalone.proposer import StandaloneProposer

        if tree is not None and tree.kind not in ("chain", "dynamic"):
            raise ConfigError(f"a standalone draft grows chain or dynamic trees (--inference.tree), not '{tree.kind}'.")
        return StandaloneProposer.for_base(base, load_draft_lm(options, base), tree, temperature, generator)


_LAZY = {"DraftContext": "context", "StandaloneProposer": "proposer", "SharedVocab": "vocab", "same_tokenizer": "vocab"}


def __getattr__(name: str):
    """The core classes, imported on use (they need torch)."""
    if name not in _LAZY:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"specforge_het.algorithms.standalone.{_LAZY[name]}"), name)


__all__ = ["DraftContext", "SharedVocab", "Standalone", "StandaloneConfig", "StandaloneProposer", "same_tokenizer"]
