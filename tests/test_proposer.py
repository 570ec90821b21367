"""DraftProposer: its draft cache holds exactly the committed pairs, and its proposals equal a plain
unrolled draft: every draft output it computes (committed pairs through its KV cache, tree nodes
through the tree mask) equals a causal forward of the draft over that node's path, and its trees
are the top-k trees of those outputs (chain, static, dynamic). (Moved from test_decoder.py.)"""

from __future__ import annotations

import pytest
import torch
from conftest import DRAFT_KINDS, draft_modeling
from test_decoder import TREES

from specforge_het.algorithms.build import build_draft
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.models.cache import HFCache


@pytest.fixture(scope="module")
def llama_drafts(bases, tok_b_dir):
    """kind -> a random (untrained) draft on the llama base."""
    return {kind: build_draft(draft_modeling(**spec, tok_dir=tok_b_dir), bases["llama"], seed=0).eval()
            for kind, spec in DRAFT_KINDS.items()}


@pytest.fixture(scope="module")
def untied_ref(untied, long_ids):
    return {"qwen3": Decoder(untied["qwen3"]).generate(long_ids, 12)}


# ---------------------------------------------------------------- draft cache bookkeeping


@pytest.mark.parametrize("kind", list(DRAFT_KINDS))
def test_draft_cache_bookkeeping(bases, llama_drafts, prompt_ids, kind, monkeypatch):
    """Draft position i holds (token_{i+1}, base feature_i): after prompt (n tokens) + g new tokens
    the draft holds the pairs for tokens 1 .. n+g-1, i.e. n+g-1 pairs -- as many entries as the
    base cache, which holds the prompt and every new token but the last (not yet verified)."""
    base = bases["llama"]
    ref = Decoder(base).generate(prompt_ids, 20).tokens
    caches: list[HFCache] = []

    def new_cache(capacity=0):
        caches.append(HFCache())
        return caches[-1]

    monkeypatch.setattr(base, "new_cache", new_cache)
    proposer = DraftProposer(llama_drafts[kind], TREES["dynamic"])
    n, g = prompt_ids.shape[1], 20
    res = Decoder(base, proposer).generate(prompt_ids, g)
    committed = 1 + sum(res.accept_lengths)  # new tokens committed, incl. any cut at max_new_tokens
    assert res.tokens == ref
    assert proposer.committed == proposer.cache.get_seq_length() == n + committed - 1
    assert caches[0].get_seq_length() == n + committed - 1
    if committed == g:  # the last step did not overshoot max_new_tokens
        assert proposer.committed == n + len(res.tokens) - 1
        assert proposer.root_token == res.tokens[-1]
    # proposing again grows a tree in the draft cache but leaves only the committed pairs behind
    tokens, parents = proposer.propose()
    assert tokens[0] == proposer.root_token and parents[0] == -1
    assert proposer.cache.get_seq_length() == proposer.committed == n + committed - 1
    # the incrementally built draft state equals a one-shot draft prefill over the whole sequence
    assert committed == g  # (an untrained draft: no step overshoots max_new_tokens)
    seq = torch.cat([prompt_ids[0], torch.tensor(res.tokens)])  # [n + g]
    features = base.features(seq[None, :-1], proposer.feature_layers).features[0]  # [n+g-1, F*Hb]
    fresh = DraftProposer(llama_drafts[kind], TREES["dynamic"])
    fresh.start(seq[:-2], int(seq[-2]), features[:-1])  # pairs (token_{i+1}, feature_i), i < n+g-2
    fresh.update(seq[-1:], features[-1:])  # and the last pair, as one more verify step would
    assert fresh.committed == proposer.committed and fresh.root_token == proposer.root_token
    torch.testing.assert_close(fresh.root_hidden, proposer.root_hidden, atol=1e-4, rtol=1e-4)
    for layer_a, layer_b in zip(fresh.cache.layers, proposer.cache.layers):
        torch.testing.assert_close(layer_a.keys, layer_b.keys, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layer_a.values, layer_b.values, atol=1e-4, rtol=1e-4)
    fresh_tokens, fresh_parents = fresh.propose()
    assert torch.equal(fresh_parents, parents) and torch.equal(fresh_tokens, tokens)


# ---------------------------------------------------------------- proposals == a plain unrolled draft


SHARP_DRAFT_STD = 0.15


class UnrolledDraft:
    """Reference draft outputs without cache or tree mask: every tree node is computed by one
    causal forward of the draft over (committed pairs, then the node's path below the root)."""

    def __init__(self, draft, seq: torch.Tensor, features: torch.Tensor):
        self.draft = draft
        self.ids = seq[1:][None]  # [1, L]: draft position i holds (token_{i+1}, feature_i)
        self.h_in = draft.input_from_base(self.ids, features[None])  # [1, L, Hd]
        self.memo: dict[tuple[int, ...], tuple[torch.Tensor | None, torch.Tensor]] = {(): (None, self._run((), []))}

    def _run(self, path: tuple[int, ...], node_inputs: list[torch.Tensor]) -> torch.Tensor:
        ids = torch.cat([self.ids, torch.tensor([list(path)], dtype=torch.long)], dim=1)
        h_in = torch.cat([self.h_in, *[h[None, None] for h in node_inputs]], dim=1)
        positions = torch.arange(ids.shape[1])[None]
        return self.draft(ids, h_in, positions, None, None)[0, -1]

    def output(self, path: tuple[int, ...]) -> torch.Tensor:
        """Draft output [Hd] at the last node of `path` (base ids below the root)."""
        if path not in self.memo:
            parent_out = self.output(path[:-1])
            h = self.draft.input_from_self(torch.tensor([[path[-1]]]), parent_out[None, None])[0, 0]
            inputs = [self.memo[path[:k]][0] for k in range(1, len(path))] + [h]
            self.memo[path] = (h, self._run(path, inputs))
        return self.memo[path][1]

    def logprobs(self, path: tuple[int, ...]) -> torch.Tensor:
        return torch.log_softmax(self.draft.logits(self.output(path)[None]).float(), dim=-1)[0]


def node_paths(tokens: list[int], parents: list[int]) -> list[tuple[int, ...]]:
    """Base ids on the path below the root, per tree node (the root's path is ())."""
    paths: list[tuple[int, ...]] = [()]
    for i in range(1, len(tokens)):
        paths.append(paths[parents[i]] + (tokens[i],))
    return paths


@pytest.fixture(scope="module")
def sharp_drafts(untied, tok_b_dir):
    """kind -> a draft on the untied qwen3 base with large random weights (its outputs depend
    strongly on positions, masks and inputs)."""
    out = {}
    for kind, spec in DRAFT_KINDS.items():
        draft = build_draft(draft_modeling(**spec, tok_dir=tok_b_dir), untied["qwen3"], seed=3).eval()
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            for p in draft.parameters():
                if p.dim() == 2:
                    p.normal_(0, SHARP_DRAFT_STD, generator=gen)
        out[kind] = draft
    return out


@pytest.mark.parametrize("tree", ["chain4", "static_k2_d3", "static_eagle1_small"])
@pytest.mark.parametrize("kind", list(DRAFT_KINDS))
def test_static_proposals_equal_unrolled_draft(untied, untied_ref, long_ids, sharp_drafts, kind, tree, monkeypatch):
    """Every draft output the proposer computes (committed pairs through its KV cache, tree nodes
    through the tree mask) equals a plain causal forward of the draft over that node's path, and
    node i is the ranks[i]-th best child of its parent under those outputs."""
    from specforge_het.inference.tree import static_parents, static_tree_spec

    base, draft = untied["qwen3"], sharp_drafts[kind]
    seq = torch.cat([long_ids[0], torch.tensor(untied_ref["qwen3"].tokens[:12])])
    features = base.features(seq[None, :-1], tuple(draft.cfg.feature_layers)).features[0]
    ref = UnrolledDraft(draft, seq, features)
    seen: list[torch.Tensor] = []  # every hidden state the proposer turns into logits, in call order
    logits = draft.logits
    monkeypatch.setattr(draft, "logits", lambda h: seen.append(h.detach().clone()) or logits(h))

    proposer = DraftProposer(draft, TREES[tree])
    proposer.start(seq[:-1], int(seq[-1]), features)
    tokens, parents = (t.tolist() for t in proposer.propose())
    rows = torch.cat(seen)  # [fed rows, Hd]
    monkeypatch.undo()
    if tree == "chain4":
        ranks = [-1, 0, 0, 0, 0]
        assert parents == [-1, 0, 1, 2, 3]
    else:
        want_parents, ranks = (t.tolist() for t in static_parents(static_tree_spec(TREES[tree].static_tree)))
        assert parents == want_parents
    assert tokens[0] == int(seq[-1])
    paths = node_paths(tokens, parents)
    for i in range(1, len(tokens)):
        order = torch.sort(ref.logprobs(paths[parents[i]]), descending=True, stable=True).indices
        assert tokens[i] == int(draft.to_base_ids(order[ranks[i]: ranks[i] + 1])[0]), i
    fed = [0] + sorted(set(parents[1:]) - {0})  # the root, then every node with children, in order
    assert rows.shape[0] == len(fed)
    for row, node in zip(rows, fed):
        torch.testing.assert_close(row, ref.output(paths[node]), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", list(DRAFT_KINDS))
def test_dynamic_proposals_equal_unrolled_draft(untied, untied_ref, long_ids, sharp_drafts, kind, monkeypatch):
    """The dynamic tree equals the EAGLE-2 expansion over reference draft outputs, and every draft
    output the proposer computed (root, then each expanded frontier row) equals the reference."""
    from specforge_het.inference.tree import build_dynamic_tree

    base = untied["qwen3"]
    draft = sharp_drafts[kind]
    seq = torch.cat([long_ids[0], torch.tensor(untied_ref["qwen3"].tokens[:12])])
    features = base.features(seq[None, :-1], tuple(draft.cfg.feature_layers)).features[0]
    ref = UnrolledDraft(draft, seq, features)

    def base_id(draft_id: int) -> int:
        return int(draft.to_base_ids(torch.tensor([draft_id]))[0])

    # the same EAGLE-2 expansion, fed by the reference outputs
    spec = TreeSpec("dynamic", max_depth=3, top_k=3, total_tokens=8)
    dyn = DraftProposer(draft, spec)
    dyn.start(seq[:-1], int(seq[-1]), features)
    seen: list[torch.Tensor] = []
    logits = draft.logits
    monkeypatch.setattr(draft, "logits", lambda h: seen.append(h.detach().clone()) or logits(h))
    tokens, parents = dyn.propose()
    monkeypatch.undo()
    rows: list[tuple[int, ...]] = []  # reference: path below the root of every expanded row

    def step(draft_ids: torch.Tensor, parent_rows: torch.Tensor) -> torch.Tensor:
        out = []
        for d, p in zip(draft_ids.tolist(), parent_rows.tolist()):
            rows.append((() if p < 0 else rows[p]) + (base_id(d),))
            out.append(ref.logprobs(rows[-1]))
        return torch.stack(out)

    ref_ids, ref_parents, _ = build_dynamic_tree(step, ref.logprobs(()), spec.top_k, spec.max_depth, spec.total_tokens)
    assert parents.tolist() == ref_parents.tolist()
    assert tokens.tolist() == [int(seq[-1])] + [base_id(d) for d in ref_ids[1:].tolist()]
    assert dyn.cache.get_seq_length() == dyn.committed == seq.shape[0] - 1
    assert len(seen) == spec.max_depth and len(rows) == (spec.max_depth - 1) * spec.top_k
    torch.testing.assert_close(seen[0][0], ref.output(()), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat(seen[1:]), torch.stack([ref.output(r) for r in rows]), atol=1e-4, rtol=1e-4)
