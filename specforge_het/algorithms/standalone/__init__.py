"""The `standalone` draft: any small HF causal LM, of any family and tokenizer, as the draft, with no base
features (classic speculative decoding with trees). Not registered as a draft algorithm yet."""

from __future__ import annotations

from specforge_het.algorithms.standalone.context import DraftContext
from specforge_het.algorithms.standalone.proposer import StandaloneProposer
from specforge_het.algorithms.standalone.vocab import SharedVocab, same_tokenizer

__all__ = ["DraftContext", "SharedVocab", "StandaloneProposer", "same_tokenizer"]
