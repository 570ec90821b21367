"""The compiled layer stack (models/compiled.py, `--inference.fast_paths compile`): the base's layers as one
inductor graph equal the eager lean forward (prefill, tree verification, one token; features, logits and the
cache), the decoder in `compile` mode gives the tokens of the other paths (speculative == base-only), no
graph is compiled per step, and what is compiled only inside the block, rebuilt after a weight change."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import DRAFT_KINDS, draft_modeling

from specforge_het.algorithms.build import build_draft
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.fast_paths import FastPaths
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.inference.tree import layout_from_parents
from specforge_het.models import compiled
from specforge_het.models.base import BaseModel
from specforge_het.testing import OracleProposer

TREE_PARENTS = torch.tensor([-1, 0, 0, 1, 2, 3])


def _steps(base: BaseModel, ids: torch.Tensor, active: bool):
    """Prefill, a tree verification (rows kept by path 0-1-3), one token: outputs and the cache after."""
    cache = base.new_cache(64)
    layout = layout_from_parents(TREE_PARENTS)
    block = compiled.compiled_layers(base) if active else contextlib.nullcontext([])
    with torch.no_grad(), block as on:
        assert on == ([base] if active else [])
        graphs = _graphs()  # both graphs compiled on entry (or earlier in this process)
        first = base(ids, cache, feature_layers=(1, 2), logits="last")
        past = cache.get_seq_length()
        tree_ids = torch.randint(3, 100, (1, len(TREE_PARENTS)), generator=torch.Generator().manual_seed(1))
        tree = base(tree_ids, cache, past + layout.position_offsets, layout.attn_mask, feature_layers=(1, 2))
        cache.keep(past, torch.tensor([0, 1, 3]))
        last = base(tree_ids[:, :1], cache, logits="all")
        assert _graphs() == graphs  # none while decoding (Gemma3: two attention kinds, no input shared)
    outs = [first.hidden, first.features, first.logits, tree.hidden, tree.features, tree.logits, last.logits]
    kv = [t[:, :, : cache.length] for t in (*cache.k, *cache.v)]
    return outs, kv


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_compiled_stack_equals_the_eager_lean_forward(bases, family, monkeypatch) -> None:
    base = bases[family]
    assert compiled.compilable(base)
    ids = torch.randint(3, 100, (1, 40), generator=torch.Generator().manual_seed(0))  # past Gemma3's window (16)
    calls = []
    run = compiled.run
    monkeypatch.setattr(compiled, "run", lambda *a: calls.append(a[1].shape[1]) or run(*a))  # (layers, h, ...)
    want, want_kv = _steps(base, ids, active=False)
    assert calls == []
    got, got_kv = _steps(base, ids, active=True)
    assert calls == [len(TREE_PARENTS), 1]  # every call after the prefill (eager) ran through the graph
    for a, b in zip(got + got_kv, want + want_kv):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert not compiled.active(base.layers)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_compile_mode_decodes_the_tokens_of_the_other_paths(bases, long_ids, family, monkeypatch) -> None:
    base = bases[family]
    ref = Decoder(base, fast_paths="auto").generate(long_ids, 40)
    assert Decoder(base, fast_paths="compile").generate(long_ids, 40).tokens == ref.tokens
    oracle = Decoder(base, OracleProposer(base, TreeSpec("dynamic", 4, 2, 9)), fast_paths="compile")
    res = oracle.generate(long_ids, 40)
    assert res.tokens == ref.tokens and res.accept_lengths[:-1] == [5] * (res.steps - 1)
    draft = build_draft(draft_modeling(**DRAFT_KINDS["eagle_v3_reduced"]), base, seed=0).eval()  # fused first layer
    want = Decoder(base, DraftProposer(draft, TreeSpec("dynamic", 3, 2, 6))).generate(long_ids, 40)
    ran, run, warmed, warm = [], compiled.run, [], compiled._warm
    monkeypatch.setattr(compiled, "run", lambda layers, *a: ran.append(layers) or run(layers, *a))
    monkeypatch.setattr(compiled, "_warm", lambda *a: (warm(*a), warmed.append(_graphs())))
    spec = Decoder(base, DraftProposer(draft, TreeSpec("dynamic", 3, 2, 6)), fast_paths="compile")
    got = spec.generate(long_ids, 40)
    assert got.tokens == ref.tokens and got.accept_lengths == want.accept_lengths
    assert any(layers is draft.layers for layers in ran) and any(layers is base.layers for layers in ran)
    assert len(warmed) == 1 and _graphs() == warmed[0]  # the draft's graphs made on entry; none while decoding
    assert spec.generate(long_ids[:, :-3], 24).tokens == Decoder(base).generate(long_ids[:, :-3], 24).tokens
    assert _graphs() == warmed[0]  # none per step or prompt length either


@pytest.fixture(autouse=True)
def _no_miss(monkeypatch):
    """A compiled call that neither of its stack's graphs fits fails here (in use it compiles a third graph)."""
    def miss(*a):
        raise AssertionError("a compiled call fit neither graph of its stack")
    monkeypatch.setattr(compiled, "_on_miss", miss)


def test_a_call_neither_graph_fits_compiles_one(llama_base, monkeypatch) -> None:
    """Under the guard skip torch refuses to compile; such a call (here an additive float mask where the warm-up's
    was bool) gets a graph of its own through the full guard check, the eager stack's result, and that graph
    serves the next such call."""
    misses = []
    monkeypatch.setattr(compiled, "_on_miss", lambda compile_call, args: misses.append(1) or compile_call(*args))
    call = compiled._compiled(llama_base)
    stack = llama_base.layers.__dict__[compiled._ATTR][1]
    h, embeds, ropes, masks, ks, vs, past = compiled.warm_args(llama_base, 2)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(h.shape, generator=gen)
    for t in (*ks, *vs):  # the 3 cached entries: reserved, not written (may hold NaN)
        t.normal_(generator=gen)
    masks = {k: torch.zeros(m.shape) for k, m in masks.items()}  # attend everywhere, as the bool mask of ones
    with torch.no_grad():
        got = call(h, embeds, ropes, masks, ks, vs, past)
        assert misses == [1]
        call(h, embeds, ropes, masks, ks, vs, past)
        assert misses == [1]
        want = stack(h, embeds, ropes, masks, ks, vs, past)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_two_drafts_of_one_shape_run_their_own_graphs(bases, long_ids) -> None:
    """Two same-shape drafts differ only in their (frozen) weights; with the guard skip each must still run its own
    graph: its proposals under `compile` are those of the `auto` paths, and the two drafts' differ."""
    base, spec = bases["llama"], TreeSpec("dynamic", 3, 2, 6)
    drafts = [build_draft(draft_modeling(**DRAFT_KINDS["eagle_v3_reduced"]), base, seed=s).eval() for s in (0, 1)]

    def proposals(draft, mode: str) -> list[list[int]]:
        proposer, seen = DraftProposer(draft, spec), []
        propose = proposer.propose
        proposer.propose = lambda: seen.append(p := propose()) or p  # type: ignore[method-assign]
        Decoder(base, proposer, fast_paths=mode).generate(long_ids, 16)
        return [p.tokens.tolist() for p in seen]

    want = [proposals(d, "auto") for d in drafts]
    assert want[0] != want[1]
    assert [proposals(d, "compile") for d in (*drafts, drafts[0])] == [*want, want[0]]


def _graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_compiled_stack_is_rebuilt_after_a_weight_change(llama_base, monkeypatch) -> None:
    monkeypatch.setattr(compiled, "_warm", lambda *a: None)  # torch.compile is lazy: nothing is compiled here
    before = compiled._compiled(llama_base)
    assert compiled._compiled(llama_base) is before
    with torch.no_grad():
        llama_base.layers[0].mlp.down_proj.weight.add_(0.0)  # in place: a new version
    assert compiled._compiled(llama_base) is not before


def test_a_failed_compile_warns_and_runs_the_auto_paths(base_dirs, monkeypatch) -> None:
    def fail(*a):
        raise RuntimeError("no C++ compiler")
    monkeypatch.setattr(compiled, "_warm", fail)
    base = BaseModel.load(base_dirs["qwen3"])  # a new model: nothing compiled for it yet
    with pytest.warns(UserWarning, match="compiling BaseModel's layers failed .*no C.. compiler.*fast_paths auto"):
        with compiled.compiled_layers(base) as on:
            assert on == [] and not compiled.applies(base.layers, 1, 8)
    ids = torch.randint(3, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="failed"):
        got = Decoder(base, fast_paths="compile").generate(ids, 8).tokens
    assert got == Decoder(base, fast_paths="auto").generate(ids, 8).tokens


def test_only_no_grad_calls_after_a_prefill_run_compiled(base_dirs, monkeypatch) -> None:
    monkeypatch.setattr(compiled, "_warm", lambda *a: None)  # torch.compile is lazy: nothing is compiled here
    base = BaseModel.load(base_dirs["llama"])
    with compiled.compiled_layers(base) as on, torch.no_grad():
        assert on == [base]
        assert compiled.applies(base.layers, 1, 2) and compiled.applies(base.layers, compiled.MAX_ROWS, 50)
        assert not compiled.applies(base.layers, 1, 1)  # a prefill: sizes 0 and 1 would get graphs of their own
        assert not compiled.applies(base.layers, compiled.MAX_ROWS + 1, 50)
        with torch.enable_grad():
            assert not compiled.applies(base.layers, 1, 8)  # frozen copies carry no gradient
    assert not compiled.applies(base.layers, 1, 8)
    assert compiled.release_compiled() >= 1 and base.layers.__dict__.get(compiled._ATTR) is None


def test_where_compile_applies(base_dirs) -> None:
    assert FastPaths.resolve("compile", torch.device("cpu")).compiled
    assert not FastPaths.resolve("auto", torch.device("cpu")).compiled
    cuda = FastPaths.resolve("compile", torch.device("cuda"))
    assert not cuda.compiled and cuda.on_device  # an accelerator keeps the device strategy
    bf16 = BaseModel.load(base_dirs["llama"], dtype="bfloat16")
    assert not compiled.compilable(bf16)
    with pytest.warns(UserWarning, match="BaseModel's layers are not compiled .*float32.*auto paths"):
        with compiled.compiled_layers(bf16, None) as on:
            assert on == [] and not compiled.active(bf16.layers)
    with pytest.raises(ValueError, match="fast_paths must be one of auto, compile, off"):
        FastPaths.resolve("fast", torch.device("cpu"))
