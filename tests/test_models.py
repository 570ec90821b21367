"""Tests for the model layer: frozen base wrapper, vocabulary/width adapters, drafts, draft folders, init_from + LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import DRAFT_KINDS, draft_modeling
from safetensors.torch import load_file
from torch import nn

from specforge_het.algorithms.build import build_draft
from specforge_het.algorithms.eagle_v2.model import EagleV2Draft
from specforge_het.algorithms.eagle_v3.model import EagleV3Draft
from specforge_het.algorithms.io import load_draft, save_draft
from specforge_het.config import ConfigError
from specforge_het.models.adapters import (
    VocabAdapter,
    coverage,
    foreign_vocab_map,
    reduced_vocab,
    token_strings,
)
from specforge_het.models.base import BaseModel
from specforge_het.models.parts import FusedFirstLayer
from specforge_het.testing import save_tiny_base

FAMILIES = ("llama", "qwen3", "gemma3")
T, F = True, False


def _ids(n: int, start: int = 5) -> torch.Tensor:
    """n ordinary (non-special) base token ids, [1, n]."""
    return (torch.arange(n) * 7 % 290 + start)[None]


def _draft_logits(draft, base, ids: torch.Tensor) -> torch.Tensor:
    """Draft logits for a whole sequence: base features -> draft input -> draft layers -> logits."""
    with torch.no_grad():
        feats = base.features(ids, tuple(draft.cfg.feature_layers)).features
        hidden_in = draft.input_from_base(ids, feats)
        pos = torch.arange(ids.shape[1])[None]
        return draft.logits(draft(ids, hidden_in, pos))


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
    ids = _ids(20)
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
    ids = _ids(6)
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
    ids = _ids(7)
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
    ids = _ids(8)
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
    prompt = _ids(prompt_len)
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
    prompt = _ids(6)
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


# ================================================================ DraftModel shapes


@pytest.fixture(scope="module")
def drafts(llama_base, tok_b_dir):
    """Every family x draft kind on the tiny llama base, width 48."""
    return {
        (fam, kind): build_draft(draft_modeling(family=fam, hidden=48, tok_dir=tok_b_dir, **spec), llama_base).eval()
        for fam in FAMILIES
        for kind, spec in DRAFT_KINDS.items()
    }


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", list(DRAFT_KINDS))
def test_draft_shapes(drafts, llama_base, family, kind) -> None:
    draft = drafts[(family, kind)]
    cfg = draft.cfg
    assert (cfg.family, cfg.hidden_size, cfg.algorithm) == (family, 48, DRAFT_KINDS[kind]["algorithm"])
    assert draft.base is llama_base
    ids = _ids(6)
    logits = _draft_logits(draft, llama_base, ids)
    if kind == "eagle_v2":
        assert type(draft) is EagleV2Draft
        assert cfg.feature_layers == [-1]
        assert (draft.fc.in_features, draft.fc.out_features) == (64 + 64, 48)
        assert draft.fc.bias is not None
        assert draft.lm_head is None and draft.vocab is None
        assert cfg.draft_vocab_size == 0
        assert logits.shape == (1, 6, 300)
        assert isinstance(draft.to_base, nn.Linear)
        assert (draft.to_base.in_features, draft.to_base.out_features) == (48, 64)
        assert draft.embed_tokens is None and draft.embed_proj is None
    else:
        assert cfg.feature_layers == [1, 2]  # EAGLE-3 default for a 4-layer base
        assert (draft.fc.in_features, draft.fc.out_features) == (len(cfg.feature_layers) * 64, 48)
        assert draft.fc.bias is None
        assert type(draft) is EagleV3Draft and not hasattr(draft, "to_base")
        assert isinstance(draft.layers[0], FusedFirstLayer)
        assert not any(isinstance(layer, FusedFirstLayer) for layer in draft.layers[1:])
        q = draft.layers[0].self_attn.q_proj
        assert q.in_features == 96
        expected_vocab = 120 if kind == "eagle_v3_reduced" else 128
        assert cfg.draft_vocab_size == expected_vocab == draft.vocab.draft_vocab_size
        assert logits.shape == (1, 6, expected_vocab)
        assert (draft.lm_head.in_features, draft.lm_head.out_features) == (48, expected_vocab)
        if kind == "foreign_v3":
            assert cfg.embed == "foreign"
            assert draft.embed_tokens.weight.shape == (261, 48)
            assert draft.embed_proj is None
            assert draft.vocab.input_map.shape == (300, 8)
        else:
            assert cfg.embed == "base_proj"
            assert (draft.embed_proj.in_features, draft.embed_proj.out_features) == (64, 48)
            assert draft.embed_tokens is None
            assert int(llama_base.tokenizer.eos_token_id) in draft.vocab.d2t.tolist()
    assert torch.isfinite(logits).all()


def test_draft_to_base_only_when_widths_differ(llama_base) -> None:
    same = build_draft(draft_modeling(algorithm="eagle_v2", vocab="base", family="llama", hidden=64), llama_base)
    assert same.to_base is None
    assert same.fc.in_features == 128 and same.fc.out_features == 64
    v3 = build_draft(draft_modeling(algorithm="eagle_v3", vocab="reduced", family="llama", hidden=64), llama_base)
    assert not hasattr(v3, "to_base") and v3.embed_proj is None and v3.cfg.embed == "base"
    assert v3.layers[0].self_attn.q_proj.in_features == 128


def test_draft_sizes_derived_from_width(llama_base) -> None:
    d = build_draft(draft_modeling(family="llama", hidden=128), llama_base)
    assert (d.cfg.num_heads, d.cfg.num_kv_heads, d.cfg.head_dim, d.cfg.intermediate_size) == (2, 2, 64, 384)
    same = build_draft(draft_modeling(family="llama", hidden=0), llama_base)
    assert (same.cfg.hidden_size, same.cfg.num_heads, same.cfg.num_kv_heads, same.cfg.head_dim) == (64, 4, 2, 16)
    assert same.cfg.intermediate_size == 128


def test_draft_needs_attached_base(llama_base) -> None:
    from specforge_het.algorithms.io import build_from_config

    d = build_draft(draft_modeling(family="llama"), llama_base)
    bare = build_from_config(d.cfg, d.vocab)
    with pytest.raises(RuntimeError, match="attach"):
        bare.base  # noqa: B018


# ================================================================ save / load


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", list(DRAFT_KINDS))
def test_save_load_round_trip(drafts, llama_base, tmp_path, family, kind) -> None:
    draft = drafts[(family, kind)]
    folder = save_draft(draft, tmp_path / "d")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "provenance.json"} <= names
    if kind == "foreign_v3":
        assert "tokenizer.json" in names and "tokenizer_config.json" in names
    else:
        assert not any(n.startswith("tokenizer") for n in names)
    prov = json.loads((folder / "provenance.json").read_text())
    assert {"git_sha", "argv", "versions"} <= set(prov)
    assert isinstance(prov["argv"], list) and isinstance(prov["git_sha"], str) and prov["git_sha"]
    assert prov["versions"]["torch"] == torch.__version__.split("+")[0] or prov["versions"]["torch"] == torch.__version__
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["format"] == "specforge_het.draft" and cfg["format_version"] == 1
    assert cfg["base"] == llama_base.describe()
    assert (cfg["family"], cfg["hidden_size"]) == (family, 48)

    state = load_file(str(folder / "model.safetensors"))
    base_emb = llama_base.model.get_input_embeddings().weight
    own = dict(draft.named_parameters())
    for name, t in state.items():
        assert not name.startswith(("_base", "base.", "model.")), name
        if tuple(t.shape) == tuple(base_emb.shape):
            assert name in own, name  # only the draft's own tensors may have the base embedding's shape
        assert not (t.shape == base_emb.shape and torch.equal(t, base_emb)), name
    assert set(state) == set(draft.state_dict())

    loaded = load_draft(folder, llama_base).eval()
    assert loaded.cfg == draft.cfg
    ids = _ids(9)
    assert torch.equal(_draft_logits(loaded, llama_base, ids), _draft_logits(draft, llama_base, ids))
    if kind == "foreign_v3":
        assert loaded.draft_tokenizer.get_vocab() == draft.draft_tokenizer.get_vocab()
        assert torch.equal(loaded.vocab.input_map, draft.vocab.input_map)
        assert torch.equal(loaded.vocab.draft_token_ids, draft.vocab.draft_token_ids)
    if draft.vocab is not None:
        assert torch.equal(loaded.vocab.d2t, draft.vocab.d2t)


@pytest.fixture(scope="module")
def saved_llama_draft(drafts, tmp_path_factory) -> Path:
    return save_draft(drafts[("llama", "eagle_v3_reduced")], tmp_path_factory.mktemp("draft") / "d")


@pytest.fixture(scope="module")
def base32(tmp_path_factory, tok_a) -> BaseModel:
    path = save_tiny_base(tmp_path_factory.mktemp("b32") / "llama32", "llama", tok_a, hidden=32)
    return BaseModel.load(path)


def test_load_onto_mismatched_base(saved_llama_draft, base32) -> None:
    with pytest.raises(ValueError) as e:
        load_draft(saved_llama_draft, base32)
    msg = str(e.value)
    assert "'hidden_size': 64" in msg
    assert "'hidden_size': 32" in msg


def test_attach_mismatched_base(drafts, llama_base, base32) -> None:
    draft = drafts[("qwen3", "eagle_v2")]
    with pytest.raises(ValueError, match="'hidden_size': 32"):
        draft.attach(base32)  # fails before anything changes
    assert draft.base is llama_base


def _copy_folder(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_load_tampered_config(saved_llama_draft, llama_base, tmp_path) -> None:
    folder = _copy_folder(saved_llama_draft, tmp_path / "d")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["bogus_key"] = 1
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="bogus_key"):
        load_draft(folder, llama_base)


def test_load_wrong_format(saved_llama_draft, llama_base, tmp_path) -> None:
    folder = _copy_folder(saved_llama_draft, tmp_path / "d")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["format"] = "something_else"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="something_else"):
        load_draft(folder, llama_base)


def test_load_missing_weights(saved_llama_draft, llama_base, tmp_path) -> None:
    folder = _copy_folder(saved_llama_draft, tmp_path / "d")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_draft(folder, llama_base)


def test_load_missing_config(llama_base, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_draft(tmp_path, llama_base)


def test_load_weights_not_matching_config(saved_llama_draft, llama_base, tmp_path) -> None:
    folder = _copy_folder(saved_llama_draft, tmp_path / "d")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_layers"] = 2
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="missing"):
        load_draft(folder, llama_base)


# ================================================================ init_from + LoRA


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory, tok_b) -> str:
    return save_tiny_base(tmp_path_factory.mktemp("lm") / "llama48", "llama", tok_b, hidden=48, layers=2)


@pytest.fixture(scope="module")
def tiny_lm(tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32)


def _init_modeling(tiny_lm_dir: str, tok_b_dir: str, **kw):
    return draft_modeling(algorithm="eagle_v3", vocab="foreign", family="llama", hidden=48, tok_dir=tok_b_dir,
                          init_from=tiny_lm_dir, init_layers=[1], draft_num_heads=4, draft_num_kv_heads=2,
                          draft_head_dim=12, draft_intermediate_size=96, **kw)


def test_init_from_copies_layers_embeddings_and_head(llama_base, tiny_lm, tiny_lm_dir, tok_b_dir) -> None:
    draft = build_draft(_init_modeling(tiny_lm_dir, tok_b_dir), llama_base)
    src = tiny_lm.model.layers[1]
    dst = draft.layers[0]
    assert draft.cfg.init_from == tiny_lm_dir
    for name in ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "self_attn.o_proj.weight",
                 "post_attention_layernorm.weight"):
        assert torch.equal(dst.get_parameter(name), src.get_parameter(name)), name
    for proj in ("q_proj", "k_proj", "v_proj"):
        w_dst = getattr(dst.self_attn, proj).weight
        w_src = getattr(src.self_attn, proj).weight
        assert w_dst.shape == (w_src.shape[0], 96)
        assert torch.equal(w_dst[:, 48:], w_src), proj  # hidden half
        assert torch.count_nonzero(w_dst[:, :48]) == 0, proj  # embedding half
    assert torch.equal(dst.input_layernorm.hidden_norm.weight, src.input_layernorm.weight)
    assert torch.equal(dst.input_layernorm.embed_norm.weight, src.input_layernorm.weight)
    assert torch.equal(draft.norm.weight, tiny_lm.model.norm.weight)
    assert torch.equal(draft.embed_tokens.weight, tiny_lm.get_input_embeddings().weight)
    rows = draft.vocab.draft_token_ids
    assert torch.equal(draft.lm_head.weight, tiny_lm.get_output_embeddings().weight[rows])
    # layer 0 of the source is not what was copied
    assert not torch.equal(dst.mlp.down_proj.weight, tiny_lm.model.layers[0].mlp.down_proj.weight)


def test_init_from_lora(llama_base, tiny_lm, tiny_lm_dir, tok_b_dir, tmp_path) -> None:
    draft = build_draft(_init_modeling(tiny_lm_dir, tok_b_dir, lora_rank=4), llama_base).eval()
    params = dict(draft.named_parameters())
    assert any("lora_A" in n for n in params) and any("lora_B" in n for n in params)
    for name, p in params.items():
        if name.startswith("layers."):
            expected = "lora_" in name or "norm" in name
        else:
            expected = True  # fc, embed_tokens, final norm, lm_head
        assert p.requires_grad == expected, name
    assert params["layers.0.mlp.down_proj.base_layer.weight"].requires_grad is False

    ids = _ids(8)
    before = _draft_logits(draft, llama_base, ids)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in params.items():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    lora_logits = _draft_logits(draft, llama_base, ids)
    assert not torch.allclose(before, lora_logits, atol=1e-4)

    sd = draft.trainable_state_dict()
    assert not any("lora_" in k or "base_layer" in k for k in sd)
    q = draft.layers[0].self_attn.q_proj
    scale = q.scaling["default"]
    assert scale == 2.0  # lora_alpha = 2 * rank
    delta = q.lora_B["default"].weight @ q.lora_A["default"].weight * scale
    torch.testing.assert_close(sd["layers.0.self_attn.q_proj.weight"], q.base_layer.weight + delta, atol=1e-6, rtol=0)
    assert not torch.allclose(sd["layers.0.self_attn.q_proj.weight"], q.base_layer.weight)
    assert set(sd) == set(build_draft(_init_modeling(tiny_lm_dir, tok_b_dir), llama_base).state_dict())

    folder = save_draft(draft, tmp_path / "lora_draft")
    state = load_file(str(folder / "model.safetensors"))
    assert not any("lora_" in k or "base_layer" in k for k in state)
    loaded = load_draft(folder, llama_base).eval()
    torch.testing.assert_close(_draft_logits(loaded, llama_base, ids), lora_logits, atol=1e-5, rtol=0)


def test_init_from_family_mismatch(llama_base, tiny_lm_dir, tok_b_dir) -> None:
    m = _init_modeling(tiny_lm_dir, tok_b_dir)
    m.draft_family = "qwen3"
    with pytest.raises(ConfigError) as e:
        build_draft(m, llama_base)
    assert "llama" in str(e.value) and "qwen3" in str(e.value)


def test_init_from_width_mismatch(llama_base, tiny_lm_dir, tok_b_dir) -> None:
    m = _init_modeling(tiny_lm_dir, tok_b_dir)
    m.draft_hidden_size, m.draft_head_dim = 64, 16
    with pytest.raises(ConfigError) as e:
        build_draft(m, llama_base)
    assert "width 48" in str(e.value) and "width 64" in str(e.value)


def test_init_layers_out_of_range(llama_base, tiny_lm_dir, tok_b_dir) -> None:
    m = _init_modeling(tiny_lm_dir, tok_b_dir)
    m.init_layers = [2]
    with pytest.raises(ConfigError, match="init_layers"):
        build_draft(m, llama_base)


# ================================================================ build_draft errors


def test_build_foreign_without_tokenizer(llama_base) -> None:
    with pytest.raises(ConfigError, match="draft_tokenizer"):
        build_draft(draft_modeling(vocab="foreign", tok_dir=""), llama_base)


def test_build_lora_without_init_from(llama_base) -> None:
    with pytest.raises(ConfigError, match="init_from"):
        build_draft(draft_modeling(lora_rank=4), llama_base)


@pytest.mark.parametrize("layers", [[1, 5], [-2], [1, 2, 99]])
def test_build_feature_layers_out_of_range(llama_base, layers) -> None:
    with pytest.raises(ConfigError) as e:
        build_draft(draft_modeling(feature_layers=layers), llama_base)
    msg = str(e.value)
    assert "modeling.feature_layers" in msg
    assert "4 layers" in msg
    bad = [i for i in layers if i not in (1, 2)]
    assert str(bad) in msg


def test_build_bad_head_split(llama_base) -> None:
    with pytest.raises(ConfigError, match="draft_num_kv_heads"):
        build_draft(draft_modeling(draft_num_heads=4, draft_num_kv_heads=3), llama_base)


def test_init_from_same_vocabulary_copies_head_rows(llama_base, base_dirs):
    """A reduced-vocabulary draft initialised from an LM with the base's vocabulary takes its head rows at d2t."""
    from specforge_het.algorithms.build import build_draft

    m = draft_modeling(algorithm="eagle_v3", vocab="reduced", family="llama", hidden=64, draft_vocab_size=50,
                       init_from=base_dirs["llama"], init_layers=[3])
    draft = build_draft(m, llama_base)
    head = llama_base.model.get_output_embeddings().weight
    assert torch.equal(draft.lm_head.weight, head[draft.vocab.d2t])
    assert torch.equal(draft.layers[0].mlp.down_proj.weight, llama_base.layers[3].mlp.down_proj.weight)
