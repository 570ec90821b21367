"""The exported tensors computed the way the engines compute them (written from SGLang's
llama_eagle3.py / llama_eagle.py and EAGLE's cnets.py), without our DraftModel: they must give our
draft's logits. Round trips alone cannot catch a consistently swapped pair of tensors; this can."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from specforge_het.algorithms.build import build_draft
from specforge_het.config import ModelingConfig
from specforge_het.export import to_state_dict

IDS = torch.tensor([[5, 17, 33, 120, 7, 250, 42, 9]])


def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def inv_freq(c, d):
    """Rotary frequencies from config.json: rope_theta, and rope_scaling of type llama3 (Llama 3.1's published
    rule: wavelengths above original_max / low_freq_factor slowed by `factor`, below original_max /
    high_freq_factor kept, a linear blend between)."""
    inv = 1.0 / c["rope_theta"] ** (torch.arange(0, d, 2).float() / d)
    s = c.get("rope_scaling")
    if not s:
        return inv
    assert s["rope_type"] == "llama3", s
    old, factor, low, high = s["original_max_position_embeddings"], s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    wavelen = 2 * torch.pi / inv
    blend = (old / wavelen - low) / (high - low)
    mid = (1 - blend) * inv / factor + blend * inv
    return torch.where(wavelen > old / low, inv / factor, torch.where(wavelen < old / high, inv, mid))


def rope(x, c):  # x [H, S, D], positions 0..S-1, rotate-half convention
    d, s = x.shape[-1], x.shape[-2]
    inv = inv_freq(c, d)
    ang = torch.arange(s).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    half = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + half * sin


def attention(x, t, p, c):  # x [S, in], causal GQA attention of one sequence
    s, heads, kv, hd = x.shape[0], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    q = (x @ t[p + "self_attn.q_proj.weight"].T).view(s, heads, hd).transpose(0, 1)
    k = (x @ t[p + "self_attn.k_proj.weight"].T).view(s, kv, hd).transpose(0, 1)
    v = (x @ t[p + "self_attn.v_proj.weight"].T).view(s, kv, hd).transpose(0, 1)
    q, k = rope(q, c), rope(k, c)
    k, v = k.repeat_interleave(heads // kv, 0), v.repeat_interleave(heads // kv, 0)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return o.transpose(0, 1).reshape(s, heads * hd) @ t[p + "self_attn.o_proj.weight"].T


def mlp_block(h, t, p, c):
    x = rms(h, t[p + "post_attention_layernorm.weight"], c["rms_norm_eps"])
    g, u = x @ t[p + "mlp.gate_proj.weight"].T, x @ t[p + "mlp.up_proj.weight"].T
    return h + (F.silu(g) * u) @ t[p + "mlp.down_proj.weight"].T


def sglang_eagle3_logits(c, t, embed_table, features, ids):
    """LlamaForCausalLMEagle3: fc(features) is the residual; layer 0 attends over
    cat(input_layernorm(embeds), hidden_norm(hidden)); final norm; lm_head rows -> base ids via d2t offsets."""
    eps, p = c["rms_norm_eps"], "midlayer."
    emb = t.get("embed_tokens.weight", embed_table)[ids]
    hidden = features @ t["fc.weight"].T
    x = torch.cat([rms(emb, t[p + "input_layernorm.weight"], eps), rms(hidden, t[p + "hidden_norm.weight"], eps)], -1)
    h = mlp_block(hidden + attention(x, t, p, c), t, p, c)
    draft_logits = rms(h, t["norm.weight"], eps) @ t["lm_head.weight"].T
    base_ids = torch.arange(t["d2t"].shape[0]) + t["d2t"]
    return draft_logits, base_ids


def sglang_eagle_hidden(c, t, embed_table, feature, ids):
    """LlamaForCausalLMEagle / EAGLE cnets.Model: fc(cat(embeds, feature)); layer 0 without input norm."""
    h = torch.cat([embed_table[ids], feature], -1) @ t["fc.weight"].T + t["fc.bias"]
    for i in range(c["num_hidden_layers"]):
        p = f"layers.{i}."
        x = h if i == 0 else rms(h, t[p + "input_layernorm.weight"], c["rms_norm_eps"])
        h = mlp_block(h + attention(x, t, p, c), t, p, c)
    return h


def _ours(draft, base):
    feats = base.features(IDS, tuple(draft.cfg.feature_layers)).features
    with torch.no_grad():
        hidden = draft(IDS, draft.input_from_base(IDS, feats), torch.arange(IDS.shape[1])[None])
        return feats[0], hidden[0], draft.logits(hidden)[0]


def _randomise_norms(draft):
    with torch.no_grad():  # norms start at ones: make them distinct so a swapped pair shows
        for name, p in draft.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)


def test_eagle3_tensors_compute_our_logits_the_sglang_way(llama_base, tok_b_dir):
    for spec in (dict(vocab="reduced", draft_hidden_size=48), dict(vocab="foreign", draft_tokenizer=tok_b_dir, draft_hidden_size=48)):
        draft = build_draft(ModelingConfig(algorithm="eagle_v3", draft_family="llama", draft_vocab_size=120,
                                           feature_layers=[1, 2, 3], draft_num_heads=4, draft_num_kv_heads=2,
                                           draft_rope_theta=5000.0, **spec), llama_base, seed=1).eval()
        _randomise_norms(draft)
        config, t = to_state_dict(draft, "sglang-eagle3")
        feats, _, ours = _ours(draft, llama_base)
        raw = llama_base.model.get_input_embeddings().weight.detach()
        theirs, base_ids = sglang_eagle3_logits(config, t, raw, feats, IDS[0])
        assert torch.allclose(theirs, ours, atol=1e-5), (theirs - ours).abs().max()
        assert torch.equal(base_ids, draft.vocab.d2t)


def test_inherited_llama3_rope_is_written_as_the_engines_build_it(tmp_path, tok_a):
    """A base with llama3 rope scaling: the draft inherits it, and config.json's rope_scaling makes the
    engine math give our logits (plain rope of the same theta would not)."""
    from specforge_het.models.base import BaseModel
    from specforge_het.testing import save_tiny_base

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
    base = BaseModel.load(save_tiny_base(tmp_path / "llama3", "llama", tok_a, max_position_embeddings=131072,
                                         rope_scaling=dict(scaling)))  # (HF adds rope_theta to the dict it gets)
    draft = build_draft(ModelingConfig(algorithm="eagle_v3", draft_family="llama", draft_vocab_size=120,
                                       feature_layers=[1, 2, 3], draft_hidden_size=48), base, seed=5).eval()
    _randomise_norms(draft)
    config, t = to_state_dict(draft, "sglang-eagle3")
    assert config["rope_scaling"] == scaling and config["max_position_embeddings"] == 131072
    feats, _, ours = _ours(draft, base)
    raw = base.model.get_input_embeddings().weight.detach()
    theirs, _ = sglang_eagle3_logits(config, t, raw, feats, IDS[0])
    assert torch.allclose(theirs, ours, atol=1e-5), (theirs - ours).abs().max()
    plain, _ = sglang_eagle3_logits({**config, "rope_scaling": None}, t, raw, feats, IDS[0])
    assert not torch.allclose(plain, ours, atol=1e-3)  # the scaling matters at these positions


def test_speculators_tensors_are_the_sglang_tensors_renamed(llama_base):
    draft = build_draft(ModelingConfig(algorithm="eagle_v3", draft_family="llama", draft_vocab_size=120,
                                       feature_layers=[1, 2, 3]), llama_base, seed=2).eval()
    _randomise_norms(draft)
    _, sg = to_state_dict(draft, "sglang-eagle3")
    _, sp = to_state_dict(draft, "speculators")
    renamed = {k.replace("layers.0.", "midlayer."): v for k, v in sp.items()}
    assert set(renamed) - {"embed_tokens.weight"} == set(sg) and all(torch.equal(sg[k], renamed[k]) for k in sg)


def test_eagle12_tensors_compute_our_prediction_the_sglang_and_eagle_way(llama_base):
    draft = build_draft(ModelingConfig(algorithm="eagle_v2", vocab="base", draft_family="llama", draft_num_layers=2,
                                       draft_first_input_norm=False), llama_base, seed=4).eval()
    _randomise_norms(draft)
    feats, hidden, ours = _ours(draft, llama_base)
    raw = llama_base.model.get_input_embeddings().weight.detach()
    for fmt in ("sglang-eagle", "eagle"):
        config, t = to_state_dict(draft, fmt)
        theirs = sglang_eagle_hidden(config, t, t.get("embed_tokens.weight", raw), feats, IDS[0])
        assert torch.allclose(theirs, hidden, atol=1e-5), (fmt, (theirs - hidden).abs().max())
        assert torch.allclose(llama_base.head(theirs), ours, atol=1e-4)  # the base LM head reads it unnormed
