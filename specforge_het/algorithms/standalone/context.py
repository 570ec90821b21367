"""The draft's context in its own tokens, re-spelled from the committed base tokens, and its KV cache.

The committed base ids are decoded with the base tokenizer and the text encoded with the draft's
(with the same tokenizer the base ids are the draft's, as they are). Appending base tokens can
change the last draft tokens ("hel" + "lo" is one draft token "hello"; half of a UTF-8 character
decodes to U+FFFD until its other half comes), so every update re-encodes the text, keeps the
draft cache for the longest common prefix of the cached and new draft ids, and feeds only the rest.
The whole text is re-encoded: a tail window would be exact only for tokenizers whose pieces never
span the window's edge, which nothing guarantees (a tokenizer's pre-split depends on context).
At least the last draft token is always fed again, so its output (the root's next-token logits)
is fresh whatever the encoding did.
"""

from __future__ import annotations

import torch

from specforge_het.algorithms.standalone.align import draft_prefix, respell
from specforge_het.models.base import BaseModel


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class DraftContext:
    """Committed base ids, their draft spelling (`draft_ids`), the draft cache over exactly those ids
    (`cache`, `length`), and the draft's next-token logits after them (`root_logits` [Vd])."""

    def __init__(self, draft: BaseModel, base_tokenizer, identity: bool):
        self.draft, self.base_tokenizer, self.identity = draft, base_tokenizer, identity
        self._prefix = [] if identity else draft_prefix(draft.tokenizer)  # e.g. the draft's BOS
        self.reset([])

    def reset(self, base_ids: list[int]) -> None:
        """A new generation over `base_ids` (base ids) with an empty draft cache."""
        self.base_ids: list[int] = []
        self.draft_ids: list[int] = []
        self.cache = self.draft.new_cache()
        self.root_logits: torch.Tensor | None = None
        if base_ids:
            self.extend(base_ids)

    @property
    def length(self) -> int:
        """Draft cache entries: one per draft id."""
        return self.cache.get_seq_length()

    def spell(self, base_ids: list[int]) -> list[int]:
        """Draft ids of the text of `base_ids` (a leading base BOS is the draft's own prefix instead; align.respell,
        which training spells its rows with too)."""
        if self.identity:
            return list(base_ids)
        return respell(base_ids, self.base_tokenizer, self.draft.tokenizer, self._prefix)[2]

    @torch.no_grad()
    def extend(self, new_base_ids: list[int]) -> None:
        """Commit base ids: re-spell, roll the cache back to the common prefix, feed the rest."""
        self.base_ids += [int(t) for t in new_base_ids]
        ids = self.spell(self.base_ids)
        if not ids:
            raise ValueError("the committed base tokens spell no draft token")
        keep = min(common_prefix(self.draft_ids, ids), len(ids) - 1, self.length)
        self.cache.crop(keep)
        feed = torch.tensor([ids[keep:]], dtype=torch.long, device=self.draft.device)
        out = self.draft(feed, self.cache, logits="last")
        self.draft_ids = ids
        self.root_logits = out.logits[0, -1]

    def rollback(self) -> None:
        """Drop every cache entry past the committed draft ids (after a tree was fed)."""
        self.cache.crop(len(self.draft_ids))
