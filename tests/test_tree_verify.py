"""Tree verification == separate chains, for every supported base family (design.md §7).

One base forward over a draft tree with the tree mask must give, at every node, the logits of
a plain forward over prefix + that node's root path. Gemma3 is checked with a prefix longer
than its sliding window (16 in the tiny fixture), where a naive tree mask would be wrong.
"""

from __future__ import annotations

import pytest
import torch

from specforge_het.inference.tree import layout_from_parents

PARENTS = torch.tensor([-1, 0, 0, 1, 1, 3])  # a hand-drawn 6-node tree


def _root_path(i: int) -> list[int]:
    path = []
    while i != -1:
        path.append(i)
        i = int(PARENTS[i])
    return path[::-1]


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
@pytest.mark.parametrize("prefix_len", [6, 30])
def test_tree_logits_equal_separate_chains(bases, family, prefix_len):
    base = bases[family]
    gen = torch.Generator().manual_seed(prefix_len)
    prefix = torch.randint(5, base.vocab_size, (1, prefix_len), generator=gen)
    tree_tokens = torch.randint(5, base.vocab_size, (PARENTS.numel(),), generator=gen)
    layout = layout_from_parents(PARENTS)

    with torch.no_grad():
        cache = base.new_cache()
        base(prefix, cache, logits="none")
        positions = prefix_len + layout.position_offsets
        out = base(tree_tokens[None], cache, positions, layout.attn_mask, feature_layers=(1, -1))
        for node in range(PARENTS.numel()):
            chain = torch.cat([prefix[0], tree_tokens[_root_path(node)]])[None]
            ref = base.features(chain, (1, -1))
            torch.testing.assert_close(out.logits[0, node], ref.logits[0, -1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(out.features[0, node], ref.features[0, -1], atol=1e-4, rtol=1e-4)


def test_sliding_window_matters_for_gemma3(bases):
    """Control: without the sliding mask the long-prefix Gemma3 logits differ (so the test above can fail)."""
    base = bases["gemma3"]
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(5, base.vocab_size, (1, 30), generator=gen)
    with torch.no_grad():
        ref = base.features(prefix, ()).logits[0, -1]
        window = base.sliding_window
        try:
            base.sliding_window = None  # pretend every layer is full attention
            wrong = base(prefix, base.new_cache()).logits[0, -1]
        finally:
            base.sliding_window = window
        right = base(prefix, base.new_cache()).logits[0, -1]
    torch.testing.assert_close(right, ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(wrong, ref, atol=1e-3)
