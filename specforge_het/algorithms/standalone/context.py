"""The draft's context in its own tokens, re-spelled from the committed base tokens, and its KV cache.

The committed base ids are decoded with the base tokenizer and the text encoded with the draft's
(with the same tokenizer the base ids are the draft's, as they are). Appending base tokens can
change the last draft tokens ("hel" + "lo" is one draft token "hello"; half of a UTF-8 character
decodes to U+FFFD until its other half comes), so every update re-spells the text, keeps the
draft cache for the longest common prefix of the cached and new draft ids, and feeds only the rest.
Only the tail is re-spelled (respell.Speller): the text after the last base token decoding splits at,
encoded from the last point encoding restarts at; both are read off the tokenizers' configurations
and give exactly the full re-spelling (align.respell), which tokenizers without them get every update.
At least the last draft token is always fed again, so its output (the root's next-token logits)
is fresh whatever the encoding did.
"""

from __future__ import annotations

import torch

from specforge_het.algorithms.standalone.align import draft_prefix
from specforge_het.algorithms.standalone.respell import Speller, common_prefix
from specforge_het.models.base import BaseModel


class DraftContext:
    """Committed base ids, their draft spelling (`draft_ids`), the draft cache over exactly those ids
    (`cache`, `length`), and the draft's final hidden state after them (`root_hidden` [H]; `root_logits` [Vd])."""

    def __init__(self, draft: BaseModel, base_tokenizer, identity: bool):
        self.draft, self.base_tokenizer, self.identity = draft, base_tokenizer, identity
        self._prefix = [] if identity else draft_prefix(draft.tokenizer)  # e.g. the draft's BOS
        self.speller = None if identity else Speller(base_tokenizer, draft.tokenizer, self._prefix)
        self.reset([])

    def reset(self, base_ids: list[int]) -> None:
        """A new generation over `base_ids` (base ids) with an empty draft cache."""
        self.base_ids: list[int] = []
        self.draft_ids: list[int] = []
        self.cache = self.draft.new_cache()
        self.root_hidden: torch.Tensor | None = None
        if self.speller is not None:
            self.speller.reset()
        if base_ids:
            self.extend(base_ids)

    @property
    def length(self) -> int:
        """Draft cache entries: one per draft id."""
        return self.cache.get_seq_length()

    def spell(self, new_base_ids: list[int]) -> tuple[list[int], int]:
        """(draft ids of the text of the committed base ids and `new_base_ids` after them, how many of them are
        known to equal `draft_ids`'): a leading base BOS is the draft's own prefix instead (align.respell, which
        training spells its rows with too)."""
        if self.identity:
            return self.draft_ids + new_base_ids, len(self.draft_ids)
        return self.speller.spell(self.base_ids + new_base_ids)  # type: ignore[union-attr]

    @torch.no_grad()
    def extend(self, new_base_ids: list[int]) -> None:
        """Commit base ids: re-spell, roll the cache back to the common prefix, feed the rest."""
        new = [int(t) for t in new_base_ids]
        ids, same = self.spell(new)
        self.base_ids += new
        if not ids:
            raise ValueError("the committed base tokens spell no draft token")
        keep = min(common_prefix(self.draft_ids, ids, same), len(ids) - 1, self.length)
        self.cache.crop(keep)
        feed = torch.tensor([ids[keep:]], dtype=torch.long, device=self.draft.device)
        out = self.draft(feed, self.cache, logits="none")
        self.draft_ids = ids
        self.root_hidden = out.hidden[0, -1]

    @property
    def root_logits(self) -> torch.Tensor:
        """The draft's next-token logits after the committed ids [Vd] (the proposer reads `root_hidden` through
        its own head over the shared vocabulary)."""
        return self.draft.head(self.root_hidden)

    def rollback(self) -> None:
        """Drop every cache entry past the committed draft ids (after a tree was fed)."""
        self.cache.crop(len(self.draft_ids))
