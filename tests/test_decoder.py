"""Decoder loop: greedy speculative decoding is exactly base-only greedy decoding, which is exactly
a plain (no cache) argmax loop and HF `generate`; accept lengths, stopping, errors (DraftProposer itself: test_proposer.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import DRAFT_KINDS, LONG_PROMPT, draft_modeling

from specforge_het.algorithms.build import build_draft
from specforge_het.inference.decoder import ContextTooLongError, Decoder
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.inference.protocol import Proposal, Proposer
from specforge_het.testing import OracleProposer

FAMILIES = ("llama", "qwen3", "gemma3")
N_NEW = 32

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


# ---------------------------------------------------------------- fixtures (prompt_ids, long_ids: conftest)


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
    """family -> base-only greedy result on conftest.PROMPT (N_NEW tokens)."""
    return {fam: Decoder(bases[fam]).generate(prompt_ids, N_NEW) for fam in FAMILIES}


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


class SometimesRight:
    """The oracle, but on every other step (the 2nd, 4th, ...) every draft token at depth >= 2 is
    replaced by `bad`: those steps can accept only the first draft token. A plain Proposer."""

    feature_layers = ()

    def __init__(self, base, tree: TreeSpec, bad: int):
        self.oracle, self.bad, self.calls = OracleProposer(base, tree), bad, 0

    def use_fast_paths(self, fast) -> None:
        self.oracle.use_fast_paths(fast)

    def depth(self) -> int:
        return self.oracle.depth()

    def start(self, prompt_ids, root, features) -> None:
        self.oracle.start(prompt_ids, root, features)

    def update(self, next_tokens, features) -> None:
        self.oracle.update(next_tokens, features)

    def propose(self) -> Proposal:
        proposal = self.oracle.propose()
        self.calls += 1
        if self.calls % 2:
            return proposal
        depth = [0] * proposal.size
        for i, p in enumerate(proposal.parents.tolist()[1:], start=1):
            depth[i] = depth[p] + 1
        tokens = proposal.tokens.clone()
        tokens[torch.tensor(depth) >= 2] = self.bad
        return Proposal(tokens, proposal.parents)


@pytest.mark.parametrize("fast_paths", ["auto", "off"])
@pytest.mark.parametrize("tree", list(ORACLE_TREES))
@pytest.mark.parametrize("family", ("qwen3", "gemma3"))
def test_sometimes_right_draft(untied, untied_ref, long_ids, tok_a, family, tree, fast_paths):
    base, ref, depth = untied[family], untied_ref[family].tokens, ORACLE_TREES[tree]
    bad = tok_a.pad_token_id
    assert bad not in ref
    proposer = SometimesRight(base, TREES[tree], bad)
    assert isinstance(proposer, Proposer)
    res = Decoder(base, proposer, fast_paths=fast_paths).generate(long_ids, 40)
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


def test_foreign_vocab_cut_to_the_most_frequent_rows_decodes_losslessly(bases, tok_b_dir, long_ids):
    """--modeling.draft_vocab_size on a foreign vocabulary keeps the rows whose base ids the training data
    uses most; the smaller head still decodes exactly the base-only greedy text."""
    base = bases["llama"]
    full = build_draft(draft_modeling(**DRAFT_KINDS["foreign_v3"], tok_dir=tok_b_dir, draft_vocab_size=10**6), base,
                       torch.ones(base.vocab_size), seed=0)
    d2t = full.vocab.d2t
    counts = torch.zeros(base.vocab_size)
    favourite = d2t[torch.randperm(d2t.numel(), generator=torch.Generator().manual_seed(0))[:12]]
    counts[favourite] = torch.arange(12, 0, -1).float()  # twelve rows used, the first most often
    cut = build_draft(draft_modeling(**DRAFT_KINDS["foreign_v3"], tok_dir=tok_b_dir, draft_vocab_size=8), base, counts,
                      seed=0).eval()
    assert sorted(cut.vocab.d2t.tolist()) == sorted(favourite[:8].tolist())
    keep = torch.isin(d2t, favourite[:8])
    assert torch.equal(cut.vocab.draft_token_ids, full.vocab.draft_token_ids[keep])  # rows kept in order
    ref = Decoder(base).generate(long_ids, 30).tokens
    for tree in ("chain4", "dynamic"):
        assert Decoder(base, DraftProposer(cut, TREES[tree])).generate(long_ids, 30).tokens == ref, tree
