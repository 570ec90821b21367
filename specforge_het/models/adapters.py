"""Adapters between base and draft: width (hidden size) and vocabulary (token ids).

Vocabulary adapter, the one rule: the draft's head has rows over a *draft vocabulary*;
`d2t[i]` is the base id of draft row i. Two ways to build it:
  (a) reduced: the most frequent base ids (EAGLE-3's d2t/t2d);
  (b) foreign: the draft tokenizer's tokens whose decoded string is also a base token.
Draft logits scatter onto base ids through d2t, so verification stays standard and lossless.
For a foreign tokenizer the draft's *input* side maps every base id to the draft tokens that
spell its string (`input_map`, padded with -1), averaged in the draft's own embedding.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

# ---------------------------------------------------------------- token strings

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def token_strings(tokenizer) -> list[str | None]:
    """Decoded text of every token id, or None for special tokens, byte-fallback tokens and partial UTF-8 bytes.

    Decoding is done after an anchor token and the anchor's text removed, so tokenizers that
    strip a leading space when a token is decoded alone (SentencePiece) keep it.
    """
    vocab_size = len(tokenizer)
    special = set(tokenizer.all_special_ids)
    # byte-fallback tokens (<0x2E> ...) decode to the same text as the real token ("."), which the
    # tokenizer produces instead; they must not take that string's place in the vocabulary map
    special |= {i for i, t in enumerate(tokenizer.convert_ids_to_tokens(list(range(vocab_size))))
                if isinstance(t, str) and _BYTE_TOKEN.fullmatch(t)}
    anchor = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("a")[-1])
    anchor_text = tokenizer.decode([anchor])
    texts = tokenizer.batch_decode([[anchor, i] for i in range(vocab_size)], clean_up_tokenization_spaces=False)
    out: list[str | None] = []
    for i, text in enumerate(texts):
        ok = i not in special and text.startswith(anchor_text) and "\ufffd" not in text
        piece = text[len(anchor_text):] if ok else ""
        out.append(piece if piece else None)
    return out


def _first_ids(strings: Sequence[str | None]) -> dict[str, int]:
    table: dict[str, int] = {}
    for i, s in enumerate(strings):
        if s is not None and s not in table:
            table[s] = i
    return table


def foreign_vocab_map(base_strings, draft_strings, draft_tokenizer, max_pieces: int = 8):
    """Map a foreign draft vocabulary onto base ids by token string.

    Returns (draft_rows [Vd], d2t [Vd], input_map [Vb, max_pieces]):
    draft_rows = draft token ids whose string is a base token, d2t = those base ids, and
    input_map[b] = draft ids that spell base token b (-1 padded; empty for special tokens).
    """
    base_ids = _first_ids(base_strings)
    draft_ids = _first_ids(draft_strings)
    rows, d2t = [], []
    for s, draft_id in sorted(draft_ids.items(), key=lambda kv: kv[1]):  # one draft row per distinct string
        if s in base_ids:
            rows.append(draft_id)
            d2t.append(base_ids[s])
    input_map = torch.full((len(base_strings), max_pieces), -1, dtype=torch.int32)
    for b, s in enumerate(base_strings):
        if s is None:
            continue
        pieces = [draft_ids[s]] if s in draft_ids else draft_tokenizer.encode(s, add_special_tokens=False)
        pieces = pieces[:max_pieces]
        input_map[b, : len(pieces)] = torch.tensor(pieces, dtype=torch.int32)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(d2t, dtype=torch.long), input_map


def reduced_vocab(token_counts: torch.Tensor, size: int, always: Sequence[int] = ()) -> torch.Tensor:
    """d2t for EAGLE-3's reduced vocabulary: the `size` most frequent base ids (ties: lower id), sorted.

    `always` (e.g. EOS) is included first so the draft can propose stopping.
    """
    size = min(size, token_counts.shape[0])
    counts = token_counts.double().clone()
    counts[list(always)] = float("inf")
    order = torch.argsort(-counts, stable=True)[:size]
    return torch.sort(order).values


def coverage(d2t: torch.Tensor, base_token_ids: torch.Tensor) -> float:
    """Share of base-token occurrences (e.g. a text tokenized by the base) the draft can propose."""
    if base_token_ids.numel() == 0:
        return 0.0
    proposable = torch.zeros(int(max(d2t.max().item(), base_token_ids.max().item())) + 1, dtype=torch.bool)
    proposable[d2t] = True
    return proposable[base_token_ids.flatten()].float().mean().item()


# ---------------------------------------------------------------- modules

class VocabAdapter(nn.Module):
    """Draft vocabulary <-> base ids. Buffers only; saved with the draft."""

    def __init__(self, d2t: torch.Tensor, base_vocab_size: int, input_map: torch.Tensor | None = None,
                 draft_token_ids: torch.Tensor | None = None):
        super().__init__()
        self.base_vocab_size = base_vocab_size
        self.register_buffer("d2t", d2t.long().clone())  # [Vd] absolute base ids
        self.register_buffer("input_map", None if input_map is None else input_map.clone())  # [Vb, K]
        # foreign only: the draft tokenizer's id of each head row [Vd]
        self.register_buffer("draft_token_ids", None if draft_token_ids is None else draft_token_ids.long().clone())

    @property
    def draft_vocab_size(self) -> int:
        return self.d2t.shape[0]

    def t2d(self) -> torch.Tensor:
        """[Vb] bool: base ids the draft can propose."""
        mask = torch.zeros(self.base_vocab_size, dtype=torch.bool, device=self.d2t.device)
        mask[self.d2t] = True
        return mask

    def to_base(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return self.d2t[draft_ids]

    def base_to_draft_rows(self) -> torch.Tensor:
        """[Vb] draft row of each base id, -1 where the draft cannot propose it."""
        rows = torch.full((self.base_vocab_size,), -1, dtype=torch.long, device=self.d2t.device)
        rows[self.d2t] = torch.arange(self.draft_vocab_size, device=self.d2t.device)
        return rows

    def embed_foreign(self, base_ids: torch.Tensor, embedding: nn.Embedding) -> torch.Tensor:
        """Mean draft embedding of the draft pieces that spell each base token. [..., Hd]"""
        pieces = self.input_map[base_ids].long()  # [..., K]
        valid = (pieces >= 0).unsqueeze(-1).to(embedding.weight.dtype)
        vecs = embedding(pieces.clamp(min=0)) * valid  # [..., K, Hd]
        return vecs.sum(-2) / valid.sum(-2).clamp(min=1.0)

    def coverage(self, base_token_ids: torch.Tensor) -> float:
        return coverage(self.d2t.cpu(), base_token_ids.cpu())


def frequent_rows(d2t: torch.Tensor, token_counts: torch.Tensor, rows: int) -> torch.Tensor:
    """The ``rows`` head rows (sorted) whose base ids ``d2t`` [Vd] are most frequent in ``token_counts``
    [Vb] (ties: lower row). Pure."""
    score = token_counts.double()[d2t]
    return torch.sort(torch.argsort(-score, stable=True)[: max(1, rows)]).values


def compact_foreign_vocab(d2t: torch.Tensor, input_map: torch.Tensor, token_counts: torch.Tensor, rows: int,
                          embed_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shrink a trained foreign vocabulary to what the data uses (pure).

    Keeps the ``rows`` head rows whose base ids are most frequent in ``token_counts`` [Vb] (ties:
    lower row), and only the embedding rows that spell a base id seen in the data or kept in the head.
    Kept rows' logits are unchanged, so the draft proposes the same tokens among those it keeps.
    ``d2t`` [Vd], ``input_map`` [Vb, K] (draft embedding rows, -1 padded), ``embed_rows`` = E.
    Returns (keep_rows [R] sorted, keep_embed [E'] sorted, input_map [Vb, K'] over the kept embedding
    rows, each row's pieces first and K' <= K the most any row keeps; pieces that were dropped are
    gone, so a base id unseen in the data may embed to zero).
    """
    keep_rows = frequent_rows(d2t, token_counts, rows)
    needed = token_counts > 0
    needed[d2t[keep_rows]] = True
    pieces = input_map[needed].flatten().long()
    keep_embed = torch.unique(pieces[pieces >= 0])
    new_index = torch.full((embed_rows,), -1, dtype=torch.long)
    new_index[keep_embed] = torch.arange(keep_embed.numel())
    mapped = new_index[input_map.long().clamp(min=0)]
    new_map = torch.where(input_map >= 0, mapped, torch.full_like(mapped, -1))
    valid = new_map >= 0  # pack each row's pieces to the left and drop the columns no row needs
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    width = max(1, int(valid.sum(1).max()))
    new_map = torch.gather(new_map, 1, order)[:, :width].to(input_map.dtype)
    return keep_rows, keep_embed, new_map
