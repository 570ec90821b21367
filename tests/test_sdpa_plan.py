"""How the lean forward calls SDPA (models/lean.py `sdpa_plan`), and that every planned call is exact.

* the plan: a plain prefill runs `is_causal` with no mask; on CUDA a masked (or float32, or wide-head)
  grouped-query call expands K/V per head (the math kernel is the only masked one taking `enable_gqa`),
  a flash-able one keeps `enable_gqa`; a CPU keeps `enable_gqa` with or without a mask;
* every variant gives the same numbers on CPU: is_causal == an explicit causal mask, repeat_kv ==
  enable_gqa, with tree and sliding-window masks, at the SDPA level and through whole tiny
  Llama / Qwen3 / Gemma3 bases (the CUDA plan forced onto the CPU);
* a plain prefill really reaches SDPA without a mask tensor.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from specforge_het.inference.tree import layout_from_parents
from specforge_het.models import lean
from specforge_het.models.cache import HFCache
from specforge_het.models.lean import SdpaPlan, attend_mask, repeat_kv, sdpa_backend, sdpa_plan

FAMILIES = ("llama", "qwen3", "gemma3")
TREE = torch.tensor([-1, 0, 0, 1, 1, 3])


def test_plan_cuda_vs_cpu() -> None:
    bf16, f32 = torch.bfloat16, torch.float32
    # CUDA, masked grouped-query call (tree verify, sliding window): expand K/V, efficient kernel
    assert sdpa_plan("cuda", True, True) == SdpaPlan(False, True, False, True, "efficient")
    # CUDA, plain prefill in bf16: is_causal, no mask, flash takes the grouped heads itself
    assert sdpa_plan("cuda", False, True, causal=True, dtype=bf16) == SdpaPlan(True, False, True, False, "flash")
    # CUDA float32 or head_dim > 256: no flash, so no enable_gqa (it would mean math): expand instead
    assert sdpa_plan("cuda", False, True, causal=True, dtype=f32) == SdpaPlan(True, False, False, True, "efficient")
    assert sdpa_plan("cuda", False, True, causal=True, head_dim=512).repeat_kv
    # CUDA without grouped heads: nothing to expand
    assert sdpa_plan("cuda", True, False) == SdpaPlan(False, True, False, False, "efficient")
    # one decode token without a mask
    assert sdpa_plan("cuda", False, True, dtype=bf16) == SdpaPlan(False, False, True, False, "flash")
    # CPU keeps enable_gqa, masked or not, and never copies K/V
    assert sdpa_plan("cpu", True, True) == SdpaPlan(False, True, True, False, "cpu")
    assert sdpa_plan("cpu", False, True, causal=True, dtype=f32) == SdpaPlan(True, False, True, False, "cpu")
    # a mask always wins over causal (is_causal and attn_mask together are refused by SDPA)
    assert not sdpa_plan("cuda", True, True, causal=True).is_causal
    assert not sdpa_plan("cpu", True, False, causal=True).is_causal


def test_attend_mask_plain_prefill_is_none() -> None:
    pos = torch.arange(12)
    assert attend_mask(pos, 0, None, None) is None  # plain prefill: is_causal
    assert attend_mask(pos, 0, None, 16) is None  # inside the sliding window too
    slid = attend_mask(torch.arange(20), 0, None, 16)[0, 0]  # past the window: a mask is needed
    assert slid[19, 3] == 0 and slid[19, 4] == 1 and slid[3, 4] == 0
    tree = layout_from_parents(TREE).attn_mask
    assert torch.equal(attend_mask(torch.arange(6), 0, tree, None)[0, 0], tree)  # a tree keeps its mask


def _qkv(s: int, keys: int, heads: int = 4, kv_heads: int = 2, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, s, d, generator=g)
    k = torch.randn(1, kv_heads, keys, d, generator=g)
    v = torch.randn(1, kv_heads, keys, d, generator=g)
    return q, k, v


def test_sdpa_variants_equal() -> None:
    q, k, v = _qkv(9, 9)
    rep = (repeat_kv(k, 2), repeat_kv(v, 2))
    assert torch.equal(rep[0], k.repeat_interleave(2, dim=1))  # HF's repeat_kv head order
    tril = torch.ones(9, 9, dtype=torch.bool).tril()[None, None]
    ref = F.scaled_dot_product_attention(q, *rep, attn_mask=tril)  # explicit mask, expanded heads
    for out in (F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                F.scaled_dot_product_attention(q, *rep, is_causal=True),
                F.scaled_dot_product_attention(q, k, v, attn_mask=tril, enable_gqa=True)):
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    # a tree over 7 cached keys: repeat_kv == enable_gqa with the mask
    q, k, v = _qkv(6, 13, seed=1)
    mask = attend_mask(torch.tensor([7, 8, 8, 9, 9, 10]), 7, layout_from_parents(TREE).attn_mask, None)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    b = F.scaled_dot_product_attention(q, repeat_kv(k, 2), repeat_kv(v, 2), attn_mask=mask)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # and the lean `attention` under either device's plan
    for device_type in ("cpu", "cuda"):
        with _forced_plan(device_type):
            torch.testing.assert_close(lean.attention(q, k, v, mask, None, False), a, atol=1e-6, rtol=1e-5)


def test_sdpa_backend_names_a_kernel() -> None:
    q, k, v = _qkv(8, 8)
    name = sdpa_backend(q, k, v, None, causal=True)
    assert name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH", "CUDNN_ATTENTION", "OVERRIDEABLE", "unknown")
    assert name != "ERROR"


class _forced_plan:
    """Run `lean.attention` with the plan of another device type (the computation stays on the CPU)."""

    def __init__(self, device_type: str, dtype: torch.dtype | None = None):
        self.device_type, self.dtype = device_type, dtype

    def __enter__(self):
        self.orig = lean.sdpa_plan
        forced, dtype = self.device_type, self.dtype

        def plan(_device_type, has_mask, gqa, causal=False, dt=torch.bfloat16, head_dim=128):
            return self.orig(forced, has_mask, gqa, causal, dtype or dt, head_dim)

        lean.sdpa_plan = plan
        return self

    def __exit__(self, *exc):
        lean.sdpa_plan = self.orig


def _run(base, prompt_len: int):
    """Prefill, a tree verify, a rollback and a decode step through the lean forward: all logits."""
    layout = layout_from_parents(TREE)
    cache = base.new_cache(capacity=8)
    ids = (torch.arange(prompt_len) * 11 % 280 + 5)[None]
    with torch.no_grad():
        pre = base(ids, cache, feature_layers=(1, -1), logits="all")
        ver = base(torch.tensor([[40, 41, 42, 43, 44, 45]]), cache, prompt_len + layout.position_offsets,
                   layout.attn_mask, logits="all")
        cache.keep(prompt_len, torch.tensor([0, 2]))
        step = base(torch.tensor([[46]]), cache, logits="all")
    return pre.logits, pre.features, ver.logits, step.logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompt_len", [5, 24])  # 24 > gemma3's sliding window 16: masked sliding prefill
def test_every_plan_equal_on_bases(bases, family, prompt_len) -> None:
    base = bases[family]
    assert base.lean and base.config.num_key_value_heads < base.config.num_attention_heads  # grouped heads
    want = _run(base, prompt_len)  # CPU plan
    for device_type, dtype in (("cuda", None), ("cuda", torch.bfloat16)):  # expand K/V; flash-shaped enable_gqa
        with _forced_plan(device_type, dtype):
            got = _run(base, prompt_len)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-5)
    # the HF forward (its own masks and repeat_kv) agrees with both
    hf = base(((torch.arange(prompt_len) * 11 % 280 + 5)[None]), HFCache(), logits="all").logits
    torch.testing.assert_close(want[0], hf, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_prefill_calls_sdpa_without_mask(bases, family, monkeypatch) -> None:
    base = bases[family]
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append((attn_mask is None, kw.get("is_causal", False), kw.get("enable_gqa", False), k.shape[1]))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(lean.F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        base((torch.arange(12) + 5)[None], base.new_cache(), logits="last")
    assert len(calls) == base.num_layers
    assert all(c[:3] == (True, True, True) for c in calls), calls  # is_causal, no mask, grouped heads in SDPA
    calls.clear()
    with torch.no_grad(), _forced_plan("cuda"):  # a float32 base on CUDA: K/V expanded, still no mask
        base((torch.arange(12) + 5)[None], base.new_cache(), logits="last")
    heads = base.config.num_attention_heads
    assert all(c == (True, True, False, heads) for c in calls), calls
    calls.clear()
    layout = layout_from_parents(TREE)
    cache = base.new_cache()
    with torch.no_grad(), _forced_plan("cuda"):  # tree verification on CUDA: mask + expanded K/V
        base((torch.arange(12) + 5)[None], cache, logits="last")
        calls.clear()
        base(torch.tensor([[40, 41, 42, 43, 44, 45]]), cache, 12 + layout.position_offsets, layout.attn_mask)
    assert all(c == (False, False, False, heads) for c in calls), calls


def _record_cudnn_flag(monkeypatch) -> list[bool]:
    """Spy on every SDPA call (whoever makes it): was the cuDNN kernel allowed at that moment?"""
    seen: list[bool] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(lean, "RESTRICTED_SDPA_DEVICES", {"cuda", "cpu"})  # apply the CUDA restriction here
    return seen


def test_no_cudnn_in_decoding_and_in_checkpointed_training(bases, monkeypatch) -> None:
    """On CUDA SDPA must never pick cuDNN (a graph build per new key length). Checked on CPU by applying the
    same restriction here: every call of a speculative decode and of an EagleV3 training step with gradient
    checkpointing, the backward's recomputation included (run outside any forward-level context), is restricted."""
    from specforge_het.doctor.checks import build_eagle3_draft
    from specforge_het.inference.decoder import Decoder
    from specforge_het.inference.proposer import DraftProposer, TreeSpec
    from specforge_het.training.trainer import DraftTrainingModule

    seen = _record_cudnn_flag(monkeypatch)
    base = bases["llama"]
    assert torch.backends.cuda.cudnn_sdp_enabled()  # torch's default, outside the restriction
    draft = build_eagle3_draft(base, 64)
    Decoder(base, DraftProposer(draft, TreeSpec())).generate(torch.arange(5, 17)[None], 8)
    assert seen and not any(seen)
    seen.clear()
    from specforge_het.config import Config

    t = Config().training
    t.gradient_checkpointing = True
    module = DraftTrainingModule(build_eagle3_draft(base, 64).train(True), base, t)
    ids = torch.arange(5, 37)[None]
    out = module(ids, torch.ones_like(ids), torch.ones_like(ids))
    forward_calls = len(seen)
    (out["loss"] / out["count"]).backward()
    assert len(seen) > forward_calls > 0  # the checkpointed layers ran their attention again in backward
    assert not any(seen)
