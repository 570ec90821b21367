"""The one cache protocol (models/cache.py): `KVCache` and the `HFCache` adapter behave the same through it.

* a base forward fills both with the same entries; `keep` (a tree path, moved or a prefix, with the
  contiguity given or read), `crop` and `get_seq_length` then agree entry for entry, checked against
  the entries a plain prefill of the kept sequence writes;
* `attention_mask` gives each forward its format (literal tensors);
* no module outside models/cache.py branches on a cache's class.
"""

from __future__ import annotations

import ast

import pytest
import torch
from conftest import REPO

from specforge_het.inference.tree import layout_from_parents
from specforge_het.models.cache import Cache, HFCache, KVCache, is_prefix

FAMILIES = ("llama", "gemma3")
TREE = torch.tensor([-1, 0, 0, 1, 1, 3])
PACKAGE = REPO / "specforge_het"


def _ids(n: int) -> torch.Tensor:
    return (torch.arange(n) * 7 % 250 + 3)[None]


def _entries(cache: Cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _assert_same(a: Cache, b: Cache) -> None:
    assert a.get_seq_length() == b.get_seq_length()
    for (ka, va), (kb, vb) in zip(_entries(a), _entries(b), strict=True):
        assert ka.shape[2] == a.get_seq_length()
        torch.testing.assert_close(ka, kb, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(va, vb, atol=2e-5, rtol=1e-5)


def _filled(base, kind: str, prompt_len: int) -> Cache:
    """A prefill of `prompt_len` tokens, then a tree of six nodes verified after it."""
    cache: Cache = base.new_cache(capacity=4) if kind == "kv" else HFCache()
    layout = layout_from_parents(TREE)
    with torch.no_grad():
        base(_ids(prompt_len), cache, logits="none")
        base(torch.tensor([[40, 41, 42, 43, 44, 45]]), cache, prompt_len + layout.position_offsets,
             layout.attn_mask, logits="none")
    return cache


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("contiguous", [None, False])
def test_both_caches_keep_the_same_entries(bases, family, contiguous) -> None:
    base, n = bases[family], 18  # 18 > gemma3's window: nothing is evicted
    kv, hf = _filled(base, "kv", n), _filled(base, "hf", n)
    assert isinstance(kv, KVCache) and kv.kv is kv and kv.hf is None
    assert hf.kv is None and hf.hf is not None
    _assert_same(kv, hf)
    path = torch.tensor([0, 1, 3])  # root, child, grandchild: entries move
    for cache in (kv, hf):
        cache.keep(n, path, contiguous)
    _assert_same(kv, hf)
    ref = HFCache()  # the entries a plain prefill of the kept sequence writes
    kept = torch.cat([_ids(n), torch.tensor([[40, 41, 43]])], dim=1)
    with torch.no_grad():
        base(kept, ref, logits="none")
    _assert_same(kv, ref)
    for cache in (kv, hf, ref):
        cache.keep(n, torch.tensor([0, 1]), True if contiguous is False else None)  # a prefix: nothing moves
    _assert_same(kv, hf)
    _assert_same(kv, ref)
    assert kv.get_seq_length() == n + 2


@pytest.mark.parametrize("family", FAMILIES)
def test_both_caches_crop_alike(bases, family) -> None:
    base = bases[family]
    kv, hf = _filled(base, "kv", 9), _filled(base, "hf", 9)
    for cache in (kv, hf):
        cache.crop(100)  # past the end: nothing happens
    _assert_same(kv, hf)
    assert kv.get_seq_length() == 15
    for cache in (kv, hf):
        cache.crop(7)
    _assert_same(kv, hf)
    assert kv.get_seq_length() == 7
    with torch.no_grad():  # and both continue the same way after it
        a = base(torch.tensor([[9, 8]]), kv, logits="all").logits
        b = base(torch.tensor([[9, 8]]), hf, logits="all").logits
        want = base.model(input_ids=torch.cat([_ids(7), torch.tensor([[9, 8]])], dim=1)).logits[:, -2:]
    _assert_same(kv, hf)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(a, want, atol=2e-5, rtol=1e-5)


def test_attention_mask_formats() -> None:
    allowed = torch.tensor([[True, False, True], [True, True, False]])
    low = torch.finfo(torch.float32).min
    lean = KVCache(1).attention_mask(allowed, torch.float32)
    assert lean.dtype == torch.bool and torch.equal(lean, allowed[None, None])
    additive = HFCache().attention_mask(allowed, torch.float32)
    assert additive.shape == (1, 1, 2, 3) and additive.dtype == torch.float32
    assert torch.equal(additive[0, 0], torch.tensor([[0.0, low, 0.0], [0.0, 0.0, low]]))
    assert HFCache().attention_mask(allowed, torch.bfloat16).dtype == torch.bfloat16


def test_protocol_members_and_is_prefix() -> None:
    for cache in (KVCache(2), HFCache()):
        assert isinstance(cache, Cache) and cache.get_seq_length() == 0
        cache.keep(0, torch.empty(0, dtype=torch.long))  # empty: nothing to do
        cache.crop(0)
    assert is_prefix(torch.tensor([0, 1, 2])) and is_prefix(torch.empty(0, dtype=torch.long))
    assert not is_prefix(torch.tensor([0, 2])) and not is_prefix(torch.tensor([1]))


def _class_checks(tree: ast.AST) -> list[str]:
    """`isinstance(x, C)` calls whose class names a cache class."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance" and len(node.args) == 2:
            text = ast.unparse(node.args[1])
            if "Cache" in text:
                found.append(text)
    return found


def test_nothing_branches_on_the_cache_class() -> None:
    offenders = {str(p.relative_to(PACKAGE)): found for p in sorted(PACKAGE.rglob("*.py"))
                 if p.name != "cache.py" and (found := _class_checks(ast.parse(p.read_text(encoding="utf-8"))))}
    assert offenders == {}


def test_a_raw_hf_cache_gets_a_clear_error(bases) -> None:
    from transformers import DynamicCache

    with pytest.raises(TypeError, match=r"DynamicCache is not a specforge_het cache.*HFCache\(cache\)"):
        bases["llama"](_ids(3), DynamicCache(), logits="none")
