"""Incremental re-spelling: the draft's spelling of growing base ids, re-spelled at the tail only, and exactly
what a full re-spelling (align.respell: decode all base ids, encode the whole text) gives.

Two tokenizer facts make a tail re-spelling exact; each is checked on the tokenizer's own configuration, and a
tokenizer without it is re-spelled whole (`decode_rule` / `encode_restarts` say None / False):

* decoding splits at a base token b when no decoding step spans b: for a ByteLevel decoder, when token b does
  not start with a UTF-8 continuation byte (lossy UTF-8 decoding of B1 + B2 is then that of B1, then B2); for a
  Replace / ByteFallback / Fuse sequence (SentencePiece-style, e.g. Gemma's), when tokens b-1 and b are not
  both byte tokens ("<0xE2>": ByteFallback decodes a run of them together). Then
  decode(ids[:n]) == decode(ids[:b]) + decode(ids[b:n]) for every n > b: the text before b is settled.
* encoding restarts at a text offset c where text[c] is a space after a non-space character, or punctuation
  after a letter (`restart_point`), for a byte-level BPE with the GPT-2 split pattern, no normalizer and added
  tokens that hold no whitespace and strip nothing: every pre-token ends at c (none takes a space after a
  non-space character, and a letter run or contraction ends before punctuation), the pre-tokens before c look
  at no character past c, the pattern looks at nothing before c, BPE runs per pre-token, and no added token
  spans c (it would hold the space, or the punctuation character: those are avoided). So
  encode(text) == encode(text[:c]) + encode(text[c:]), and a restart point before the first changed
  character stays one.

`Speller.spell` keeps the settled text and the draft ids up to the last restart point, and re-spells the rest.
"""

from __future__ import annotations

import functools
import json
import string
from typing import Any

from specforge_het.algorithms.standalone.align import DECODE, respell

CONTINUATION = range(0x80, 0xC0)  # UTF-8 continuation bytes
PLAIN_DECODERS = {"Replace", "ByteFallback", "Fuse"}  # per-token steps, and ByteFallback's runs of byte tokens
WORD_END = frozenset(string.punctuation + "，。、；：？！（）《》「」『』")  # never letters, digits or spaces


@functools.lru_cache(maxsize=1)
def byte_level_bytes() -> dict[str, int]:
    """The byte-level alphabet (GPT-2's bytes_to_unicode) inverted: character -> the byte it stands for."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[chr(b)] = b
        else:
            out[chr(256 + extra)] = b
            extra += 1
    return out


def starts_mid_character(token: str) -> bool:
    """A byte-level token whose bytes may start with a UTF-8 continuation byte (a token off the alphabet decodes as
    its own UTF-8, which never does; True is the safe answer for an empty token)."""
    return not token or byte_level_bytes().get(token[0], 0) in CONTINUATION


def is_byte_token(token: str | None) -> bool:
    """ByteFallback's byte tokens: "<0xE2>" (an id without a token string is none)."""
    return isinstance(token, str) and len(token) == 6 and token.startswith("<0x") and token.endswith(">")


def decode(tokenizer, ids: list[int]) -> str:
    """tokenizer.decode(ids, **align.DECODE), by a fast tokenizer's own decode (align.decode_batch's strings)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return tokenizer.decode(ids, **DECODE) if backend is None else backend.decode(ids, skip_special_tokens=False)


def _config(tokenizer) -> dict | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return None if backend is None else json.loads(backend.to_str())


def decode_rule(tokenizer) -> str | None:
    """How decoding splits for this tokenizer: "byte_level", "byte_fallback" (the module docstring), or None."""
    config = _config(tokenizer)
    dec = (config or {}).get("decoder") or {}
    if dec.get("type") == "ByteLevel":
        return "byte_level"
    steps = dec.get("decoders", []) if dec.get("type") == "Sequence" else []
    if steps and all(s.get("type") in PLAIN_DECODERS for s in steps):
        return "byte_fallback"
    return None


def splits_at(rule: str, before: str | None, token: str | None) -> bool:
    """Decoding splits between base tokens `before` and `token` (token strings) under `rule`; never next
    to an id without a token string (e.g. a head row past the tokenizer's vocabulary)."""
    if before is None or token is None:
        return False
    if rule == "byte_level":
        return not starts_mid_character(token)
    return not (is_byte_token(before) and is_byte_token(token))


def encode_restarts(tokenizer) -> bool:
    """True when encoding restarts at every `restart_point` (the module docstring)."""
    config = _config(tokenizer)
    if config is None or config.get("normalizer") is not None:
        return False
    pre = config.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        return False
    return all(not any(ch.isspace() for ch in t["content"]) and not (t.get("lstrip") or t.get("rstrip")
               or t.get("single_word")) for t in config.get("added_tokens", []))


def _stable_letter(ch: str) -> bool:
    """A letter in every Unicode version Python's and the tokenizer's tables may follow: ASCII, Latin-1 and Latin
    Extended-A/B, Greek, Cyrillic, or the CJK ideographs of Unicode 1.1."""
    o = ord(ch)
    return ch.isalpha() and (o < 0x0500 or 0x4E00 <= o <= 0x9FA5)


def restart_point(text: str, lo: int, avoid: frozenset[str] = frozenset()) -> int:
    """The last offset c in (lo, len(text)) where encoding restarts, or -1: text[c] is a space after a non-space
    character, or a punctuation character of WORD_END (and not in `avoid`: the added tokens' characters) after a
    letter (`_stable_letter`)."""
    for c in range(len(text) - 1, lo, -1):
        ch, prev = text[c], text[c - 1]
        if ch == " " and not prev.isspace():
            return c
        if ch in WORD_END and ch not in avoid and _stable_letter(prev):
            return c
    return -1


def added_characters(tokenizer) -> frozenset[str]:
    """The characters of a tokenizer's added tokens (a restart inside one of them would split it)."""
    tokens = (_config(tokenizer) or {}).get("added_tokens") or []
    return frozenset("".join(t["content"] for t in tokens))


def common_prefix(a, b, start: int = 0) -> int:
    """Length of the longest common prefix of two sequences (lists or strings) known to agree before `start`."""
    n = min(len(a), len(b))
    for i in range(min(start, n), n):
        if a[i] != b[i]:
            return i
    return n


class Speller:
    """The draft's spelling (prefix + draft ids of the text) of base ids that only grow, re-spelled at the tail.

    `spell(base_ids)` -> (draft ids, how many of them are known to equal the last call's); base ids that do
    not extend the last call's start over. A tokenizer pair without both facts of the module docstring is
    re-spelled whole every call."""

    def __init__(self, base_tokenizer, draft_tokenizer, prefix: list[int]):
        self.base_tokenizer, self.draft_tokenizer, self.prefix = base_tokenizer, draft_tokenizer, list(prefix)
        self.rule = decode_rule(base_tokenizer)
        self.incremental = self.rule is not None and encode_restarts(draft_tokenizer)
        self._backend: Any = getattr(draft_tokenizer, "backend_tokenizer", None)
        self._avoid = added_characters(draft_tokenizer) if self.incremental else frozenset()
        self.reset()

    def reset(self) -> None:
        self.base_ids: list[int] = []
        self.skip = 0  # 1 for a leading base BOS (align.respell)
        self.settled, self.settled_text = 0, ""  # base ids [skip, settled) decode to settled_text, which stays
        self.text = ""  # the text of base_ids[skip:]
        self.draft_ids: list[int] = []  # the draft's encoding of `text` (prefix not included)
        self.restarts: list[tuple[int, int]] = []  # (text offset c, draft ids before c) at restart points

    def spell(self, base_ids: list[int]) -> tuple[list[int], int]:
        old = len(self.base_ids)
        if not self.incremental or not base_ids or base_ids[:old] != self.base_ids or old == 0:
            return self._whole(base_ids)
        self.base_ids = list(base_ids)
        d = self._decode_tail()
        while self.restarts and self.restarts[-1][0] >= d:  # a restart point must precede the first change
            self.restarts.pop()
        c0, j0 = self.restarts[-1] if self.restarts else (0, 0)
        c1 = restart_point(self.text, c0, self._avoid)
        parts = [self.text[c0:c1], self.text[c1:]] if c1 > 0 else [self.text[c0:]]
        encoded = [self._backend.encode(part, add_special_tokens=False).ids for part in parts]  # not encode_batch:
        # its thread pool costs more than two short pieces
        if c1 > 0:
            self.restarts.append((c1, j0 + len(encoded[0])))
        self.draft_ids = self.draft_ids[:j0] + [t for e in encoded for t in e]
        return self.prefix + self.draft_ids, len(self.prefix) + j0

    def _whole(self, base_ids: list[int]) -> tuple[list[int], int]:
        """A full re-spelling (align.respell); the incremental state starts from it."""
        self.reset()
        self.base_ids = list(base_ids)
        self.skip, self.text, ids = respell(self.base_ids, self.base_tokenizer, self.draft_tokenizer, self.prefix)
        self.draft_ids = ids[len(self.prefix):]
        self.settled = self.skip
        if self.incremental:
            self.settled_text = decode(self.base_tokenizer, self.base_ids[self.skip:self._split()])
            self.settled = self._split()
            c = restart_point(self.text, 0, self._avoid)
            if c > 0:
                self.restarts = [(c, len(self.draft_tokenizer.encode(self.text[:c], add_special_tokens=False)))]
        return ids, 0

    def _split(self) -> int:
        """The last base index b in (settled, len(base_ids)) decoding splits at, or `settled`."""
        ids, tok = self.base_ids, self.base_tokenizer
        for b in range(len(ids) - 1, self.settled, -1):
            if splits_at(self.rule, tok.convert_ids_to_tokens(ids[b - 1]), tok.convert_ids_to_tokens(ids[b])):  # type: ignore[arg-type]
                return b
        return self.settled

    def _decode_tail(self) -> int:
        """Decode the base ids after the settled ones, settle what now splits; -> the first changed text offset."""
        s, b = self.settled, self._split()
        seqs = [self.base_ids[s:], self.base_ids[s:b]] if b > s else [self.base_ids[s:]]
        texts = [decode(self.base_tokenizer, seq) for seq in seqs]
        old_tail = self.text[len(self.settled_text):]
        d = len(self.settled_text) + common_prefix(old_tail, texts[0])
        self.text = self.settled_text + texts[0]
        if b > s:
            self.settled, self.settled_text = b, self.settled_text + texts[1]
        return d
