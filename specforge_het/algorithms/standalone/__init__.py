"""The `standalone` draft: any small HF causal LM, of any family and tokenizer, as the draft, with no base
features (classic speculative decoding with trees), used as pretrained or trained by distillation from the base.

config.py    StandaloneConfig (section `standalone.*`: draft_model, draft_dtype, ce_weight)
model.py     load_draft_lm / load_trainable_lm: the draft is a whole HF LM, not a draft folder
proposer.py  StandaloneProposer (context.py: re-spelled context, vocab.py: shared vocabulary, draws.py: sampling)
distill.py   training (`python -m specforge_het.train --modeling.algorithm standalone --standalone.draft_model LM
             --dataset.path DATA`): the module HF Trainer optimises, online; saves an HF model folder (LoRA merged,
             tokenizer, provenance.json) that `--standalone.draft_model FOLDER` loads
align.py     which base and draft positions predict the same next text (token boundaries at one text offset)
loss.py      KL(base ‖ draft) there, over the shared vocabulary (both sides renormalised); with one tokenizer,
             every answer position over the whole vocabulary; optional cross-entropy on the re-spelled answer
Nothing here imports torch on registration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from specforge_het.algorithms.registry import DraftAlgorithm, register
from specforge_het.algorithms.standalone.config import StandaloneConfig
from specforge_het.errors import ConfigError

NO_DRAFT_FOLDER = ("a standalone draft is a whole HF causal LM (--standalone.draft_model), not a draft folder: train it "
                   "with `python -m specforge_het.train --modeling.algorithm standalone --standalone.draft_model LM "
                   "--dataset.path DATA`, which saves an HF model folder.")

if TYPE_CHECKING:
    from specforge_het.algorithms.standalone.context import DraftContext
    from specforge_het.algorithms.standalone.proposer import StandaloneProposer
    from specforge_het.algorithms.standalone.vocab import SharedVocab, same_tokenizer


@register("standalone")
class Standalone(DraftAlgorithm):
    Config = StandaloneConfig
    uses_draft_folder = False  # the draft LM comes from --standalone.draft_model
    load_option = "--standalone.draft_model"  # train saves an HF model folder

    @property
    def draft_cls(self) -> type:
        raise ConfigError(NO_DRAFT_FOLDER)

    def default_feature_layers(self, num_base_layers: int) -> list[int]:
        return []  # reads no base features

    def check(self, options: StandaloneConfig) -> None:
        if options.ce_weight < 0:
            raise ConfigError(f"standalone.ce_weight must be >= 0, got {options.ce_weight}.")

    def check_training(self, cfg) -> None:
        m, t = cfg.modeling, cfg.training
        if not cfg.standalone.draft_model:
            raise ConfigError("training a standalone draft needs --standalone.draft_model: the HF causal LM to distil "
                              "the base into (an embedded name, a local folder or a Hub id).")
        if t.mode != "online":
            raise ConfigError("a standalone draft trains online only (the base's logits come from its forward in each "
                              "step): drop --training.mode offline.")
        if m.init_from or m.init_draft:
            raise ConfigError("modeling.init_from / modeling.init_draft build draft folders; a standalone draft starts "
                              "from --standalone.draft_model (a trained standalone folder too, to train on).")

    def training_module(self, cfg, base, rows, options):
        from specforge_het.algorithms.standalone.distill import build_module

        return build_module(self, cfg, base, rows, options)

    def loss(self, draft, batch, tcfg, options):
        from specforge_het.algorithms.standalone.loss import distill_loss

        return distill_loss(draft, batch, tcfg, options)

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
