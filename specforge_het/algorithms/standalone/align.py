"""Where a base sequence and the draft's spelling of it can be compared: token boundaries at the same text offset.

A row of training data is base ids. The draft reads it as the proposer does at inference (context.py):
the text of the base ids (a leading base BOS dropped) encoded by the draft tokenizer, after the draft's own
prefix (its BOS). The base's distribution after base token i and the draft's after draft token j are
distributions over the same next text only when both tokenizations end at the same offset c of the text
(base tokens 0..i and draft tokens 0..j both spell text[:c]): those (i, j) are the pairs a loss compares.
With one tokenizer the spelling is the base ids themselves and every position pairs with itself.

Token end offsets (`token_ends`) come from decoding each token with a few tokens of context before it, as
streaming detokenizers do (a SentencePiece word-start space or a byte-level piece decodes right only in
context), and every piece is checked against the text where it must sit: a token that ends inside a
character (half of a UTF-8 character decodes to U+FFFD) or whose piece does not match gets no offset (None)
and the next token's piece covers both. So an offset is never wrong; at worst a position is not compared.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

DECODE = dict(skip_special_tokens=False, clean_up_tokenization_spaces=False)  # as DraftContext decodes
WINDOW = 8  # tokens of context a piece is decoded with
MAX_RUN = 64  # tokens without a placed piece after which the rest of a sequence is given up (no offsets)


@dataclass(frozen=True)
class RowAlignment:
    """One training row seen by both models."""

    draft_ids: list[int]  # the draft's spelling of the row, its prefix (BOS) included
    pairs: list[tuple[int, int]]  # (base position, draft position) with the same next text, where the base's next token is an answer token
    answer_positions: list[int]  # draft positions whose next draft token lies inside the answer text


def draft_prefix(draft_tokenizer) -> list[int]:
    """What the draft tokenizer puts before any text (its BOS, or nothing)."""
    return list(draft_tokenizer("", add_special_tokens=True)["input_ids"])


def respell(base_ids: list[int], base_tokenizer, draft_tokenizer, prefix: list[int]) -> tuple[int, str, list[int]]:
    """(base tokens before the text: 1 for a leading base BOS, else 0; the text; the draft's ids: prefix + its
    encoding of the text)."""
    skip = 1 if base_ids and base_ids[0] == getattr(base_tokenizer, "bos_token_id", None) else 0
    text = base_tokenizer.decode(base_ids[skip:], **DECODE)
    return skip, text, prefix + draft_tokenizer.encode(text, add_special_tokens=False)


def decode_batch(tokenizer, seqs: list[list[int]]) -> list[str]:
    """tokenizer.batch_decode(seqs, **DECODE); a fast tokenizer's own batch decode is called directly (the same
    strings without cleanup, and without transformers' per-item argument checks, ~30x faster on short pieces)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.decode_batch(seqs, skip_special_tokens=False)
    return tokenizer.batch_decode(seqs, **DECODE)


def token_ends(tokenizer, ids: list[int], text: str, window: int = WINDOW) -> list[int | None]:
    """The offset in `text` just after each of `ids` (tokens spelling `text`), None where a token's piece cannot
    be placed: it ends inside a character, or its piece (decoded in context) is not the text there."""
    starts = [max(0, i - window) for i in range(len(ids))]
    before = decode_batch(tokenizer, [ids[s:i] for i, s in enumerate(starts)])
    upto = decode_batch(tokenizer, [ids[s:i + 1] for i, s in enumerate(starts)])
    ends: list[int | None] = []
    pos, done = 0, 0  # text placed so far; tokens placed so far
    for i in range(len(ids)):
        if i - done >= MAX_RUN:  # the decoded text went another way (e.g. a normalising tokenizer): stop here
            return ends + [None] * (len(ids) - i)
        if done == i:
            a, b = before[i], upto[i]
        else:  # the tokens since the last placed one decode together
            k = max(0, done - window)
            a, b = tokenizer.decode(ids[k:done], **DECODE), tokenizer.decode(ids[k:i + 1], **DECODE)
        piece = b[len(a):]
        if b.startswith(a) and piece and text.startswith(piece, pos):
            pos, done = pos + len(piece), i + 1
            ends.append(pos)
        else:
            ends.append(None)
    return ends


def common_boundaries(base_ends: list[int | None], draft_ends: list[int | None]) -> list[tuple[int, int]]:
    """(i, j) for every offset both sides end a token at: the last base token i and the last draft token j
    ending there (a token spelling nothing, e.g. a prefix, adds no text), in increasing order."""
    last_base = {e: i for i, e in enumerate(base_ends) if e is not None}
    last_draft = {e: j for j, e in enumerate(draft_ends) if e is not None}
    return sorted((i, last_draft[e]) for e, i in last_base.items() if e in last_draft)


def answer_spans(ends: list[int | None], mask: list[int]) -> list[tuple[int, int]]:
    """Text spans [start, end) of the answer tokens (mask 1), merged: a span runs between two placed offsets
    with only answer tokens between them."""
    spans: list[tuple[int, int]] = []
    prev, pure = 0, True
    for e, m in zip(ends, mask):
        pure = pure and bool(m)
        if e is None:
            continue
        if pure and e > prev:
            if spans and spans[-1][1] == prev:
                spans[-1] = (spans[-1][0], e)
            else:
                spans.append((prev, e))
        prev, pure = e, True
    return spans


def tokens_inside(spans: list[tuple[int, int]], ends: list[int | None]) -> list[int]:
    """Positions t - 1 of the tokens t >= 1 whose text (from the previous placed offset to their end) lies
    inside one of `spans`: the positions whose next token is an answer token."""
    out, starts = [], [s for s, _ in spans]
    prev = 0
    for t, e in enumerate(ends):
        if e is None:
            continue
        k = bisect.bisect_right(starts, prev) - 1
        if t >= 1 and e > prev and k >= 0 and e <= spans[k][1]:
            out.append(t - 1)
        prev = e
    return out


def align_row(base_ids: list[int], loss_mask: list[int], base_tokenizer, draft_tokenizer, prefix: list[int],
              identity: bool) -> RowAlignment:
    """The draft's spelling of a row and the positions its loss compares (module docstring)."""
    n = len(base_ids)
    if identity:
        answer = [i for i in range(n - 1) if loss_mask[i + 1]]
        return RowAlignment(list(base_ids), [(i, i) for i in answer], answer)
    skip, text, draft_ids = respell(base_ids, base_tokenizer, draft_tokenizer, prefix)
    base_ends = [0] * skip + token_ends(base_tokenizer, base_ids[skip:], text)
    draft_ends = [0] * len(prefix) + token_ends(draft_tokenizer, draft_ids[len(prefix):], text)
    pairs = [(i, j) for i, j in common_boundaries(base_ends, draft_ends) if i + 1 < n and loss_mask[i + 1]]
    answer = tokens_inside(answer_spans(base_ends, loss_mask), draft_ends)
    return RowAlignment(draft_ids, pairs, answer)
