"""Decoder loop: greedy speculative decoding is exactly base-only greedy decoding, which is exactly
a plain (no cache) argmax loop and HF `generate`; accept lengths, stopping, errors, draft cache."""

from __future__ import annotations

import pytest
import torch
from conftest import DRAFT_KINDS, draft_modeling
from torch import nn
from transformers import AutoModelForCausalLM, DynamicCache

from specforge_het.inference.decoder import ContextTooLongError, Decoder
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.models.base import BaseModel
from specforge_het.models.build import build_draft
from specforge_het.testing import OracleProposer

FAMILIES = ("llama", "qwen3", "gemma3")
N_NEW = 32
PROMPT = "A draft tree is verified in one forward pass with a tree attention mask."
# ~40 tokens: with 40 new tokens Gemma3's sliding window (16) is crossed many times over.
LONG_PROMPT = "Explain how a transformer layer works, step by step. Write a short poem about the sea."

TREES = {
    "chain4": TreeSpec("chain", max_depth=4),
    "static_k2_d3": TreeSpec("static", static_tree="tree_k2_d3"),
    "static_eagle1_small": TreeSpec("static", static_tree="eagle1_small"),
    "dynamic": TreeSpec("dynamic", max_depth=4, top_k=3, total_tokens=10),
}
# trees whose rank-0 path is the greedy path, with their depth
ORACLE_TREES = {"chain4": 4, "static_k2_d3": 3, "dynamic": 4}


def reference_greedy(base, input_ids: torch.Tensor, n: int) -> list[int]:
    """Plain argmax loop: a full forward without cache over the whole sequence for every token."""
    ids, out = input_ids.clone(), []
    for _ in range(n):
        tok = int(base.features(ids, ()).logits[0, -1].argmax())
        out.append(tok)
        ids = torch.cat([ids, torch.tensor([[tok]])], dim=1)
    return out


def untied_head_base(path: str, tokenizer, std: float = 0.5, seed: int = 1) -> BaseModel:
    """The tiny base with an untied random LM head: its greedy text no longer just repeats the
    last token, so equality checks cover sequences of many distinct tokens."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    with torch.no_grad():
        head.weight.normal_(0, std, generator=torch.Generator().manual_seed(seed))
    model.lm_head = head
    model.config.tie_word_embeddings = False
    return BaseModel(model, tokenizer, name=f"{path}-untied")


def first_occurrences(tokens: list[int]) -> list[int]:
    """Indices j where tokens[j] appears for the first time."""
    return [j for j, t in enumerate(tokens) if t not in tokens[:j]]


def step_ends(accept_lengths: list[int]) -> list[int]:
    """Number of new tokens committed after each verify step (the root counts as 1)."""
    ends, n = [], 1
    for a in accept_lengths:
        n += a
        ends.append(n)
    return ends


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def prompt_ids(tok_a):
    return tok_a(PROMPT, return_tensors="pt").input_ids


@pytest.fixture(scope="module")
def long_ids(tok_a):
    return tok_a(LONG_PROMPT, return_tensors="pt").input_ids


@pytest.fixture(scope="module")
def drafts(bases, tok_b_dir):
    """(family, draft kind) -> a random (untrained) draft, built once."""
    return {
        (fam, kind): build_draft(draft_modeling(**spec, tok_dir=tok_b_dir), bases[fam], seed=0).eval()
        for fam in FAMILIES
        for kind, spec in DRAFT_KINDS.items()
    }


@pytest.fixture(scope="module")
def greedy_ref(bases, prompt_ids):
    """family -> base-only greedy result on PROMPT (N_NEW tokens)."""
    return {fam: Decoder(bases[fam]).generate(prompt_ids, N_NEW) for fam in FAMILIES}


@pytest.fixture(scope="module")
def untied(base_dirs, tok_a):
    return {fam: untied_head_base(base_dirs[fam], tok_a) for fam in FAMILIES}


@pytest.fixture(scope="module")
def untied_ref(untied, long_ids):
    """family -> base-only greedy tokens of the untied-head base on LONG_PROMPT (40 tokens)."""
    return {fam: Decoder(untied[fam]).generate(long_ids, 40) for fam in FAMILIES}


# ---------------------------------------------------------------- base-only is right


@pytest.mark.parametrize("family", FAMILIES)
def test_base_only_greedy_matches_plain_forward_and_hf_generate(bases, long_ids, family):
    base, n = bases[family], 40
    if family == "gemma3":
        assert base.sliding_window == 16
        assert long_ids.shape[1] > 2 * base.sliding_window  # the window slides during prefill and decoding
    res = Decoder(base).generate(long_ids, n)
    assert len(res.tokens) == n and not res.stopped_at_eos
    assert res.accept_lengths == [1] * (n - 1)
    assert res.tokens == reference_greedy(base, long_ids, n)
    hf = base.model.generate(long_ids, attention_mask=torch.ones_like(long_ids), max_new_tokens=n,
                             do_sample=False, pad_token_id=base.tokenizer.pad_token_id)
    assert res.tokens == hf[0, long_ids.shape[1]:].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_base_only_greedy_matches_plain_forward_untied_head(untied, untied_ref, long_ids, family):
    tokens = untied_ref[family].tokens
    assert len(set(tokens)) >= 5  # not a single repeated token
    assert tokens == reference_greedy(untied[family], long_ids, 40)


# ---------------------------------------------------------------- speculative == base-only


@pytest.mark.parametrize("tree", list(TREES))
@pytest.mark.parametrize("kind", list(DRAFT_KINDS))
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_speculative_equals_base_only(bases, drafts, greedy_ref, prompt_ids, family, kind, tree):
    proposer = DraftProposer(drafts[(family, kind)], TREES[tree])
    res = Decoder(bases[family], proposer).generate(prompt_ids, N_NEW)
    ref = greedy_ref[family]
    assert res.tokens == ref.tokens
    assert res.stopped_at_eos == ref.stopped_at_eos
    assert len(res.tokens) == N_NEW
    assert res.steps >= 1 and all(1 <= a <= proposer.depth() + 1 for a in res.accept_lengths)
    assert res.mean_accept_length < 1.5  # an untrained draft is (almost) never right


def test_gemma3_sliding_window_speculative_equals_base_only(bases, drafts, long_ids):
    base, n = bases["gemma3"], 40
    ref = reference_greedy(base, long_ids, n)
    assert Decoder(base).generate(long_ids, n).tokens == ref
    oracle = Decoder(base, OracleProposer(base, TREES["dynamic"])).generate(long_ids, n)
    assert oracle.tokens == ref
    assert oracle.accept_lengths == [5] * len(oracle.accept_lengths)
    for kind in DRAFT_KINDS:
        for tree in ("chain4", "dynamic"):
            res = Decoder(base, DraftProposer(drafts[("gemma3", kind)], TREES[tree])).generate(long_ids, n)
            assert res.tokens == ref, (kind, tree)


@pytest.mark.parametrize("family", FAMILIES)
def test_speculative_equals_base_only_on_varied_text(untied, untied_ref, long_ids, tok_b_dir, family):
    """Same equality on a base whose greedy text has many distinct tokens (untied random head)."""
    base, ref = untied[family], untied_ref[family].tokens
    for tree in ("chain4", "dynamic"):
        res = Decoder(base, OracleProposer(base, TREES[tree])).generate(long_ids, 40)
        assert res.tokens == ref, tree
        assert res.accept_lengths == [5] * len(res.accept_lengths), tree
    for kind in ("eagle_v2", "foreign_v3"):
        draft = build_draft(draft_modeling(**DRAFT_KINDS[kind], tok_dir=tok_b_dir), base, seed=0).eval()
        for tree in ("static_eagle1_small", "dynamic"):
            res = Decoder(base, DraftProposer(draft, TREES[tree])).generate(long_ids, 40)
            assert res.tokens == ref, (kind, tree)


# ---------------------------------------------------------------- accept lengths


@pytest.mark.parametrize("fast_paths", ["auto", "off"])  # off: LM head over all tree rows, plain linears
@pytest.mark.parametrize("tree", list(ORACLE_TREES))
@pytest.mark.parametrize("family", FAMILIES)
def test_oracle_accepts_full_depth(bases, greedy_ref, prompt_ids, family, tree, fast_paths):
    depth = ORACLE_TREES[tree]
    proposer = OracleProposer(bases[family], TREES[tree])
    assert proposer.depth() == depth
    res = Decoder(bases[family], proposer, fast_paths=fast_paths).generate(prompt_ids, N_NEW)
    assert res.tokens == greedy_ref[family].tokens
    assert res.accept_lengths[:-1] == [depth + 1] * (res.steps - 1)
    assert 1 <= res.accept_lengths[-1] <= depth + 1
    assert res.steps == -(-(N_NEW - 1) // (depth + 1))  # ceil((N_NEW - 1) / (depth + 1))


def sometimes_right(base, tree: TreeSpec, bad: int):
    """The oracle, but on every other step (the 2nd, 4th, ...) every draft token at depth >= 2 is
    replaced by `bad`: those steps can accept only the first draft token."""
    proposer = OracleProposer(base, tree)
    propose, calls = proposer.propose, []

    def corrupted():
        tokens, parents = propose()
        calls.append(1)
        if len(calls) % 2 == 0:
            depth = [0] * len(parents)
            for i, p in enumerate(parents.tolist()[1:], start=1):
                depth[i] = depth[p] + 1
            tokens = tokens.clone()
            tokens[torch.tensor(depth) >= 2] = bad
        return tokens, parents

    proposer.propose = corrupted
    return proposer


@pytest.mark.parametrize("fast_paths", ["auto", "off"])
@pytest.mark.parametrize("tree", list(ORACLE_TREES))
@pytest.mark.parametrize("family", ("qwen3", "gemma3"))
def test_sometimes_right_draft(untied, untied_ref, long_ids, tok_a, family, tree, fast_paths):
    base, ref, depth = untied[family], untied_ref[family].tokens, ORACLE_TREES[tree]
    bad = tok_a.pad_token_id
    assert bad not in ref
    res = Decoder(base, sometimes_right(base, TREES[tree], bad), fast_paths=fast_paths).generate(long_ids, 40)
    assert res.tokens == ref
    want = [depth + 1 if i % 2 == 0 else 2 for i in range(res.steps)]
    assert res.accept_lengths == want
    assert 1 < res.mean_accept_length < depth + 1


# ---------------------------------------------------------------- stopping


@pytest.mark.parametrize("family", ("qwen3", "gemma3"))
def test_stops_right_after_eos_even_mid_step(untied, untied_ref, long_ids, family):
    base, ref = untied[family], untied_ref[family].tokens
    oracle = Decoder(base, OracleProposer(base, TREES["chain4"]))
    # an index that is a first occurrence and not the last token of its verify step (5 tokens/step)
    candidates = [j for j in first_occurrences(ref) if j >= 2 and j % 5 != 0]
    assert candidates, ref
    j = candidates[0]
    eos = {ref[j]}
    for decoder in (Decoder(base), oracle):
        decoder.eos = eos  # the decoder's set of stop tokens
        res = decoder.generate(long_ids, 40)
        assert res.tokens == ref[: j + 1]
        assert res.tokens[-1] == ref[j]
        assert res.stopped_at_eos
    # the speculative step that produced the EOS also committed tokens beyond it
    assert step_ends(res.accept_lengths)[-1] > j + 1
    assert res.steps == -(-j // 5)


def test_stops_at_eos_at_position_5(bases, greedy_ref, prompt_ids, monkeypatch):
    """The brief's case on the shared qwen3 base: EOS = the base-only token at position 5."""
    base = bases["qwen3"]
    ref = greedy_ref["qwen3"].tokens
    assert ref[5] not in ref[:5]  # so the first EOS is at position 5
    for proposer in (None, OracleProposer(base, TREES["static_k2_d3"])):
        decoder = Decoder(base, proposer)
        monkeypatch.setattr(decoder, "eos", {ref[5]})
        res = decoder.generate(prompt_ids, N_NEW)
        assert len(res.tokens) == 6 and res.tokens == ref[:6]
        assert res.stopped_at_eos
        if proposer is not None:  # tree_k2_d3 commits 4 tokens per step: positions 1-4, 5-8
            assert res.accept_lengths == [4, 4]


def test_eos_in_overshoot_beyond_max_new_tokens_is_not_reported(untied, untied_ref, long_ids):
    """A verify step may commit tokens past max_new_tokens; an EOS among those cut-off tokens is
    not part of the result, so `stopped_at_eos` must be False, as in base-only decoding."""
    base, ref = untied["qwen3"], untied_ref["qwen3"].tokens
    candidates = [j for j in first_occurrences(ref) if j >= 2 and j % 5 != 1]  # not the 1st token of a step
    assert candidates, ref
    j = candidates[0]
    for proposer in (None, OracleProposer(base, TREES["chain4"])):
        decoder = Decoder(base, proposer)
        decoder.eos = {ref[j]}
        res = decoder.generate(long_ids, j)  # stop just before the EOS
        assert res.tokens == ref[:j]
        assert not res.stopped_at_eos, "stopped_at_eos is True but the EOS is not in the tokens"


def test_deep_tree_stops_at_eos_without_extra_steps(untied, untied_ref, long_ids):
    """With 10 tokens committed per step (chain depth 9), an EOS early in a step must still end
    decoding after that step: no further verify steps are run (nor counted in accept_lengths)."""
    base, ref = untied["qwen3"], untied_ref["qwen3"].tokens
    # the 1st/2nd token of a step, and not repeated later in that step: 8+ other tokens follow it
    candidates = [j for j in first_occurrences(ref)
                  if j >= 1 and (j - 1) % 10 <= 1 and ref[j] not in ref[j + 1: -(-j // 10) * 10 + 1]]
    assert candidates, ref
    j = candidates[0]
    decoder = Decoder(base, OracleProposer(base, TreeSpec("chain", max_depth=9)))
    decoder.eos = {ref[j]}
    res = decoder.generate(long_ids, 40)
    assert res.tokens == ref[: j + 1] and res.stopped_at_eos
    assert res.steps == -(-j // 10), f"EOS committed in step {-(-j // 10)} but decoding ran {res.steps} steps"


@pytest.mark.parametrize("n", [1, 2, 7])
def test_stops_at_max_new_tokens(bases, drafts, greedy_ref, prompt_ids, n):
    base = bases["llama"]
    for proposer in (None, OracleProposer(base, TREES["chain4"]),
                     DraftProposer(drafts[("llama", "eagle_v3_reduced")], TREES["dynamic"])):
        res = Decoder(base, proposer).generate(prompt_ids, n)
        assert len(res.tokens) == n
        assert res.tokens == greedy_ref["llama"].tokens[:n]
        assert not res.stopped_at_eos
        if n == 1:
            assert res.steps == 0  # the prefill alone gives the first token


# ---------------------------------------------------------------- errors


def test_prompt_longer_than_context(bases, drafts, tok_a, monkeypatch):
    base = bases["llama"]
    monkeypatch.setattr(base.config, "max_position_embeddings", 32)
    long_prompt = tok_a(LONG_PROMPT, return_tensors="pt").input_ids
    assert long_prompt.shape[1] > 32
    for proposer in (None, DraftProposer(drafts[("llama", "eagle_v2")], TREES["chain4"])):
        with pytest.raises(ContextTooLongError) as err:
            Decoder(base, proposer).generate(long_prompt, 8)
        msg = str(err.value)
        assert "Shorten the prompt" in msg and "max_new_tokens" in msg
        assert isinstance(err.value, ValueError)
    # a prompt that fits, but not with max_new_tokens (+ the draft lookahead) on top
    short = long_prompt[:, :20]
    assert len(Decoder(base).generate(short, 12).tokens) == 12  # 20 + 12 = 32 fits exactly
    with pytest.raises(ContextTooLongError, match="max_new_tokens"):
        Decoder(base).generate(short, 13)
    with pytest.raises(ContextTooLongError, match="draft tokens"):
        Decoder(base, DraftProposer(drafts[("llama", "eagle_v2")], TREES["chain4"])).generate(short, 12)


def test_batch_size_above_one_rejected(bases, drafts, prompt_ids):
    batch = prompt_ids.repeat(2, 1)
    for proposer in (None, DraftProposer(drafts[("llama", "eagle_v2")], TREES["chain4"])):
        with pytest.raises(ValueError, match="batch size 1"):
            Decoder(bases["llama"], proposer).generate(batch, 4)
    with pytest.raises(ValueError, match="batch size 1"):
        Decoder(bases["llama"]).generate(prompt_ids[0], 4)  # 1-D input


# ---------------------------------------------------------------- draft cache bookkeeping


@pytest.mark.parametrize("kind", list(DRAFT_KINDS))
def test_draft_cache_bookkeeping(bases, drafts, greedy_ref, prompt_ids, kind, monkeypatch):
    """Draft position i holds (token_{i+1}, base feature_i): after prompt (n tokens) + g new tokens
    the draft holds the pairs for tokens 1 .. n+g-1, i.e. n+g-1 pairs -- as many entries as the
    base cache, which holds the prompt and every new token but the last (not yet verified)."""
    base = bases["llama"]
    caches: list[DynamicCache] = []

    def new_cache(capacity=0):
        caches.append(DynamicCache())
        return caches[-1]

    monkeypatch.setattr(base, "new_cache", new_cache)
    proposer = DraftProposer(drafts[("llama", kind)], TREES["dynamic"])
    n, g = prompt_ids.shape[1], 20
    res = Decoder(base, proposer).generate(prompt_ids, g)
    committed = 1 + sum(res.accept_lengths)  # new tokens committed, incl. any cut at max_new_tokens
    assert res.tokens == greedy_ref["llama"].tokens[:g]
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
    fresh = DraftProposer(drafts[("llama", kind)], TREES["dynamic"])
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
