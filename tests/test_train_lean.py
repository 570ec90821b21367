"""Lean training paths against straightforward references: split TTT attention == the old
[s, (j+1)s]-mask path, chunked targets + fused head loss == a plain [B, T, V] loss, per-token
normalisation, OOV positions as misses, gradient accumulation == one big batch, TV loss."""

from __future__ import annotations

import pytest
import torch

from specforge_het.algorithms.build import build_draft
from specforge_het.algorithms.common import draft_targets, finalize_metrics, shift_left, ttt_mask
from specforge_het.algorithms.eagle_v3.loss import lean_step
from specforge_het.algorithms.registry import algorithm_of
from specforge_het.algorithms.targets import base_targets, head_loss
from specforge_het.algorithms.ttt_attention import prefix_attention
from specforge_het.models.cache import HFCache
from specforge_het.training.trainer import DraftTrainingModule
from tests.conftest import draft_modeling


class _T:  # a TrainingConfig stand-in (and the algorithms' options: ttt_*, vloss_w, ...)
    ttt_steps, ttt_decay, top_k_accuracy, loss, loss_chunk = 3, 0.8, 2, "ce", 5
    feature_noise, vloss_w, ploss_w, gradient_checkpointing = 0.0, 1.0, 0.1, False


def _batch(base, b=3, t=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, base.vocab_size, (b, t), generator=g)
    attn = torch.ones(b, t, dtype=torch.long)
    attn[1, t - 4:] = 0  # right padding
    attn[2, t - 7:] = 0
    lm = torch.zeros(b, t, dtype=torch.long)
    lm[:, 4:] = 1
    return ids, attn, lm * attn


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_split_ttt_attention_equals_mask_path(llama_base, family):
    torch.manual_seed(0)
    draft = build_draft(draft_modeling(family=family, hidden=48, draft_num_heads=4, draft_num_kv_heads=2,
                                       draft_num_layers=2), llama_base, seed=3)
    ids, attn, _ = _batch(llama_base)
    b, s = ids.shape
    h0 = torch.randn(b, s, 48)
    valid = attn.bool()
    outs = {}
    for path in ("mask", "split"):
        hidden = h0.clone().requires_grad_(True)
        h, cache, kv, total = hidden, HFCache(), [[] for _ in draft.layers], 0
        got = []
        for j in range(4):
            tok = shift_left(ids, j, 0)
            pos = (torch.arange(s) + j)[None].expand(b, s)
            if path == "mask":
                h = draft(tok, h, pos, ttt_mask(s, j, attn, h.dtype), cache)
            else:
                h = lean_step(draft, tok, h, pos, kv, ckpt=False)
            got.append(h[valid])
            total = total + (h[valid] * torch.linspace(-1, 1, 48)).sum() * (j + 1)
        total.backward()
        outs[path] = (got, hidden.grad[valid].clone(), draft.fc.weight.grad if draft.fc.weight.grad is not None else None,
                      {n: p.grad.clone() for n, p in draft.layers.named_parameters()})
        draft.zero_grad(set_to_none=True)
    for a, c in zip(outs["mask"][0], outs["split"][0]):
        torch.testing.assert_close(c, a, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(outs["split"][1], outs["mask"][1], atol=2e-5, rtol=1e-4)
    for n, g in outs["mask"][3].items():
        torch.testing.assert_close(outs["split"][3][n], g, atol=1e-5 * float(g.abs().max()), rtol=1e-4, msg=n)


@pytest.mark.parametrize("kernel", ["flash", "math"])
def test_prefix_attention_lse_gradient(kernel, monkeypatch):
    import specforge_het.algorithms.ttt_attention as ta

    if kernel == "math":
        monkeypatch.setattr(ta, "_FLASH", None)
    torch.manual_seed(1)
    q = torch.randn(2, 4, 9, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, 9, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, 9, 8, dtype=torch.float64, requires_grad=True)
    # both outputs carry gradient (gradcheck also feeds the lse alone: rows without an output gradient);
    # chunk 4 splits the 9 queries unevenly in the math kernel
    assert torch.autograd.gradcheck(lambda q, k, v: prefix_attention(q, k, v, 0.3, 4), (q, k, v))
    out, lse = prefix_attention(q, k, v, 0.3, 4)
    s = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) * 0.3
    s = s.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(s, -1))
    torch.testing.assert_close(out, torch.softmax(s, -1) @ v.repeat_interleave(2, 1))


def _reference_v3_loss(draft, base, ids, attn, lm, tcfg):
    """The old recipe's pieces over full [B, T, V] logits, with the fixed normalisation and metrics."""
    out = base.features(ids, tuple(draft.cfg.feature_layers), attn)
    probs, valid, rows = draft_targets(draft, out.logits[:, 1:])
    x, key_valid = ids[:, 1:], attn[:, 1:]
    b, s = x.shape
    mask = (lm[:, 1:] * key_valid).bool()
    n0 = mask.sum()
    hidden = draft.input_from_base(x, out.features[:, :-1])
    cache, total, hits = HFCache(), 0.0, []
    for j in range(tcfg.ttt_steps):
        pos = (torch.arange(s) + j)[None].expand(b, s)
        hidden = draft(shift_left(x, j, 0), hidden, pos, ttt_mask(s, j, key_valid, hidden.dtype), cache)
        logits = draft.logits(hidden)
        m_j, v_j, p_j, r_j = (shift_left(mask, j, False), shift_left(valid, j, False), shift_left(probs, j, 0.0),
                              shift_left(rows, j, 0))
        ce = -(p_j * torch.log_softmax(logits, -1)).sum(-1)
        total = total + tcfg.ttt_decay ** j * (ce * (m_j & v_j)).sum()
        hit = (logits.argmax(-1) == r_j) & v_j
        hits.append((hit[m_j].sum().item(), m_j.sum().item()))
    return total / n0, hits


def test_chunked_targets_and_loss_equal_reference(llama_base):
    draft = build_draft(draft_modeling(family="llama", hidden=48, draft_vocab_size=60), llama_base, seed=1)
    ids, attn, lm = _batch(llama_base, seed=2)
    module = DraftTrainingModule(draft, llama_base, _T())
    loss, count, counters = algorithm_of(draft).loss(draft, module.make_batch(ids, attn, lm), _T(), _T())
    ref, hits = _reference_v3_loss(draft, llama_base, ids, attn, lm, _T())
    torch.testing.assert_close(loss / count, ref, atol=1e-5, rtol=1e-5)
    g_new = torch.autograd.grad(loss / count, [draft.lm_head.weight, draft.fc.weight])
    ref2, _ = _reference_v3_loss(draft, llama_base, ids, attn, lm, _T())
    g_ref = torch.autograd.grad(ref2, [draft.lm_head.weight, draft.fc.weight])
    for a, c in zip(g_ref, g_new):
        torch.testing.assert_close(c, a, atol=1e-6, rtol=1e-4)
    # some base top-1s are outside the 60-row draft vocabulary: they count as misses, not left out
    oov = int((module.make_batch(ids, attn, lm).targets.top1 < 0).sum())
    assert oov > 0
    metrics = finalize_metrics(counters)
    for j, (hit, n) in enumerate(hits):
        assert counters[f"n_{j}"] == n and metrics[f"top1_acc_{j}"] == pytest.approx(hit / n)
    assert counters["n_0"] == float(count) and counters["nin_0"] == float(count) - oov


def test_loss_through_hf_layers_equals_lean(llama_base, monkeypatch):
    """A draft without the lean forward unrolls through HF's layers with an HFCache and the TTT mask:
    the same loss as the split lean path."""
    draft = build_draft(draft_modeling(family="llama", hidden=48, draft_vocab_size=60), llama_base, seed=1)
    ids, attn, lm = _batch(llama_base, seed=2)
    batch = DraftTrainingModule(draft, llama_base, _T()).make_batch(ids, attn, lm)
    lean, _, _ = algorithm_of(draft).loss(draft, batch, _T(), _T())
    monkeypatch.setattr(draft, "lean", lambda: False)
    hf, _, _ = algorithm_of(draft).loss(draft, batch, _T(), _T())
    torch.testing.assert_close(hf, lean, atol=1e-5, rtol=1e-5)


def test_targets_chunking_and_full_top1(llama_base):
    torch.manual_seed(0)
    last = torch.randn(2, 7, llama_base.hidden_size)
    where = torch.rand(2, 7) > 0.3
    d2t = torch.randperm(llama_base.vocab_size)[:40]
    w = llama_base.lm_head.weight
    a = base_targets(last, w, where, d2t, chunk=3)
    b = base_targets(last, w, where, d2t, chunk=1000)
    torch.testing.assert_close(a.probs, b.probs)
    full = last[where] @ w.T
    torch.testing.assert_close(a.probs, torch.softmax(full[:, d2t], -1), atol=1e-6, rtol=1e-5)
    t2d = torch.full((llama_base.vocab_size,), -1)
    t2d[d2t] = torch.arange(40)
    assert torch.equal(a.top1, t2d[full.argmax(-1)])
    assert a.index[where].tolist() == list(range(int(where.sum()))) and bool((a.index[~where] == -1).all())


@pytest.mark.parametrize("kind", ["ce", "tv", "ce+tv", "ce+top1"])
@pytest.mark.parametrize("cap", [None, 3.0])
def test_head_loss_matches_autograd(kind, cap):
    torch.manual_seed(0)
    x = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    probs = torch.softmax(torch.randn(5, 9, dtype=torch.float64), -1)
    tidx = torch.randint(0, 5, (11,))
    row_w = torch.rand(11, dtype=torch.float64)
    want = torch.randint(-1, 9, (11,))
    loss, per_row, hit1, _ = head_loss(x, w, probs, tidx, row_w, want, kind, cap, chunk=4, k=2)
    z = x @ w.T
    z = torch.tanh(z / cap) * cap if cap else z
    q, p = torch.softmax(z, -1), probs[tidx]
    ref = torch.zeros(11, dtype=torch.float64)
    if "ce" in kind:
        ref = ref - (p * torch.log_softmax(z, -1)).sum(-1)
    if "tv" in kind:
        ref = ref + 0.5 * (q - p).abs().sum(-1)
    if "top1" in kind:  # rows whose base top-1 the draft lacks (want -1) get no hard term
        hard = -torch.log_softmax(z, -1).gather(1, want.clamp_min(0)[:, None])[:, 0]
        ref = ref + torch.where(want >= 0, hard, torch.zeros_like(hard))
    torch.testing.assert_close(per_row.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.double(), (ref * row_w).sum(), rtol=1e-5, atol=1e-6)
    assert torch.equal(hit1, z.argmax(-1) == want)
    ga = torch.autograd.grad(loss, [x, w])
    gr = torch.autograd.grad((ref * row_w).sum(), [x, w])
    for a, b in zip(ga, gr):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_tv_literal():
    # draft q = (0.5, 0.5), base p = (1, 0): TV = 0.5 (|0.5 - 1| + |0.5 - 0|) = 0.5 = 1 - acceptance
    loss, *_ = head_loss(torch.zeros(1, 2), torch.zeros(2, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([0]),
                         torch.ones(1), torch.tensor([0]), "tv")
    assert loss.item() == pytest.approx(0.5)


def test_gradient_checkpointing_same_gradients(llama_base):
    draft = build_draft(draft_modeling(family="qwen3", hidden=48, draft_vocab_size=60), llama_base, seed=1)
    ids, attn, lm = _batch(llama_base, seed=4)
    module = DraftTrainingModule(draft, llama_base, _T())
    batch = module.make_batch(ids, attn, lm)
    grads = []
    for ckpt in (False, True):
        cfg = _T()
        cfg.gradient_checkpointing = ckpt
        loss, count, _ = algorithm_of(draft).loss(draft, batch, cfg, cfg)
        grads.append(torch.autograd.grad(loss / count, list(draft.layers.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_reachable_cuts_a_position_after_its_first_miss():
    """Two steps of 2 rows each at positions (0, 0) and (0, 1); the top-1 (k=1) of x @ I is x's argmax."""
    from specforge_het.algorithms.eagle_v3.loss import reachable

    masks = [torch.tensor([[True, True, False]])] * 3
    eye = torch.eye(3)
    xs = [torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])] * 3  # top-1 rows: 0, 1
    want = [torch.tensor([0, 2]), torch.tensor([1, 1]), torch.tensor([0, 0])]  # step 0: hit, miss; step 1: miss, hit
    got = reachable(xs, want, eye, masks, k=1)
    assert [g.tolist() for g in got] == [[True, True], [True, False], [False, False]]
    assert [g.tolist() for g in reachable(xs, want, eye, masks, k=3)] == [[True, True]] * 3  # top-3 of 3: always
    # a position with no row at an earlier step (its target not a loss position) is not cut there
    gap = [torch.tensor([[True, False, True]]), torch.tensor([[False, False, True]])]
    got = reachable([torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]), torch.tensor([[1.0, 0, 0]])],
                    [torch.tensor([1, 0]), torch.tensor([0])], eye, gap, k=1)
    assert [g.tolist() for g in got] == [[True, True], [True]]


def test_reachable_k_weights_the_loss_and_keeps_the_metrics(llama_base):
    draft = build_draft(draft_modeling(family="llama", hidden=48, draft_vocab_size=60), llama_base, seed=1)
    ids, attn, lm = _batch(llama_base, seed=2)
    batch = DraftTrainingModule(draft, llama_base, _T()).make_batch(ids, attn, lm)
    loss = {}
    for k in (0, 1, 60):
        cfg = _T()
        cfg.reachable_k = k
        loss[k], _, counters = algorithm_of(draft).loss(draft, batch, cfg, cfg)
        loss[k, "hits"] = [counters[f"hit1_{j}"] for j in range(3)]
    # top-60 of a 60-row head holds every token it has: only positions after an out-of-vocabulary base top-1 are
    # cut (the draft cannot propose that token); top-1 of an untrained draft cuts far more
    assert loss[1] < loss[60] < loss[0]
    assert loss[1, "hits"] == loss[0, "hits"]  # accuracy counts every position
