"""Fused projections (models/fused.py): q/k/v and gate/up as one linear each, only inside the block, equal
to the separate projections to float rounding, made again when a weight changes, and what the decoder
runs (the base's layers and the draft's, EAGLE-3's fused first layer included)."""

from __future__ import annotations

import pytest
import torch
from conftest import DRAFT_KINDS, draft_modeling
from torch import nn

from specforge_het.algorithms.build import build_draft
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.models import fused, linears
from specforge_het.models.fused import fusable, fused_projections, is_fused
from specforge_het.models.lean import layer_forward


@pytest.fixture(autouse=True)
def fresh_cache():
    fused.release_fused()
    yield
    fused.release_fused()


def _layer_out(base, layer_index: int, x: torch.Tensor) -> torch.Tensor:
    layer = base.layers[layer_index]
    pos = torch.arange(x.shape[1])[None]
    cos, sin = base._rotary(x, pos, base.layer_types[layer_index])
    return layer_forward(layer, x, cos, sin, None, None, layer_index)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_fused_layer_equals_the_separate_projections_and_only_inside_the_block(bases, family) -> None:
    base = bases[family]
    layer = base.layers[0]
    x = torch.randn(1, 5, base.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = _layer_out(base, 0, x)
        calls = []
        with fused_projections(base.model) as (made, replaced):
            assert is_fused(layer.self_attn) and is_fused(layer.mlp)
            assert len(made) == 2 * len(base.layers) and len(replaced) == 5 * len(base.layers)
            assert any(m.weight.shape[0] == sum(p.out_features for p in replaced[:3]) for m in made)
            hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in made]
            got = _layer_out(base, 0, x)
            for h in hooks:
                h.remove()
        assert len(calls) == 2  # layer 0 ran its fused q/k/v and gate/up, nothing else
        assert not is_fused(layer.self_attn) and not is_fused(layer.mlp)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert torch.equal(_layer_out(base, 0, x), want)  # after the block: HF's modules again


def test_a_changed_weight_is_fused_again(llama_base) -> None:
    attn = llama_base.layers[1].self_attn
    x = torch.randn(3, attn.q_proj.in_features)
    with torch.no_grad():
        with fused_projections(llama_base.model):
            first = fused._ACTIVE[attn][0]
        saved = attn.k_proj.weight.clone()
        try:
            attn.k_proj.weight.mul_(2.0)  # in place: the cached copy is stale
            with fused_projections(llama_base.model):
                assert fused._ACTIVE[attn][0] is not first
                q, k, v = fused.qkv(attn, x)
                torch.testing.assert_close(k, attn.k_proj(x), atol=1e-5, rtol=1e-5)
            with fused_projections(llama_base.model):
                assert fused._ACTIVE[attn][0] is fused._CACHE[attn][1]  # unchanged since: reused
        finally:
            attn.k_proj.weight.copy_(saved)


def test_what_is_not_fused() -> None:
    mlp_cfg = type("C", (), {"hidden_size": 8, "intermediate_size": 16, "hidden_act": "silu", "mlp_bias": False})
    from transformers.models.llama.modeling_llama import LlamaMLP
    mlp = LlamaMLP(mlp_cfg)
    assert fusable(mlp) == ("gate_proj", "up_proj")
    assert fusable(nn.Linear(4, 4)) == () and fusable(nn.Sequential()) == ()
    assert fusable(LlamaMLP(mlp_cfg).to(torch.bfloat16)) == ()  # the fast paths are float32 only
    odd = LlamaMLP(mlp_cfg)
    odd.up_proj = nn.Linear(8, 16, bias=True)  # bias on one projection only
    assert fusable(odd) == ()
    fused.ENABLED = False
    try:
        with fused_projections(nn.Sequential(mlp)) as (made, _):
            assert made == [] and not is_fused(mlp)
    finally:
        fused.ENABLED = True


def test_nested_blocks_keep_the_outer_ones_modules(llama_base) -> None:
    attn = llama_base.layers[0].self_attn
    with fused_projections(llama_base.model) as (outer, _):
        with fused_projections(llama_base.model) as (inner, _):
            assert inner == [] and is_fused(attn)
        assert is_fused(attn) and outer
    assert not is_fused(attn)


def test_the_decoder_runs_fused_layers_and_does_not_pack_what_they_replace(bases, tok_b_dir, prompt_ids,
                                                                           monkeypatch) -> None:
    """During generation the base's and the draft's layers (EAGLE-3's first layer with its 2 x width input
    included) run fused, the projections they replace get no packed copy, and greedy speculative decoding
    still equals base-only."""
    base = bases["llama"]
    draft = build_draft(draft_modeling(**DRAFT_KINDS["eagle_v3_reduced"], tok_dir=tok_b_dir), base, seed=0).eval()
    seen: set[int] = set()
    qkv = fused.qkv

    def spy(attn, x):
        if is_fused(attn):
            seen.add(id(attn))
        return qkv(attn, x)

    monkeypatch.setattr(fused, "qkv", spy)
    linears.release_packed()
    ref = Decoder(base).generate(prompt_ids, 12).tokens
    res = Decoder(base, DraftProposer(draft, TreeSpec(kind="dynamic", max_depth=3, top_k=2, total_tokens=6)))
    assert res.generate(prompt_ids, 12).tokens == ref
    attns = [layer.self_attn for layer in base.layers] + [layer.self_attn for layer in draft.layers]
    assert {id(a) for a in attns} <= seen
    assert draft.layers[0].self_attn.q_proj.in_features == 2 * draft.layers[0].self_attn.o_proj.out_features
    originals = [getattr(a, n) for a in attns for n in ("q_proj", "k_proj", "v_proj")]
    assert not any(m in linears._PACKED for m in originals)


@pytest.mark.parametrize("kernel", ["onednn", "linear"])
def test_generation_under_inference_mode_works_then_and_after(llama_base, prompt_ids, kernel, monkeypatch) -> None:
    """A fused linear first made under torch.inference_mode() must not break the packed kernels (they key their
    copies on the weight's version counter, which inference tensors lack), then or in later generations."""
    if kernel not in linears.available_kernels():
        pytest.skip(f"this torch build has no {kernel} kernel")
    saved = dict(linears._CHOICE)
    linears.forget_choices()
    monkeypatch.setattr(linears, "time_kernels", lambda ks: {k: (0.1 if k == kernel else 1.0) for k in ks})
    try:
        ref = Decoder(llama_base, fast_paths="off").generate(prompt_ids, 8).tokens
        with torch.inference_mode():
            assert Decoder(llama_base).generate(prompt_ids, 8).tokens == ref
        assert Decoder(llama_base).generate(prompt_ids, 8).tokens == ref
        assert kernel in linears.kernel_choices().values()
    finally:
        linears.forget_choices()
        linears._CHOICE.update(saved)


def test_an_optimizer_step_makes_the_copy_stale(llama_base) -> None:
    """A fused AdamW step writes the weights without bumping their version counters: the step count is in the key."""
    mlp = llama_base.layers[0].mlp
    saved = {k: v.clone() for k, v in mlp.state_dict().items()}
    x = torch.randn(2, mlp.gate_proj.in_features)
    mlp.requires_grad_(True)  # the shared base is frozen
    try:
        with torch.no_grad(), fused_projections(llama_base.model):
            first = fused._ACTIVE[mlp][0]
        opt = torch.optim.AdamW(mlp.parameters(), lr=0.5, fused=True)
        mlp(x).sum().backward()
        opt.step()
        with torch.no_grad(), fused_projections(llama_base.model):
            assert fused._ACTIVE[mlp][0] is not first
            torch.testing.assert_close(fused.mlp(mlp, x), mlp(x), atol=1e-5, rtol=1e-5)
    finally:
        mlp.zero_grad(set_to_none=True)
        mlp.requires_grad_(False)
        with torch.no_grad():
            mlp.load_state_dict(saved)


def test_under_autograd_the_separate_projections_run(llama_base) -> None:
    attn = llama_base.layers[0].self_attn
    x = torch.randn(2, attn.q_proj.in_features)
    attn.q_proj.weight.requires_grad_(True)  # the shared base is frozen
    try:
        with fused_projections(llama_base.model):
            q, _, _ = fused.qkv(attn, x)
            q.sum().backward()
        assert attn.q_proj.weight.grad is not None  # the fused copy would give no gradient
    finally:
        attn.zero_grad(set_to_none=True)
        attn.q_proj.weight.requires_grad_(False)


def test_biases_are_fused_in_order() -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention
    cfg = LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, attention_bias=True)
    torch.manual_seed(0)
    attn = LlamaAttention(cfg, 0)
    for p in (attn.q_proj, attn.k_proj, attn.v_proj):
        torch.nn.init.normal_(p.bias)
    x = torch.randn(3, 32)
    with torch.no_grad(), fused_projections(nn.Sequential(attn)):
        got = fused.qkv(attn, x)
    with torch.no_grad():
        for g, p in zip(got, (attn.q_proj, attn.k_proj, attn.v_proj)):
            torch.testing.assert_close(g, p(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_fusing_changes_no_token_and_no_accept_length(bases, tok_b_dir, long_ids, family) -> None:
    """The same speculative decode with fusion on and off: the draft's own acceptance is unchanged too."""
    base = bases[family]
    draft = build_draft(draft_modeling(**DRAFT_KINDS["eagle_v3_reduced"], tok_dir=tok_b_dir), base, seed=0).eval()
    spec = TreeSpec(kind="dynamic", max_depth=3, top_k=2, total_tokens=6)
    runs = []
    for on in (True, False):
        fused.ENABLED = on
        try:
            res = Decoder(base, DraftProposer(draft, spec)).generate(long_ids, 20)
        finally:
            fused.ENABLED = True
        runs.append((res.tokens, res.accept_lengths))
    assert runs[0] == runs[1]
