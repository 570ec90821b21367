"""Foreign vocabulary map on a byte-fallback tokenizer (Gemma, Llama-2, Mistral): the byte tokens
(<0x2E> ...) decode to the same text as real tokens and must not take their place."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from specforge_het.models.adapters import foreign_vocab_map, token_strings


def _tokenizer(vocab: dict[str, int], merges, byte_fallback: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=byte_fallback, unk_token="<unk>"))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def test_byte_fallback_tokens_do_not_shadow_real_tokens():
    # base: byte tokens for "." and "a" come first (low ids), as in Gemma's vocabulary
    base = _tokenizer({"<unk>": 0, "<0x2E>": 1, "<0x61>": 2, "a": 3, ".": 4, "b": 5, "ab": 6}, [("a", "b")], True)
    draft = _tokenizer({"<unk>": 0, "b": 1, ".": 2, "a": 3}, [], False)
    assert base.decode([1]) == base.decode([4]) == "."  # the trap: two ids, one text
    assert token_strings(base) == [None, None, None, "a", ".", "b", "ab"]
    rows, d2t, input_map = foreign_vocab_map(token_strings(base), token_strings(draft), draft)
    by_string = {draft.decode([int(r)]): int(b) for r, b in zip(rows, d2t)}
    assert by_string == {"b": 5, ".": 4, "a": 3}  # the ids the base tokenizer actually produces
    assert base.encode("a.") == [3, 4]
    assert input_map[6].tolist()[:2] == [3, 1]  # "ab" is spelled by the draft's "a" "b"
    assert input_map[1].tolist() == [-1] * input_map.shape[1]  # a byte token has no string of its own
