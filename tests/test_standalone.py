"""The standalone draft (algorithms/standalone): a small HF causal LM of any family and tokenizer as the
draft. Greedy speculative output equals base-only greedy output; the draft's context is the draft
tokenizer's spelling of the committed text; proposals hold shared-vocabulary base ids in a valid tree."""

from __future__ import annotations

import pytest
import torch

from specforge_het.algorithms.standalone import SharedVocab, StandaloneProposer
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.proposer import TreeSpec
from specforge_het.inference.protocol import Proposal, Proposer
from specforge_het.inference.tree import check_parents
from specforge_het.models.adapters import token_strings
from specforge_het.models.base import BaseModel
from specforge_het.testing import CORPUS_B, make_tokenizer, tiny_base

N_NEW = 32
TREES = {
    "chain4": TreeSpec("chain", max_depth=4),
    "dynamic": TreeSpec("dynamic", max_depth=4, top_k=3, total_tokens=10),
}
FULL_TREE = TreeSpec("dynamic", max_depth=4, top_k=3, total_tokens=40)  # every candidate kept: depth 4 reached
# pair -> (base family, draft family, draft tokenizer: "a" the base's, "c" a foreign one)
PAIRS = {"same_tokenizer": ("llama", "qwen3", "a"), "foreign": ("llama", "gemma3", "c"),
         "foreign_gemma3_base": ("gemma3", "llama", "c")}


def foreign_tokenizer():
    """Another corpus, and enough merges (400 tokens) that it splits words unlike the base tokenizer."""
    return make_tokenizer(CORPUS_B, 400)


def draft_lm(family: str, tokenizer, seed: int) -> BaseModel:
    """A tiny random draft LM, narrower and shallower than the bases."""
    return BaseModel(tiny_base(family, tokenizer, hidden=32, layers=2, seed=seed), tokenizer, name=f"draft-{family}")


def respelled_vocab(base: BaseModel) -> SharedVocab:
    """The base's own vocabulary, declared foreign: the draft reads the re-encoded text, not the base's ids."""
    ids = torch.arange(base.vocab_size)
    return SharedVocab(ids, ids.clone(), base.vocab_size, identity=False)


@pytest.fixture(scope="module")
def tok_c():
    return foreign_tokenizer()


@pytest.fixture(scope="module")
def pairs(bases, tok_a, tok_c):
    toks = {"a": tok_a, "c": tok_c}
    return {name: (bases[b], draft_lm(d, toks[t], seed=5 + i)) for i, (name, (b, d, t)) in enumerate(PAIRS.items())}


# ---------------------------------------------------------------- greedy == base-only


@pytest.mark.parametrize("tree", list(TREES))
@pytest.mark.parametrize("pair", list(PAIRS))
def test_greedy_speculative_equals_base_only(pairs, prompt_ids, pair, tree):
    base, draft = pairs[pair]
    proposer = StandaloneProposer.for_base(base, draft, TREES[tree])
    assert isinstance(proposer, Proposer) and proposer.vocab.identity == (pair == "same_tokenizer")
    ref = Decoder(base).generate(prompt_ids, N_NEW)
    res = Decoder(base, proposer).generate(prompt_ids, N_NEW)
    assert res.tokens == ref.tokens
    assert all(1 <= a <= proposer.depth() + 1 for a in res.accept_lengths)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_self_draft_accepts_full_depth(untied, long_ids, family):
    """The base as its own draft (same tokenizer): every step accepts the whole chain / the full tree's depth,
    past Gemma3's sliding window (16) too; cache rollback, positions and tree masks are right at every level."""
    base = untied[family]
    ref = Decoder(base).generate(long_ids, 40).tokens
    assert len(set(ref)) >= 5
    for tree in (TREES["chain4"], FULL_TREE):
        res = Decoder(base, StandaloneProposer.for_base(base, base, tree)).generate(long_ids, 40)
        assert res.tokens == ref, tree
        assert res.accept_lengths[:-1] == [5] * (res.steps - 1), tree


def test_respelled_self_draft_equals_base_only_and_is_accepted(bases, prompt_ids, long_ids):
    """The base as its own draft through the re-spelling path (the text re-encoded, the draft's own ids): same
    output, and whole chains accepted where the base's spelling is the canonical one."""
    full_chains = 0
    for family in ("llama", "gemma3"):
        base = bases[family]
        for ids in (prompt_ids, long_ids):
            ref = Decoder(base).generate(ids, N_NEW).tokens
            proposer = StandaloneProposer(base, base.tokenizer, base.vocab_size, TREES["chain4"],
                                          vocab=respelled_vocab(base))
            res = Decoder(base, proposer).generate(ids, N_NEW)
            assert res.tokens == ref, family
            full_chains += res.accept_lengths.count(5)
    assert full_chains >= 5


# ---------------------------------------------------------------- the draft's context


def odd_split(tokenizer, text: str) -> list[int]:
    """Base ids of `text` encoded in chunks of 1, 2, 3, 1, 2, 3 ... characters: word splits no tokenizer makes."""
    ids, i, size = [], 0, 1
    while i < len(text):
        ids += tokenizer.encode(text[i: i + size], add_special_tokens=False)
        i, size = i + size, size % 3 + 1
    return ids


def test_draft_context_is_the_draft_spelling_of_the_committed_text(pairs, tok_a, tok_c):
    base, draft = pairs["foreign"]
    proposer = StandaloneProposer.for_base(base, draft, TREES["dynamic"])
    base_ids = odd_split(tok_a, "The lazy dog sleeps while the quick fox runs, café crème.")
    proposer.start(torch.tensor(base_ids[:3]), base_ids[3], None)
    committed, rewrites = base_ids[:4], 0
    steps = [1, 2, 1, 3, 1, 1, 2, 4, 1, 1]
    for i in range(len(base_ids)):
        new = base_ids[len(committed): len(committed) + steps[i % len(steps)]]
        if not new:
            break
        before = list(proposer.draft_ids)
        if i % 2:
            proposer.propose()  # a tree fed and rolled back in between
        proposer.update(torch.tensor(new), None)
        committed += new
        want = tok_c.encode(tok_a.decode(committed, clean_up_tokenization_spaces=False), add_special_tokens=False)
        assert proposer.draft_ids == want
        assert proposer.context.base_ids == committed
        assert proposer.context.length == len(want)  # one cache entry per draft id
        rewrites += want[: len(before)] != before  # an earlier draft token was re-spelt
        fresh = draft.features(torch.tensor([want]), ()).logits[0, -1]
        torch.testing.assert_close(proposer.context.root_logits, fresh, atol=1e-4, rtol=1e-4)
    assert len(committed) == len(base_ids) and rewrites >= 3
    assert "\ufffd" in "".join(tok_a.decode([t]) for t in base_ids)  # a character split over base tokens


def test_same_tokenizer_context_is_the_base_ids(pairs):
    base, draft = pairs["same_tokenizer"]
    proposer = StandaloneProposer.for_base(base, draft, TREES["chain4"])
    proposer.start(torch.tensor([5, 6, 7]), 8, None)
    proposer.propose()
    proposer.update(torch.tensor([9, 10]), None)
    assert proposer.draft_ids == [5, 6, 7, 8, 9, 10] and proposer.context.length == 6


# ---------------------------------------------------------------- proposals and the shared vocabulary


def check_proposal(p: Proposal, root: int, vocab: SharedVocab, tree: TreeSpec) -> None:
    par, tok = check_parents(p.parents), p.tokens.tolist()
    assert tok[0] == root and 2 <= len(tok) <= tree.total_tokens
    assert set(tok[1:]) <= set(vocab.base_ids.tolist())
    depth = [0] * len(par)
    for i in range(1, len(par)):
        depth[i] = depth[par[i]] + 1
    assert max(depth) <= tree.max_depth
    for node in range(len(tok)):
        kids = [tok[i] for i in range(1, len(tok)) if par[i] == node]
        assert len(set(kids)) == len(kids) <= tree.top_k


@pytest.mark.parametrize("sampling", [False, True])
@pytest.mark.parametrize("pair", list(PAIRS))
def test_proposals_hold_shared_base_ids_in_a_valid_tree(pairs, prompt_ids, pair, sampling):
    base, draft = pairs[pair]
    tree = TREES["dynamic"]
    gen = torch.Generator().manual_seed(0) if sampling else None
    proposer = StandaloneProposer.for_base(base, draft, tree, temperature=1.0 if sampling else 0.0, generator=gen)
    proposer.start(prompt_ids[0], 11, None)
    for step in range(4):
        p = proposer.propose()
        check_proposal(p, proposer.context.base_ids[-1], proposer.vocab, tree)
        assert proposer.context.length == len(proposer.draft_ids)  # rolled back to the committed context
        if sampling:
            q = p.draft_probs
            assert q.shape == (p.size, base.vocab_size)
            torch.testing.assert_close(q.sum(-1), torch.ones(p.size))
            outside = torch.ones(base.vocab_size, dtype=torch.bool)
            outside[proposer.vocab.base_ids] = False
            assert float(q[:, outside].abs().sum()) == 0.0
            for i in range(1, p.size):  # every child has probability under its parent's q
                assert float(q[p.parents[i], p.tokens[i]]) > 0
        else:
            assert p.draft_probs is None
        proposer.update(p.tokens[1:2] if step % 2 else torch.tensor([int(p.tokens[-1]), 12]), None)


def test_draws_past_the_support_of_q_are_dropped(pairs, prompt_ids):
    """At a tiny temperature q is one-hot in float32: one child per node can be drawn, the other slots of
    the dynamic tree are dropped, and what is left is a chain of the draft's argmax tokens."""
    base, draft = pairs["foreign"]
    tree = TREES["dynamic"]
    sampled = StandaloneProposer.for_base(base, draft, tree, temperature=1e-4, generator=torch.Generator())
    greedy = StandaloneProposer.for_base(base, draft, TreeSpec("chain", max_depth=tree.max_depth))
    for proposer in (sampled, greedy):
        proposer.start(prompt_ids[0], 11, None)
    p, chain = sampled.propose(), greedy.propose()
    check_proposal(p, 11, sampled.vocab, tree)
    assert p.parents.tolist() == list(range(-1, p.size - 1)) and p.tokens.tolist() == chain.tokens.tolist()
    assert bool((p.draft_probs[:-1].max(-1).values == 1).all())


def test_shared_vocabulary(tok_a, tok_c):
    same = SharedVocab.build(tok_a, tok_a, len(tok_a), len(tok_a) + 7)
    assert same.identity and same.base_ids.tolist() == list(range(len(tok_a)))
    foreign = SharedVocab.build(tok_a, tok_c, len(tok_a), len(tok_c))
    assert not foreign.identity and 50 < foreign.size < len(tok_c)
    assert len(set(foreign.base_ids.tolist())) == foreign.size  # q scatters onto base ids without collisions
    sa, sb = token_strings(tok_a), token_strings(tok_c)
    for d, b in zip(foreign.draft_ids.tolist(), foreign.base_ids.tolist()):
        assert sb[d] == sa[b] or tok_c.convert_ids_to_tokens(d) == tok_a.convert_ids_to_tokens(b)
    assert (tok_c.eos_token_id, tok_a.eos_token_id) in set(zip(foreign.draft_ids.tolist(), foreign.base_ids.tolist()))
    probs = torch.softmax(torch.randn(2, foreign.size), -1)
    scattered = foreign.to_base_probs(probs)
    torch.testing.assert_close(scattered[:, foreign.base_ids], probs)
    small = SharedVocab.build(tok_a, tok_c, 100, 90)  # LM heads smaller than the tokenizers: only rows both have
    assert bool((small.base_ids < 100).all() and (small.draft_ids < 90).all())


def test_bad_arguments_are_refused(pairs):
    base, draft = pairs["foreign"]
    with pytest.raises(ValueError, match="Generator"):
        StandaloneProposer.for_base(base, draft, TREES["dynamic"], temperature=1.0)
    with pytest.raises(ValueError, match="chain or dynamic"):
        StandaloneProposer.for_base(base, draft, TreeSpec("static", static_tree="tree_k2_d3"))


# ---------------------------------------------------------------- feeding a tree level over cached tree rows


@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_past_mask_feeds_a_level_as_refeeding_its_ancestors_does(bases, long_ids, family, lean):
    """A tree level fed alone, seeing the committed entries and its ancestors among the cached tree rows
    (`past_mask`, `past_positions`), gives the hidden states of feeding it together with its ancestors; past
    Gemma3's sliding window (16) too, through the lean forward (KVCache) and HF's (HFCache)."""
    from specforge_het.models.cache import HFCache

    base = bases[family]
    ids, m = long_ids[0], long_ids.shape[1]
    level1, level2 = torch.tensor([7, 9]), torch.tensor([11, 13])  # children of the root; of 7 and of 9
    eye = torch.eye(2, dtype=torch.bool)

    def committed():
        cache = base.new_cache() if lean else HFCache()
        base(ids[None], cache, logits="none")
        return cache

    both = torch.eye(4, dtype=torch.bool)  # ancestor-or-self: level 2 sees its parent
    both[2:, :2] = eye
    positions = torch.tensor([m, m, m + 1, m + 1])
    ref = base(torch.cat([level1, level2])[None], committed(), positions, both, logits="none").hidden[0, 2:]
    cache = committed()
    base(level1[None], cache, positions[:2], eye, logits="none")
    seen = torch.cat([torch.ones(2, m, dtype=torch.bool), eye], dim=1)
    past_pos = torch.cat([torch.arange(m), positions[:2]])
    got = base(level2[None], cache, positions[2:], eye, logits="none", past_mask=seen, past_positions=past_pos)
    torch.testing.assert_close(got.hidden[0], ref, atol=1e-5, rtol=1e-5)
    assert cache.get_seq_length() == m + 4
    with pytest.raises(ValueError, match=r"past_mask has shape \(2, 3\); it must be \[S, past\]"):
        base(level2[None], cache, logits="none", past_mask=seen[:, :3])
    with pytest.raises(ValueError, match=r"past_positions has shape \(3,\); it must be \[past\]"):
        base(level2[None], cache, logits="none", past_positions=past_pos[:3])
