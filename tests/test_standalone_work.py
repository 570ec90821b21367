"""The standalone proposer's per-step work: each tree level feeds the draft its new nodes only (their ancestors
stay in the draft cache), and the draft's logits are computed over the shared vocabulary only."""

from __future__ import annotations

import pytest
import torch
from test_standalone import draft_lm, foreign_tokenizer

from specforge_het.algorithms.standalone import StandaloneProposer
from specforge_het.inference.proposer import TreeSpec

TREE = TreeSpec("dynamic", max_depth=4, top_k=3, total_tokens=10)


@pytest.fixture(scope="module")
def foreign(bases):
    return bases["llama"], draft_lm("gemma3", foreign_tokenizer(), seed=11)


def counting(draft, fed: list[int]):
    """Record the tokens of every draft forward in `fed` (an instance-level forward, removed by the caller)."""
    forward = draft.forward

    def count(input_ids, *args, **kwargs):
        fed.append(input_ids.shape[1])
        return forward(input_ids, *args, **kwargs)

    draft.forward = count


@pytest.mark.parametrize("sampling", [False, True])
def test_a_tree_level_feeds_its_new_nodes_only(foreign, sampling):
    base, draft = foreign
    gen = torch.Generator().manual_seed(0) if sampling else None
    proposer = StandaloneProposer.for_base(base, draft, TREE, temperature=1.0 if sampling else 0.0, generator=gen)
    proposer.start(torch.tensor([5, 6, 7, 8, 9]), 10, None)
    fed: list[int] = []
    counting(draft, fed)
    try:
        for _ in range(3):
            fed.clear()
            p = proposer.propose()
            assert fed == [TREE.top_k] * (TREE.max_depth - 1)  # one forward per level, its K new nodes
            assert proposer.context.length == len(proposer.draft_ids)  # the tree rolled back
            proposer.update(p.tokens[1:2], None)
    finally:
        del draft.forward


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_the_shared_head_gives_the_shared_rows_of_the_draft_head(foreign, softcap):
    base, draft = foreign
    proposer = StandaloneProposer.for_base(base, draft, TREE)
    assert proposer.head is not None and proposer.head.out_features == proposer.vocab.size < draft.vocab_size
    assert proposer.head in proposer.fast_path_modules()
    hidden = torch.randn(4, draft.hidden_size, generator=torch.Generator().manual_seed(1))
    old = draft.config.final_logit_softcapping
    draft.config.final_logit_softcapping = softcap
    try:
        want = proposer.vocab.restrict(draft.head(hidden))
        torch.testing.assert_close(proposer._shared_logits(hidden), want, atol=1e-5, rtol=1e-5)
    finally:
        draft.config.final_logit_softcapping = old


def test_a_same_tokenizer_draft_keeps_its_own_head(bases):
    base = bases["llama"]
    proposer = StandaloneProposer.for_base(base, base, TREE)
    assert proposer.head is None and proposer.fast_path_modules() == (base.model,)
