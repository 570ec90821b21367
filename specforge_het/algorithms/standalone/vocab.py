"""The vocabulary a standalone draft LM and its base share: draft ids that spell exactly one base token.

A standalone draft proposes its own tokens; the base verifies base ids. A draft token can stand in the
tree only when its decoded string is exactly one base token (models/adapters.py, `foreign_vocab_map`),
so that one tree node is one draft token and one base token at once. Special tokens are matched by
their content ("<|end|>" in both vocabularies), so the draft can propose the end of a turn.
With the same tokenizer on both sides the map is the identity (every token, specials included).

Indices 0..S-1 of the shared vocabulary number the pairs; `draft_ids[s]` feeds the draft, `base_ids[s]`
goes to the base. Base ids are distinct, so a distribution over the shared vocabulary scatters onto
base ids without collisions (`to_base_probs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from specforge_het.algorithms.build import cached_token_strings
from specforge_het.models.adapters import foreign_vocab_map


@dataclass(frozen=True)
class SharedVocab:
    draft_ids: torch.Tensor  # [S] draft token ids (rows of the draft's LM head)
    base_ids: torch.Tensor  # [S] the base id of each, distinct
    base_vocab_size: int  # rows of the base's LM head (V_base)
    identity: bool  # same tokenizer: draft ids are base ids, the draft reads base ids as they are

    @classmethod
    def build(cls, base_tokenizer, draft_tokenizer, base_vocab_size: int, draft_vocab_size: int) -> SharedVocab:
        """The shared vocabulary of two tokenizers, within both LM heads' rows."""
        if same_tokenizer(base_tokenizer, draft_tokenizer):
            n = min(len(base_tokenizer), base_vocab_size, draft_vocab_size)
            ids = torch.arange(n)
            return cls(ids, ids.clone(), base_vocab_size, True)
        rows, d2t, _ = foreign_vocab_map(cached_token_strings(base_tokenizer), cached_token_strings(draft_tokenizer),
                                        draft_tokenizer)
        specials = _shared_specials(base_tokenizer, draft_tokenizer)
        draft_ids = torch.cat([rows, torch.tensor([d for d, _ in specials], dtype=torch.long)])
        base_ids = torch.cat([d2t, torch.tensor([b for _, b in specials], dtype=torch.long)])
        ok = (draft_ids < draft_vocab_size) & (base_ids < base_vocab_size)
        if not bool(ok.any()):
            raise ValueError("the draft and base tokenizers share no token: a standalone draft could propose nothing")
        return cls(draft_ids[ok], base_ids[ok], base_vocab_size, False)

    @property
    def size(self) -> int:
        return int(self.draft_ids.shape[0])

    def to(self, device: torch.device | str) -> SharedVocab:
        return SharedVocab(self.draft_ids.to(device), self.base_ids.to(device), self.base_vocab_size, self.identity)

    def restrict(self, draft_logits: torch.Tensor) -> torch.Tensor:
        """Draft logits [..., Vd] -> the shared vocabulary's [..., S]."""
        return draft_logits.index_select(-1, self.draft_ids.to(draft_logits.device))

    def to_base_probs(self, probs: torch.Tensor) -> torch.Tensor:
        """A distribution over the shared vocabulary [..., S] -> the same over base ids [..., V_base] (zero elsewhere)."""
        out = probs.new_zeros(*probs.shape[:-1], self.base_vocab_size)
        index = self.base_ids.to(probs.device).expand(*probs.shape[:-1], -1)
        return out.scatter_(-1, index, probs)


def shared_head(lm_head: nn.Linear, draft_ids: torch.Tensor) -> nn.Linear:
    """The rows `draft_ids` [S] of a draft's LM head as a Linear H -> S of their own (a copy, frozen): the
    draft's logits over the shared vocabulary, without the rows no tree node can hold."""
    w = lm_head.weight.detach()
    head = nn.Linear(w.shape[1], draft_ids.shape[0], bias=lm_head.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        head.weight.copy_(w.index_select(0, draft_ids.to(w.device)))
        if lm_head.bias is not None:
            head.bias.copy_(lm_head.bias.detach().index_select(0, draft_ids.to(w.device)))
    return head.requires_grad_(False)


def same_tokenizer(a, b) -> bool:
    """The same object, or the same class with the same vocabulary (ids and added tokens)."""
    if a is b:
        return True
    return type(a) is type(b) and len(a) == len(b) and a.get_vocab() == b.get_vocab()


def _shared_specials(base_tokenizer, draft_tokenizer) -> list[tuple[int, int]]:
    """(draft id, base id) of the special tokens both tokenizers have, matched by content."""
    base_vocab = base_tokenizer.get_vocab()
    pairs = []
    for token in sorted(set(draft_tokenizer.all_special_tokens)):
        if token in base_vocab and token in base_tokenizer.all_special_tokens:
            pairs.append((draft_tokenizer.convert_tokens_to_ids(token), base_vocab[token]))
    return pairs
