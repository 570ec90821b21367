"""The KV-cache keyword we pass to HF decoder layers and bodies is one they declare (models/hf_compat.py).

transformers renamed it (`past_key_values=` -> `cache=`; 5.40 drops the old name). A name a forward
does not declare is swallowed by `**kwargs` and the cache silently stays empty, so these tests
check the declared signature of every family we use and that a cached call really fills the cache,
without a deprecation warning.
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from conftest import draft_modeling
from torch import nn
from transformers.models.gemma3 import modeling_gemma3 as g3
from transformers.models.llama import modeling_llama as ll
from transformers.models.qwen3 import modeling_qwen3 as q3

from specforge_het.algorithms.build import build_draft
from specforge_het.models.cache import HFCache
from specforge_het.models.hf_compat import cache_kwarg

FAMILIES = ("llama", "qwen3", "gemma3")
HF_CLASSES = (ll.LlamaDecoderLayer, ll.LlamaModel, q3.Qwen3DecoderLayer, q3.Qwen3Model,
              g3.Gemma3DecoderLayer, g3.Gemma3TextModel)


@pytest.mark.parametrize("cls", HF_CLASSES, ids=lambda c: c.__name__)
def test_cache_keyword_is_declared(cls) -> None:
    name = cache_kwarg(cls)
    params = inspect.signature(cls.forward).parameters
    assert name in params, f"{cls.__name__}.forward does not declare {name!r}: {list(params)}"
    assert params[name].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def test_cache_keyword_of_old_and_unknown_forwards() -> None:
    class Old(nn.Module):
        def forward(self, h, past_key_values=None, **kwargs):
            return h

    class New(nn.Module):
        def forward(self, h, cache=None, past_key_values=None, **kwargs):
            return h

    class Unknown(nn.Module):
        def forward(self, h, **kwargs):  # a third name would land here unnoticed
            return h

    assert cache_kwarg(Old()) == "past_key_values"
    assert cache_kwarg(New) == "cache"  # the newest name wins when both are declared
    with pytest.raises(TypeError, match="renamed the KV-cache keyword"):
        cache_kwarg(Unknown)


def _no_cache_warnings(record) -> None:
    bad = [str(w.message) for w in record if "past_key_value" in str(w.message) or "cache" in str(w.message).lower()]
    assert not bad, bad


@pytest.mark.parametrize("family", FAMILIES)
def test_draft_hf_layers_fill_the_cache(llama_base, family) -> None:
    draft = build_draft(draft_modeling(family=family), llama_base, seed=0).eval()
    ids = (torch.arange(7) * 5 + 9)[None]
    hidden_in = torch.randn(1, 7, draft.cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(7)[None]
    cache = HFCache()
    with torch.no_grad(), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cached = draft(ids, hidden_in, pos, None, cache)
    _no_cache_warnings(record)
    assert cache.get_seq_length() == 7  # a swallowed keyword would leave it at 0
    with torch.no_grad():
        plain = draft(ids, hidden_in, pos)
        step = draft(ids[:, -1:], hidden_in[:, -1:], pos[:, -1:], None, cache)  # attends the cached 7
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
    assert cache.get_seq_length() == 8 and step.shape == (1, 1, draft.cfg.hidden_size)


@pytest.mark.parametrize("family", FAMILIES)
def test_base_hf_forward_fills_the_cache(bases, family) -> None:
    base = bases[family]
    cache = HFCache()
    ids = (torch.arange(6) * 3 + 7)[None]
    with torch.no_grad(), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = base(ids[:, :4], cache, logits="all").logits
        rest = base(ids[:, 4:], cache, logits="all").logits
    _no_cache_warnings(record)
    assert cache.get_seq_length() == 6
    with torch.no_grad():
        ref = base.model(input_ids=ids).logits
    torch.testing.assert_close(torch.cat([first, rest], 1), ref, atol=2e-5, rtol=1e-5)
