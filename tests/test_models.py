"""Tests for the model layer: the frozen base wrapper (features, logits, cache, masks) and the vocabulary adapters."""

from __future__ import annotations

import pytest
import torch
from conftest import ordinary_ids
from torch import nn

from specforge_het.models.adapters import (
    VocabAdapter,
    coverage,
    foreign_vocab_map,
    reduced_vocab,
    token_strings,
)

FAMILIES = ("llama", "qwen3", "gemma3")
T, F = True, False


# ================================================================ BaseModel


@pytest.mark.parametrize("family", FAMILIES)
def test_base_describe(bases, base_dirs, family) -> None:
    base = bases[family]
    model_type = {"llama": "llama", "qwen3": "qwen3", "gemma3": "gemma3_text"}[family]
    assert base.describe() == {
        "name": base_dirs[family], "model_type": model_type, "hidden_size": 64, "vocab_size": 300, "num_layers": 4,
    }
    assert base.dtype == torch.float32
    assert base.device == torch.device("cpu")
    assert not any(p.requires_grad for p in base.parameters())
    assert base.sliding_window == (16 if family == "gemma3" else None)


@pytest.mark.parametrize("family", FAMILIES)
def test_base_features_match_hf_hidden_states(bases, family) -> None:
    base = bases[family]
    ids = ordinary_ids(20)
    with torch.no_grad():
        out = base(ids, base.new_cache(), feature_layers=(0, 2, -1))
        ref = base.model(input_ids=ids, output_hidden_states=True)
    assert out.features.shape == (1, 20, 3 * 64)
    assert out.hidden.shape == (1, 20, 64)
    assert out.logits.shape == (1, 20, 300)
    assert torch.equal(out.features[..., 128:], out.hidden)
    torch.testing.assert_close(out.features[..., :64], ref.hidden_states[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.features[..., 64:128], ref.hidden_states[2], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.hidden, ref.hidden_states[-1], atol=1e-5, rtol=0)  # HF's last entry is normed
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=0)
    # the no-cache path agrees
    with torch.no_grad():
        whole = base.features(ids, (0, 2, -1))
    torch.testing.assert_close(whole.features, out.features, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_base_feature_order_follows_request(bases, family) -> None:
    base = bases[family]
    ids = ordinary_ids(6)
    with torch.no_grad():
        a = base(ids, base.new_cache(), feature_layers=(3, 1)).features
        b = base(ids, base.new_cache(), feature_layers=(1, 3)).features
        none = base(ids, base.new_cache(), logits="none")
    assert torch.equal(a[..., :64], b[..., 64:])
    assert torch.equal(a[..., 64:], b[..., :64])
    assert none.features is None and none.logits is None


@pytest.mark.parametrize("family", FAMILIES)
def test_base_logits_last(bases, family) -> None:
    base = bases[family]
    ids = ordinary_ids(7)
    with torch.no_grad():
        last = base(ids, base.new_cache(), logits="last")
        full = base(ids, base.new_cache(), logits="all")
    assert last.logits.shape == (1, 1, 300)
    assert last.hidden.shape == (1, 7, 64)
    assert last.features is None
    torch.testing.assert_close(last.logits[0, 0], full.logits[0, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_base_incremental_forward_matches_full(bases, family) -> None:
    base = bases[family]
    ids = ordinary_ids(8)
    with torch.no_grad():
        full = base(ids, base.new_cache(), logits="last").logits
        cache = base.new_cache()
        base(ids[:, :5], cache, logits="none")
        assert cache.get_seq_length() == 5
        step = base(ids[:, 5:], cache, logits="last").logits
    assert cache.get_seq_length() == 8
    torch.testing.assert_close(step, full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompt_len", [5, 18])  # 18 > gemma3's sliding window 16
def test_cache_keep_after_tree_verify(bases, family, prompt_len) -> None:
    base = bases[family]
    prompt = ordinary_ids(prompt_len)
    branch = torch.tensor([[40, 41, 42]])  # 41 and 42 are both children of 40
    tree = torch.tensor([[T, F, F], [T, T, F], [T, F, T]])
    positions = torch.tensor([prompt_len, prompt_len + 1, prompt_len + 1])
    nxt = torch.tensor([[43]])
    kept = torch.cat([prompt, branch[:, [0, 2]]], dim=1)
    with torch.no_grad():
        cache = base.new_cache()
        base(prompt, cache, logits="none")
        verify = base(branch, cache, positions=positions, tree_mask=tree, logits="all").logits
        assert cache.get_seq_length() == prompt_len + 3
        cache.keep(prompt_len, torch.tensor([0, 2]))
        assert cache.get_seq_length() == prompt_len + 2
        after = base(nxt, cache, logits="last").logits
        ref_kept = base.model(input_ids=kept).logits
        ref_next = base.model(input_ids=torch.cat([kept, nxt], dim=1)).logits
        ref_left = base.model(input_ids=torch.cat([prompt, branch[:, :2]], dim=1)).logits
    torch.testing.assert_close(verify[0, 2], ref_kept[0, -1], atol=1e-4, rtol=0)
    torch.testing.assert_close(verify[0, 1], ref_left[0, -1], atol=1e-4, rtol=0)
    torch.testing.assert_close(after[0, -1], ref_next[0, -1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_keep_contiguous_prefix(bases, family) -> None:
    base = bases[family]
    prompt = ordinary_ids(6)
    branch = torch.tensor([[50, 51, 52]])
    with torch.no_grad():
        cache = base.new_cache()
        base(prompt, cache, logits="none")
        base(branch, cache, logits="none")
        cache.keep(6, torch.tensor([0, 1]))
        assert cache.get_seq_length() == 8
        after = base(torch.tensor([[53]]), cache, logits="last").logits
        ref = base.model(input_ids=torch.cat([prompt, branch[:, :2], torch.tensor([[53]])], dim=1)).logits
        cache.keep(9, torch.tensor([], dtype=torch.long))
        assert cache.get_seq_length() == 9
    torch.testing.assert_close(after[0, -1], ref[0, -1], atol=1e-4, rtol=0)


def test_attention_masks_sliding_window(bases) -> None:
    base = bases["gemma3"]
    neg = torch.finfo(torch.float32).min
    masks = base.attention_masks(torch.tensor([20, 21]), 20, None)
    assert set(masks) == {"full_attention", "sliding_attention"}
    full, sliding = masks["full_attention"], masks["sliding_attention"]
    assert full.shape == sliding.shape == (1, 1, 2, 22)
    full_ok = (full[0, 0] == 0).tolist()
    slide_ok = (sliding[0, 0] == 0).tolist()
    assert full_ok[0] == [T] * 21 + [F]  # causal: query 20 does not see key 21
    assert full_ok[1] == [T] * 22
    assert slide_ok[0] == [F] * 5 + [T] * 16 + [F]  # 20 - k >= 16 blocked: keys 0..4
    assert slide_ok[1] == [F] * 6 + [T] * 16  # keys 0..5 blocked
    assert set(full[0, 0].unique().tolist()) == {0.0, neg}
    assert set(sliding[0, 0].unique().tolist()) == {0.0, neg}


def test_attention_masks_tree_and_no_window(bases) -> None:
    tree = torch.tensor([[T, F, F], [T, T, F], [T, F, T]])
    llama = bases["llama"]
    m = llama.attention_masks(torch.tensor([2, 3, 3]), 2, tree)
    assert isinstance(m, torch.Tensor)
    assert m.shape == (1, 1, 3, 5)
    assert (m[0, 0] == 0).tolist() == [[T, T, T, F, F], [T, T, T, T, F], [T, T, T, F, T]]
    g = bases["gemma3"].attention_masks(torch.tensor([2, 3, 3]), 2, tree)
    assert torch.equal(g["full_attention"], m)
    assert torch.equal(g["sliding_attention"], m)  # short: the window blocks nothing more


# ================================================================ adapters


def test_reduced_vocab_literal() -> None:
    counts = torch.tensor([5, 1, 5, 0, 3, 3])
    assert reduced_vocab(counts, 3).tolist() == [0, 2, 4]  # tie 4 vs 5: lower id
    assert reduced_vocab(counts, 4).tolist() == [0, 2, 4, 5]
    assert reduced_vocab(counts, 3, always=[3]).tolist() == [0, 2, 3]
    assert reduced_vocab(counts, 2, always=[1]).tolist() == [0, 1]
    assert reduced_vocab(counts, 10).tolist() == [0, 1, 2, 3, 4, 5]  # capped at the base vocabulary
    assert reduced_vocab(torch.zeros(5), 3).tolist() == [0, 1, 2]
    assert counts.tolist() == [5, 1, 5, 0, 3, 3]  # input untouched


def test_coverage_literal() -> None:
    assert coverage(torch.tensor([1, 3]), torch.tensor([[1, 2, 3, 3]])) == 0.75
    assert coverage(torch.tensor([1]), torch.tensor([5, 1])) == 0.5  # ids above d2t's max
    assert coverage(torch.tensor([0, 1]), torch.tensor([], dtype=torch.long)) == 0.0
    assert VocabAdapter(torch.tensor([2, 4]), 6).coverage(torch.tensor([2, 2, 4, 0])) == 0.75


def test_token_strings_tok_a(tok_a) -> None:
    strings = token_strings(tok_a)
    assert len(strings) == len(tok_a) == 300
    the = tok_a.convert_tokens_to_ids("Ġthe")
    assert strings[the] == " the"  # leading space kept
    assert strings[tok_a.convert_tokens_to_ids("The")] == "The"
    assert strings[tok_a.convert_tokens_to_ids("a")] == "a"
    for sid in tok_a.all_special_ids:
        assert strings[sid] is None
    assert strings[tok_a.eos_token_id] is None
    # partial UTF-8 bytes decode to nothing usable
    assert strings[tok_a.convert_tokens_to_ids("Ã")] is None
    assert strings.index(" the") == the


def test_foreign_vocab_map_by_string(tok_a, tok_b) -> None:
    sa, sb = token_strings(tok_a), token_strings(tok_b)
    rows, d2t, input_map = foreign_vocab_map(sa, sb, tok_b)
    assert rows.dtype == d2t.dtype == torch.long
    assert rows.shape == d2t.shape
    assert input_map.shape == (300, 8)
    assert input_map.dtype == torch.int32
    row_of = {int(r): i for i, r in enumerate(rows)}
    checked = 0
    for s in ("The", "T", "h", "e", " ", ".", "x", "7", " the", " quick", " dog"):
        if s in sa and s in sb:
            draft_id, base_id = sb.index(s), sa.index(s)
            assert int(d2t[row_of[draft_id]]) == base_id, s
            checked += 1
    assert checked >= 5
    # every mapped pair has the same string on both sides
    for r, b in zip(rows.tolist(), d2t.tolist()):
        assert sb[r] is not None and sb[r] == sa[b]
    # and every draft token whose string is a base token is mapped
    assert len(rows) == sum(1 for s in sb if s is not None and s in sa)


def test_foreign_input_map_pieces(tok_a, tok_b) -> None:
    sa, sb = token_strings(tok_a), token_strings(tok_b)
    _, _, input_map = foreign_vocab_map(sa, sb, tok_b)
    # a base token whose string is one draft token: exactly that id, then -1s
    t_base = sa.index("T")
    assert input_map[t_base].tolist() == [sb.index("T")] + [-1] * 7
    # a base token absent from the draft vocabulary: spelled by draft pieces
    the = tok_a.convert_tokens_to_ids("Ġthe")
    assert " the" not in sb
    pieces = [p for p in input_map[the].tolist() if p >= 0]
    assert len(pieces) >= 2
    assert input_map[the].tolist() == pieces + [-1] * (8 - len(pieces))  # -1 only at the end
    assert "".join(sb[p] for p in pieces) == " the"
    assert tok_b.decode(pieces) == " the"
    # special tokens map to nothing
    for sid in tok_a.all_special_ids:
        assert input_map[sid].tolist() == [-1] * 8
    # every spelled base token decodes back to its string
    for b, s in enumerate(sa):
        ids = [p for p in input_map[b].tolist() if p >= 0]
        if s is not None and len(ids) < 8:
            assert tok_b.decode(ids) == s, (b, s)


def test_vocab_adapter_literal() -> None:
    v = VocabAdapter(torch.tensor([2, 5, 7]), 8)
    assert v.draft_vocab_size == 3
    assert v.t2d().tolist() == [F, F, T, F, F, T, F, T]
    assert v.to_base(torch.tensor([2, 0, 1])).tolist() == [7, 2, 5]
    assert v.base_to_draft_rows().tolist() == [-1, -1, 0, -1, -1, 1, -1, 2]
    assert v.input_map is None and v.draft_token_ids is None
    assert set(dict(v.named_buffers())) == {"d2t"}


def test_vocab_adapter_embed_foreign_literal() -> None:
    emb = nn.Embedding(4, 2)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0], [-1.0, 0.0]]))
    input_map = torch.tensor([[-1, -1, -1], [0, -1, -1], [1, 2, -1], [0, 2, 3]], dtype=torch.int32)
    v = VocabAdapter(torch.tensor([1, 2]), 4, input_map, draft_token_ids=torch.tensor([0, 2]))
    out = v.embed_foreign(torch.tensor([[0, 1, 2, 3]]), emb)
    assert out.shape == (1, 4, 2)
    expected = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [4.0, 6.5], [5.0 / 3, 11.0 / 3]]])
    torch.testing.assert_close(out, expected)
    assert set(dict(v.named_buffers())) == {"d2t", "input_map", "draft_token_ids"}
