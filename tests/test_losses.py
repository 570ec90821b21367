"""Pure loss helpers: literal masks and values."""

from __future__ import annotations

import torch

from specforge_het.algorithms.common import (
    accuracy,
    draft_targets,
    shift_left,
    simulated_accept_length,
    soft_cross_entropy,
    ttt_mask,
)
from specforge_het.models.adapters import VocabAdapter


def test_ttt_mask_literal():
    key_valid = torch.tensor([[1, 1, 0]])
    allowed = ttt_mask(3, 2, key_valid, torch.float32)[0, 0] == 0  # [3, 9]
    expected = torch.tensor([
        # step 0 (causal, pad key 2 masked) | step 1 (same position) | step 2 (same position)
        [1, 0, 0, 1, 0, 0, 1, 0, 0],
        [1, 1, 0, 0, 1, 0, 0, 1, 0],
        [1, 1, 0, 0, 0, 1, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(allowed, expected)
    assert ttt_mask(3, 0, key_valid, torch.float32).shape == (1, 1, 3, 3)


def test_shift_left_pads():
    x = torch.tensor([[1, 2, 3, 4]])
    assert shift_left(x, 0).tolist() == [[1, 2, 3, 4]]
    assert shift_left(x, 2, fill=9).tolist() == [[3, 4, 9, 9]]


def test_simulated_accept_length():
    assert simulated_accept_length([]) == 1.0
    assert simulated_accept_length([1.0, 1.0, 1.0]) == 4.0
    assert abs(simulated_accept_length([0.5, 0.5]) - 1.75) < 1e-12  # 1 + .5 + .25


def test_soft_cross_entropy_masked():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    mask = torch.tensor([[1, 0]])
    assert abs(soft_cross_entropy(logits, target, mask).item() - (-torch.log(torch.tensor(0.5))).item()) < 1e-6
    both = soft_cross_entropy(logits, target, torch.tensor([[1, 1]])).item()
    assert abs(both - (0.6931472 + 2.3025851) / 2) < 1e-5


class _Draft:
    def __init__(self, vocab):
        self.vocab = vocab


def test_draft_targets_reduced_vocab():
    vocab = VocabAdapter(torch.tensor([1, 3]), base_vocab_size=4)
    logits = torch.tensor([[0.0, 2.0, 0.0, 2.0], [5.0, 0.0, 0.0, 1.0]])
    probs, valid, rows = draft_targets(_Draft(vocab), logits)
    torch.testing.assert_close(probs[0], torch.tensor([0.5, 0.5]))
    assert valid.tolist() == [True, False]  # base top-1 of row 1 is id 0, not proposable
    assert rows[0].item() == 0  # base id 1 -> draft row 0


def test_accuracy_topk():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    top1, top2, n = accuracy(logits, torch.tensor([0, 1]), torch.tensor([1, 1]), k=2)
    assert (top1, top2, n) == (0.5, 1.0, 2)
