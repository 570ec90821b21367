"""The prompt-lookup branch: the n-gram search and the tree merge are pure and exact, and decoding
with the branch (alone or on top of a draft tree) is token for token base-only greedy decoding.
The sampling side (lossless with the branch) is in test_sampling.py."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import DRAFT_KINDS, draft_modeling, ids_fixture

from specforge_het.algorithms.build import build_draft
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.lookup import LookupProposer, lookup_continuation
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.inference.tree import check_parents, merge_chain

FAMILIES = ("llama", "qwen3", "gemma3")
PROMPT = "The quick brown fox jumps over the lazy dog. The quick brown fox"


# ---------------------------------------------------------------- pure functions


def test_lookup_continuation_takes_the_latest_longest_match():
    ctx = [1, 2, 3, 9, 1, 2, 4, 5, 1, 2]
    assert lookup_continuation(ctx, 2, 3) == [4, 5, 1]  # latest earlier "1 2" is at 4, not 0
    assert lookup_continuation(ctx, 2, 1) == [4]
    assert lookup_continuation([7, 1, 2, 3, 8, 2, 3], 3, 4) == [8, 2, 3]  # "8 2 3" never occurred before; "2 3" did, at 2
    assert lookup_continuation([5, 6, 7, 6], 3, 2) == [7, 6]  # only the 1-gram "6" matches
    assert lookup_continuation([1, 2, 3, 4], 3, 5) == []  # no earlier occurrence
    assert lookup_continuation([4, 4, 4], 2, 5) == [4]  # "4 4" at 0 -> what followed it
    assert lookup_continuation([3], 2, 5) == []
    assert lookup_continuation([1, 1], 2, 0) == []


def test_lookup_continuation_prefers_longer_ngrams():
    ctx = [1, 2, 3, 10, 11, 0, 3, 20, 2, 3]
    assert lookup_continuation(ctx, 1, 2) == [20, 2]  # "3" latest at 6
    assert lookup_continuation(ctx, 2, 2) == [10, 11]  # "2 3" only at 1


def _random_tree(rng: random.Random, n: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random tree in topological order whose siblings have distinct tokens."""
    par, tok, used = [-1], [rng.randrange(vocab)], {}
    while len(par) < n:
        p = rng.randrange(len(par))
        free = [t for t in range(vocab) if t not in used.setdefault(p, set())]
        if not free:
            continue
        t = rng.choice(free)
        used[p].add(t)
        par.append(p)
        tok.append(t)
    return torch.tensor(tok), torch.tensor(par)


def _root_paths(tokens: list[int], par: list[int]) -> set[tuple[int, ...]]:
    out = set()
    for i in range(1, len(par)):
        path, j = [], i
        while j > 0:
            path.append(tokens[j])
            j = par[j]
        out.add(tuple(reversed(path)))
    return out


def test_merge_chain_adds_exactly_the_chain_as_a_root_path():
    rng = random.Random(0)
    for _ in range(300):
        tokens, parents = _random_tree(rng, rng.randrange(1, 12), 4)
        chain = [rng.randrange(4) for _ in range(rng.randrange(0, 6))]
        new_t, new_p = merge_chain(tokens, parents, chain)
        par, tok = check_parents(new_p), new_t.tolist()
        assert tok[: tokens.numel()] == tokens.tolist() and par[: parents.numel()] == parents.tolist()
        siblings = [(par[i], tok[i]) for i in range(1, len(par))]
        assert len(siblings) == len(set(siblings))  # the acceptance rules need distinct siblings
        before = _root_paths(tokens.tolist(), parents.tolist())
        after = _root_paths(tok, par)
        assert after == before | {tuple(chain[:k]) for k in range(1, len(chain) + 1)}
        assert len(par) - parents.numel() == len(after) - len(before)  # one new node per new path


def test_merge_chain_reuses_drafted_nodes():
    tokens, parents = torch.tensor([0, 5, 6, 7]), torch.tensor([-1, 0, 1, 0])
    t, p = merge_chain(tokens, parents, [5, 6, 8, 9])
    assert t.tolist() == [0, 5, 6, 7, 8, 9] and p.tolist() == [-1, 0, 1, 0, 2, 4]
    t, p = merge_chain(tokens, parents, [5, 6])
    assert t is tokens and p is parents


# ---------------------------------------------------------------- decoding


prompt_ids = ids_fixture(PROMPT)


@pytest.fixture(scope="module")
def refs(bases, prompt_ids):
    return {fam: Decoder(bases[fam]).generate(prompt_ids, 40) for fam in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_lookup_alone_equals_base_only_and_is_accepted(bases, refs, prompt_ids, family):
    proposer = LookupProposer(None, 6, 3)
    res = Decoder(bases[family], proposer).generate(prompt_ids, 40)
    assert res.tokens == refs[family].tokens
    assert proposer.depth() == 6 and max(res.accept_lengths) <= 7
    # the tiny tied-head bases repeat themselves, so copied tokens are accepted in runs
    assert proposer.branch_nodes > 0 and res.mean_accept_length > 1.5, res.accept_lengths


@pytest.mark.parametrize("kind", ["eagle_v2", "foreign_v3"])
@pytest.mark.parametrize("family", FAMILIES)
def test_lookup_on_a_draft_tree_equals_base_only(bases, refs, prompt_ids, tok_b_dir, family, kind):
    draft = build_draft(draft_modeling(**DRAFT_KINDS[kind], tok_dir=tok_b_dir), bases[family], seed=0).eval()
    alone = Decoder(bases[family], DraftProposer(draft, TreeSpec("dynamic", 3, 3, 8))).generate(prompt_ids, 40)
    proposer = LookupProposer(DraftProposer(draft, TreeSpec("dynamic", 3, 3, 8)), 8, 2)
    res = Decoder(bases[family], proposer).generate(prompt_ids, 40)
    assert res.tokens == alone.tokens == refs[family].tokens
    assert proposer.depth() == 8 and proposer.branch_nodes > 0
    assert res.mean_accept_length > alone.mean_accept_length  # the untrained draft alone is ~never right


def test_lookup_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_tokens >= 1"):
        LookupProposer(None, 0, 3)
    with pytest.raises(ValueError, match="max_ngram >= 1"):
        LookupProposer(None, 4, 0)
