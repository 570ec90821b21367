"""Tests for drafts: shapes of every family x kind, draft folders (save / load round trip) and their refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import DRAFT_KINDS, draft_logits, draft_modeling, ordinary_ids
from safetensors.torch import load_file
from torch import nn

from specforge_het.algorithms.build import build_draft
from specforge_het.algorithms.eagle_v2.model import EagleV2Draft
from specforge_het.algorithms.eagle_v3.model import EagleV3Draft
from specforge_het.algorithms.io import load_draft, save_draft
from specforge_het.models.base import BaseModel
from specforge_het.models.parts import FusedFirstLayer
from specforge_het.testing import save_tiny_base

FAMILIES = ("llama", "qwen3", "gemma3")


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
    ids = ordinary_ids(6)
    logits = draft_logits(draft, llama_base, ids)
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
    ids = ordinary_ids(9)
    assert torch.equal(draft_logits(loaded, llama_base, ids), draft_logits(draft, llama_base, ids))
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
