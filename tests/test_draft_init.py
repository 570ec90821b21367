"""Tests for drafts built from pretrained layers: init_from (layers, embeddings, head), LoRA, and build refusals."""

from __future__ import annotations

import pytest
import torch
from conftest import draft_logits, draft_modeling, ordinary_ids
from safetensors.torch import load_file

from specforge_het.algorithms.build import build_draft
from specforge_het.algorithms.io import load_draft, save_draft
from specforge_het.config import ConfigError
from specforge_het.testing import save_tiny_base

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

    ids = ordinary_ids(8)
    before = draft_logits(draft, llama_base, ids)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in params.items():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    lora_logits = draft_logits(draft, llama_base, ids)
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
    torch.testing.assert_close(draft_logits(loaded, llama_base, ids), lora_logits, atol=1e-5, rtol=0)


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
