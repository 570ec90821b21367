"""Incremental re-spelling (algorithms/standalone/respell.py): at every commit, the tail re-spelling equals a full
re-spelling (align.respell) token for token, on text where tokens merge across the re-spelled boundary, characters
split over base tokens, whitespace runs re-segment and special tokens sit next to words; and the work per commit
is the tail, not the whole text."""

from __future__ import annotations

import random

import pytest
from test_standalone import foreign_tokenizer, odd_split

from specforge_het.algorithms.standalone.align import draft_prefix, respell
from specforge_het.algorithms.standalone.respell import (
    Speller,
    common_prefix,
    decode_rule,
    encode_restarts,
    restart_point,
    splits_at,
    starts_mid_character,
)
from specforge_het.testing import CORPUS_A, SPECIALS

TEXTS = {
    "plain": "The lazy dog sleeps while the quick fox runs, and the draft tree is verified in one pass.",
    "multibyte": "café crème, naïve façade — 中文 tokens ✓ and 🦊 emoji 🦊🦊 über straße.",
    "whitespace": "a  b   c\n\n  d\t e    \n    return x  *  2\n\n\n   end   ",
    "specials": "<|user|>hello there<|end|> <|assistant|> it's   fine<|end|>\n<|end|>don't we'll 123 4567",
    "no_spaces": "supercalifragilisticexpialidocious,verylongtokenrunwithoutanyspace.and.dots...!!!",
    "cjk": "中文的句子，没有空格。再来一句：好！日本語のテキスト、カタカナ。한국어문장",
    "code": "def f(x):return x*2;y=f(3)+g(a,b)[0].c<|end|>d(e)'s_t|u>v<|user|>w",
}


def byte_fallback_tokenizer():
    """A SentencePiece-style tokenizer as Gemma's: spaces as '▁', BPE with byte fallback (<0xE2> tokens for
    characters outside its vocabulary), decoded by Replace, ByteFallback, Fuse."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("▁"), behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS + byte_tokens, show_progress=False)
    tok.train_from_iterator(CORPUS_A * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", pad_token="<pad>")  # noqa: S106


@pytest.fixture(scope="module")
def tok_c():
    return foreign_tokenizer()


@pytest.fixture(scope="module")
def tok_g():
    return byte_fallback_tokenizer()


def commits(base_ids: list[int], seed: int) -> list[list[int]]:
    """The committed base ids after each step: a prompt, then 1-6 tokens at a time (accepted paths)."""
    rng, n, out = random.Random(seed), min(3, len(base_ids)), []
    while n <= len(base_ids):
        out.append(base_ids[:n])
        n += rng.randint(1, 6)
    return out + [base_ids] if out[-1] != base_ids else out


def check_speller(base_tok, draft_tok, base_ids: list[int], seed: int = 0) -> list[int]:
    """Spell every commit incrementally; each equals the full re-spelling. -> characters per encode call."""
    prefix = draft_prefix(draft_tok)
    speller, before, encoded = Speller(base_tok, draft_tok, prefix), [], []
    calls = speller._backend.encode
    speller._backend = type("Counting", (), {"encode": lambda _, text, **kw: (
        encoded.append(len(text)), calls(text, **kw))[1]})()
    for ids in commits(base_ids, seed):
        got, same = speller.spell(ids)
        assert got == respell(ids, base_tok, draft_tok, prefix)[2], ids
        assert got[:same] == before[:same]  # what it says is unchanged is
        before = got
    return encoded


@pytest.mark.parametrize("text", list(TEXTS))
@pytest.mark.parametrize("base", ["byte_level", "byte_fallback"])
def test_incremental_respelling_equals_full(tok_a, tok_c, tok_g, base, text):
    base_tok = tok_a if base == "byte_level" else tok_g
    assert Speller(base_tok, tok_c, []).incremental and decode_rule(base_tok) == base
    for seed, split in enumerate((odd_split, lambda t, s: t.encode(s, add_special_tokens=False))):
        ids = split(base_tok, TEXTS[text] * 3)
        check_speller(base_tok, tok_c, ids, seed)
        check_speller(base_tok, tok_c, [base_tok.bos_token_id or 0] + ids, seed)  # a leading BOS
    if base == "byte_fallback" and text == "multibyte":  # characters outside the vocabulary: byte tokens
        assert any(t.startswith("<0x") for t in base_tok.convert_ids_to_tokens(ids))


@pytest.mark.parametrize("texts", [("plain", "multibyte", "specials"), ("cjk", "code")])
def test_the_work_per_commit_is_the_tail(tok_a, tok_c, texts):
    text = " ".join(TEXTS[k] for k in texts) * 4
    encoded = check_speller(tok_a, tok_c, odd_split(tok_a, text))
    assert len(encoded) > 50 and max(encoded) < 60 < len(text) / 4  # a word or two, not the whole text


def test_restarts_follow_the_module_rules(tok_a, tok_c, tok_g):
    assert restart_point("ab  cd ef", 0) == 6 and restart_point("ab  cd ef", 6) == -1
    assert restart_point("ab  cd", 0) == 2 and restart_point(" x", 0) == -1  # a space after a space is none
    assert restart_point("f(1)", 0) == 1 and restart_point("中文，好", 0) == 2 and restart_point("a1.", 0) == -1
    assert restart_point("x<y", 0) == 1 and restart_point("x<y", 0, frozenset("<")) == -1  # an added token's
    assert starts_mid_character("©") and not starts_mid_character("Ġthe") and not starts_mid_character("中")
    assert starts_mid_character("Ģ") and not starts_mid_character("Ġ")  # GPT-2's stand-ins for 0x80 and 0x20
    assert not splits_at("byte_fallback", "<0xE4>", "<0xB8>") and splits_at("byte_fallback", "▁a", "<0xB8>")
    assert encode_restarts(tok_c) and not encode_restarts(tok_g)  # a normaliser: re-spelled whole
    assert common_prefix("abcd", "abxd") == 2 and common_prefix([1, 2], [1, 2, 3], 1) == 2


def test_tokenizers_without_the_rules_are_respelled_whole(tok_a, tok_g):
    speller = Speller(tok_a, tok_g, draft_prefix(tok_g))  # the draft's encoding does not restart: whole
    assert not speller.incremental
    ids = odd_split(tok_a, TEXTS["multibyte"] + TEXTS["plain"])
    for part in commits(ids, 1):
        assert speller.spell(part)[0] == respell(part, tok_a, tok_g, draft_prefix(tok_g))[2]


def test_an_id_without_a_token_string_does_not_break_the_speller(tok_c, tok_g):
    """A base head row past the tokenizer's vocabulary has no token string: never a split point there,
    and the incremental spelling still equals the full one."""
    oov = len(tok_g)
    assert tok_g.convert_ids_to_tokens(oov) is None
    ids = tok_g.encode("Hello there, world.", add_special_tokens=False)
    speller = Speller(tok_g, tok_c, draft_prefix(tok_c))
    for upto in (ids, ids + [oov], ids + [oov] + ids[:2]):
        assert speller.spell(upto)[0] == respell(upto, tok_g, tok_c, draft_prefix(tok_c))[2]
