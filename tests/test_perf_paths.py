"""The fast inference paths give the same answers as the plain ones.

* lean base forward + KVCache == HF forward + DynamicCache (prefill, tree verify, rollback, decode),
  for every family, Gemma3 past its sliding window included; unsupported setups fall back to HF;
* lean draft forward == HF draft layers;
* fast paths are opt-in and scoped: a loaded base is plain HF; the decoder packs only while it
  generates; `--inference.fast_paths auto` and `off` decode the same greedy tokens;
* the per-row LM head runs the head only on the rows acceptance reads (tests/test_verify.py has
  the strategies themselves).
"""

from __future__ import annotations

import pytest
import torch
from conftest import draft_modeling
from torch import nn

from specforge_het.algorithms.build import build_draft
from specforge_het.bench.integrity import plain_violations
from specforge_het.inference.decoder import Decoder, Sampling
from specforge_het.inference.fast_paths import FastPaths
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.inference.tree import layout_from_parents
from specforge_het.models.base import BaseModel
from specforge_het.models.cache import HFCache, KVCache
from specforge_het.models.lean import attend_mask
from specforge_het.models.linears import is_packed

FAMILIES = ("llama", "qwen3", "gemma3")
T, F_ = True, False
TREE = torch.tensor([-1, 0, 0, 1, 1, 3])  # 6 nodes, two branches


def _ids(n: int, start: int = 5) -> torch.Tensor:
    return (torch.arange(n) * 11 % 280 + start)[None]


# ---------------------------------------------------------------- lean base forward


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompt_len", [5, 24])  # 24 > gemma3's sliding window 16
def test_lean_base_equals_hf(bases, family, prompt_len) -> None:
    base = bases[family]
    assert base.lean
    lean, hf = base.new_cache(capacity=8), HFCache()  # capacity 8: the lean cache must grow
    assert isinstance(lean, KVCache)
    layers = (1, 3, -1)
    layout = layout_from_parents(TREE)
    tree_ids = torch.tensor([[40, 41, 42, 43, 44, 45]])
    with torch.no_grad():
        outs = {}
        for name, cache in (("lean", lean), ("hf", hf)):
            pre = base(_ids(prompt_len), cache, feature_layers=layers, logits="all")
            ver = base(tree_ids, cache, prompt_len + layout.position_offsets, layout.attn_mask,
                       feature_layers=layers, logits="all")
            cache.keep(prompt_len, torch.tensor([0, 2]))  # not a prefix: entries move
            step = base(torch.tensor([[46]]), cache, feature_layers=layers, logits="all")
            cache.keep(prompt_len + 2, torch.tensor([0]))
            step2 = base(torch.tensor([[47, 48]]), cache, logits="last")
            outs[name] = (pre.logits, pre.features, ver.logits, ver.features, step.logits, step.features,
                          step2.logits, cache.get_seq_length())
    assert outs["lean"][-1] == outs["hf"][-1] == prompt_len + 5
    for got, want in zip(outs["lean"][:-1], outs["hf"][:-1]):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    # and against a plain HF forward of the kept sequence
    kept = torch.cat([_ids(prompt_len), tree_ids[:, [0, 2]], torch.tensor([[46, 47, 48]])], dim=1)
    with torch.no_grad():
        ref = base.model(input_ids=kept).logits[0, -1]
    torch.testing.assert_close(outs["lean"][6][0, -1], ref, atol=2e-5, rtol=1e-5)


def test_unsupported_attention_falls_back_to_hf(base_dirs) -> None:
    eager = BaseModel.load(base_dirs["llama"], attn_implementation="eager")
    assert not eager.lean
    cache = eager.new_cache()
    assert isinstance(cache, HFCache) and cache.kv is None
    with torch.no_grad():
        out = eager(_ids(6), cache, logits="last").logits
        ref = eager.model(input_ids=_ids(6)).logits[:, -1:]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no lean forward"):
        eager(_ids(3), KVCache(eager.num_layers))


def test_kv_cache_write_grow_keep() -> None:
    cache = KVCache(2, capacity=4)
    a = torch.arange(2 * 3 * 2, dtype=torch.float32).view(1, 2, 3, 2)
    for i in range(2):
        k, v = cache.write(i, a + i, -a - i)
        assert k.shape == (1, 2, 3, 2)
    cache.advance(3)
    b = torch.full((1, 2, 20, 2), 7.0)  # overflows capacity 16: the buffers grow, old entries kept
    for i in range(2):
        k, _ = cache.write(i, b, b)
        assert k.shape[2] == 23 and torch.equal(k[:, :, :3], a + i)
    cache.advance(20)
    assert cache.get_seq_length() == 23 and cache.capacity == 32  # doubled from 16
    buffers = [id(b) for b in cache.k]
    for _ in range(9):  # growing one entry at a time within capacity: no reallocation
        for i in range(2):
            cache.write(i, b[:, :, :1], b[:, :, :1])
        cache.advance(1)
    assert [id(b) for b in cache.k] == buffers and cache.get_seq_length() == 32
    cache.keep(23, torch.empty(0, dtype=torch.long), contiguous=True)
    cache.keep(3, torch.tensor([1, 4]), contiguous=False)  # keep new entries 1 and 4 after 3 old ones
    assert cache.get_seq_length() == 5
    torch.testing.assert_close(cache.layers[1].keys[:, :, :3], a + 1)
    assert torch.equal(cache.layers[0].values[:, :, 3:], torch.full((1, 2, 2, 2), 7.0))
    cache.keep(2, torch.empty(0, dtype=torch.long), contiguous=True)
    assert cache.get_seq_length() == 2 and cache.layers[0].keys.shape[2] == 2


def test_attend_mask_literal() -> None:
    assert attend_mask(torch.tensor([7]), 7, None, None) is None  # one token sees everything
    assert attend_mask(torch.tensor([7]), 7, None, 16) is None  # still inside the window
    m = attend_mask(torch.tensor([20]), 20, None, 16)[0, 0]
    assert m.tolist() == [[F_] * 5 + [T] * 16]  # 20 - k >= 16 blocked: keys 0..4
    tree = torch.tensor([[T, F_, F_], [T, T, F_], [T, F_, T]])
    m = attend_mask(torch.tensor([2, 3, 3]), 2, tree, None)[0, 0]
    assert m.tolist() == [[T, T, T, F_, F_], [T, T, T, T, F_], [T, T, T, F_, T]]
    causal = attend_mask(torch.tensor([2, 3]), 2, None, None)[0, 0]
    assert causal.tolist() == [[T, T, T, F_], [T, T, T, T]]
    slid = attend_mask(torch.tensor([4, 5, 5]), 4, tree, 3)[0, 0]  # window 3: query 5 drops keys 0..2
    assert slid.tolist() == [[F_, F_, T, T, T, F_, F_], [F_, F_, F_, T, T, T, F_], [F_, F_, F_, T, T, F_, T]]


# ---------------------------------------------------------------- lean draft forward


@pytest.mark.parametrize("family", FAMILIES)
def test_lean_draft_equals_hf_layers(bases, family) -> None:
    base = bases["llama"]
    draft = build_draft(draft_modeling(family=family), base, seed=0).eval()
    n, k = 9, 3
    ids = _ids(n + k)
    feats = base.features(ids, tuple(draft.cfg.feature_layers)).features
    tree = torch.tensor([[T, F_, F_], [T, T, F_], [T, F_, T]])
    outs = {}
    with torch.no_grad():
        for name, cache in (("lean", draft.new_cache(4)), ("hf", HFCache())):
            allowed = torch.ones(n, n, dtype=torch.bool).tril()
            masks = [allowed, torch.cat([torch.ones(k, n, dtype=torch.bool), tree], dim=1)]
            if name == "hf":
                masks = [torch.zeros(m.shape).masked_fill(~m, torch.finfo(torch.float32).min) for m in masks]
            h_in = draft.input_from_base(ids[:, :n], feats[:, :n])
            a = draft(ids[:, :n], h_in, torch.arange(n)[None], masks[0][None, None], cache)
            h_tree = draft.input_from_self(ids[:, n:], a[:, -k:])
            b = draft(ids[:, n:], h_tree, torch.tensor([[n, n + 1, n + 1]]), masks[1][None, None], cache)
            outs[name] = (a, b, cache.get_seq_length())
    assert isinstance(draft.new_cache(), KVCache)
    assert outs["lean"][2] == outs["hf"][2] == n + k
    torch.testing.assert_close(outs["lean"][0], outs["hf"][0], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(outs["lean"][1], outs["hf"][1], atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------- fast paths in the decoder (the few-row linears themselves: tests/test_linears.py)


def test_fast_paths_resolve() -> None:
    auto, off = FastPaths.resolve("auto", torch.device("cpu")), FastPaths.resolve("off", torch.device("cpu"))
    assert auto.per_row_head and auto.packed and auto.describe().startswith("auto (")
    assert not off.per_row_head and not off.packed and off.describe().startswith("off (plain modules")
    assert not FastPaths.resolve("auto", torch.device("meta")).packed  # packing is a CPU path
    with pytest.raises(ValueError, match="auto, compile, off"):
        FastPaths.resolve("on", torch.device("cpu"))


def _packed_during_generate(decoder: Decoder, monkeypatch, modules: list[nn.Module]) -> list[int]:
    """Counts of packed nn.Linear under `modules`, seen at every verify/decode step of a generation."""
    seen: list[int] = []
    step = decoder._base_step if decoder.proposer is None else decoder._spec_step

    def spy(*args):
        seen.append(sum(is_packed(m) for root in modules for m in root.modules()))
        return step(*args)

    monkeypatch.setattr(decoder, "_base_step" if decoder.proposer is None else "_spec_step", spy)
    return seen


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_base_is_plain_and_the_decoder_packs_only_while_it_generates(base_dirs, tok_b_dir, mode, monkeypatch) -> None:
    base = BaseModel.load(base_dirs["qwen3"])
    assert plain_violations(base.model) == []  # what from_pretrained gives: no overrides, no hooks
    draft = build_draft(draft_modeling(tok_dir=tok_b_dir), base, seed=0).eval()
    proposer = DraftProposer(draft, TreeSpec("dynamic", max_depth=3, top_k=3, total_tokens=8))
    assert plain_violations(base.model, draft) == []  # the proposer's constructor packs nothing either
    with torch.no_grad():
        base.features(_ids(6), (1, 3, -1))  # feature taps hook the layers only during the call
    assert plain_violations(base.model) == []
    decoder = Decoder(base, proposer, fast_paths=mode)
    seen = _packed_during_generate(decoder, monkeypatch, [base.model, draft])
    decoder.generate(_ids(10), 6)
    linears = sum(type(m) is nn.Linear for root in (base.model, draft) for m in root.modules())
    assert seen and set(seen) == ({linears} if mode == "auto" else {0})
    assert plain_violations(base.model, draft) == []  # plain again afterwards


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_paths_on_and_off_decode_the_same_greedy_tokens(bases, tok_b_dir, family) -> None:
    base = bases[family]
    draft = build_draft(draft_modeling(tok_dir=tok_b_dir), base, seed=0).eval()
    prompt = _ids(24)  # past gemma3's window of 16 within the generation
    spec = TreeSpec("dynamic", max_depth=3, top_k=3, total_tokens=8)
    out = {}
    for mode in ("auto", "off"):
        out[mode] = (Decoder(base, fast_paths=mode).generate(prompt, 20).tokens,
                     Decoder(base, DraftProposer(draft, spec), fast_paths=mode).generate(prompt, 20).tokens)
    assert out["auto"][0] == out["off"][0] == out["auto"][1] == out["off"][1]


def test_fast_paths_on_and_off_sample_the_same_tokens(bases, tok_b_dir) -> None:
    """Sampling reads the same probabilities per row (lazily, or from the all-rows tensor) and draws the
    same random numbers: with one seed, auto and off give the same tokens."""
    base = bases["llama"]
    draft = build_draft(draft_modeling(tok_dir=tok_b_dir), base, seed=0).eval()
    spec = TreeSpec("dynamic", max_depth=3, top_k=3, total_tokens=8)
    out = {}
    for mode in ("auto", "off"):
        decoder = Decoder(base, DraftProposer(draft, spec), Sampling(temperature=1.0, top_k=20),
                          torch.Generator().manual_seed(3), fast_paths=mode)
        out[mode] = [decoder.generate(_ids(12, start=k), 16).tokens for k in range(4)]
    assert out["auto"] == out["off"]


# ---------------------------------------------------------------- the per-row head in the decoder


def test_verify_runs_the_head_only_on_read_rows(bases, tok_b_dir, monkeypatch) -> None:
    """An untrained draft is almost never right: the LM head then runs on ~1 row per verify step,
    not on every tree node, and the output is still base-only greedy."""
    base = bases["llama"]
    prompt = _ids(12)
    ref = Decoder(base).generate(prompt, 24)
    draft = build_draft(draft_modeling(tok_dir=tok_b_dir), base, seed=0).eval()
    spec = TreeSpec("dynamic", max_depth=3, top_k=3, total_tokens=8)
    rows: list[int] = []
    head = base.head
    monkeypatch.setattr(base, "head", lambda h: rows.append(h.shape[-2] if h.dim() > 1 else 1) or head(h))
    res = Decoder(base, DraftProposer(draft, spec), fast_paths="auto").generate(prompt, 24)
    assert res.tokens == ref.tokens
    verify_rows = sum(rows) - 1  # the prefill's last row
    assert verify_rows <= sum(res.accept_lengths) + spec.max_depth * sum(a > 1 for a in res.accept_lengths)
    assert verify_rows < res.steps * spec.total_tokens
    rows.clear()  # fast paths off: the head runs over every tree row of every verify
    res = Decoder(base, DraftProposer(draft, spec), fast_paths="off").generate(prompt, 24)
    assert res.tokens == ref.tokens and sum(rows) - 1 == res.steps * spec.total_tokens


def test_base_only_decoding_unchanged_by_packing(bases) -> None:
    """Greedy base-only decoding with the fast paths equals a plain argmax loop over HF's forward."""
    base = bases["gemma3"]
    prompt = _ids(20)
    res = Decoder(base).generate(prompt, 12)
    ids, ref = prompt.clone(), []
    with torch.no_grad():
        for _ in range(12):
            logits = base.model(input_ids=ids).logits[0, -1]  # HF's whole forward, no cache
            ref.append(int(logits.argmax()))
            ids = torch.cat([ids, torch.tensor([[ref[-1]]])], dim=1)
    assert res.tokens == ref


def test_stable_topk_k1_is_the_first_maximum() -> None:
    from specforge_het.inference.tree import stable_topk

    x = torch.randint(0, 3, (6, 50), generator=torch.Generator().manual_seed(0)).float()  # many ties
    ref_v, ref_i = torch.sort(x, dim=-1, descending=True, stable=True)
    v, i = stable_topk(x, 1)
    assert torch.equal(v, ref_v[:, :1]) and torch.equal(i, ref_i[:, :1])
