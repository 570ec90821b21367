"""Training memory at 8B width (issue 14): an EagleV3 step (7 unroll steps) on a base shaped like Llama-3.1-8B's
layers (width 4096, 32/8 heads, MLP 14336; two layers and an 8192-token vocabulary so it fits a CI machine)
keeps for backward only what its budget allows.

Measured as the bytes of every tensor autograd saves (storages counted once, parameters excluded) at two
sequence lengths: the slope is the activation memory per token (what grows with batch × length on a GPU),
the intercept the fixed part. Budgets, float32, in width-sized vectors (4096 floats) per token per unroll step:
  * gradient checkpointing (the `gpu` preset): ≤ 6 (measured 4.7: the layer input, the fused head's
    gradient rows, the targets' rows);
  * without: ≤ 48 (measured 35: the layer's own activations);
  * fixed part: at most 1.5 × one [V, H] head-gradient buffer (the fused head loss keeps its weight gradient
    until backward; one per unroll step would be 7×: 3.5 GiB at V=32k, H=4096 in float32).
"""

from __future__ import annotations

import pytest
import torch

from specforge_het.algorithms.build import build_draft
from specforge_het.doctor.checks import LLAMA_8B, build_base, modeling_for
from specforge_het.training.trainer import DraftTrainingModule

H, V, STEPS = 4096, 8192, 7
SHAPE = dict(LLAMA_8B, vocab_size=V, num_hidden_layers=2)
LENGTHS = (16, 48)


class _T:  # the training settings the loss reads
    ttt_steps, ttt_decay, top_k_accuracy, loss, loss_chunk = STEPS, 0.8, 1, "ce", 16
    feature_noise, vloss_w, ploss_w, gradient_checkpointing = 0.0, 1.0, 0.1, False


def saved_bytes(module, t: int) -> int:
    ids = torch.randint(2, V, (1, t), generator=torch.Generator().manual_seed(t))
    attn, lm = torch.ones_like(ids), torch.ones_like(ids)
    lm[:, : t // 4] = 0
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    params |= {p.untyped_storage().data_ptr() for p in module._base[0].parameters()}
    seen: dict[int, int] = {}

    def pack(x):
        ptr = x.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), x.untyped_storage().nbytes())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = module(ids, attn, lm)
    (out["loss"] / out["count"]).backward()
    return sum(seen.values())


def per_token_and_fixed(base, ckpt: bool) -> tuple[float, float]:
    tcfg = _T()
    tcfg.gradient_checkpointing = ckpt
    draft = build_draft(modeling_for(base, V), base).train(True)
    module = DraftTrainingModule(draft, base, tcfg)
    (t1, b1), (t2, b2) = [(t, saved_bytes(module, t)) for t in LENGTHS]
    slope = (b2 - b1) / (t2 - t1)
    return slope, b1 - slope * t1


@pytest.mark.slow
def test_saved_activations_per_token_at_8b_width():
    torch.manual_seed(0)
    base = build_base(SHAPE, torch.device("cpu"), torch.float32)
    vec = H * 4
    ckpt, ckpt_fixed = per_token_and_fixed(base, True)
    plain, plain_fixed = per_token_and_fixed(base, False)
    assert ckpt < STEPS * 6 * vec, f"checkpointed: {ckpt / vec / STEPS:.1f} width vectors per token per step"
    assert plain < STEPS * 48 * vec, f"plain: {plain / vec / STEPS:.1f} width vectors per token per step"
    assert ckpt * 4 < plain, (ckpt, plain)  # checkpointing keeps a small part of it
    head_grad = V * H * 4
    assert max(ckpt_fixed, plain_fixed) < 1.5 * head_grad, (ckpt_fixed / head_grad, plain_fixed / head_grad)
